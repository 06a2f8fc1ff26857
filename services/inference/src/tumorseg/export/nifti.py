"""The mask as NIfTI-1: uint8 BraTS labels on exactly the reference series' lattice; and the reference
series itself on that lattice (the viewer's background, so its overlay is exact by construction).

SimpleITK writes the LPS geometry of the image as RAS qform and sform (codes 1, scanner), the same lattice
``dcm2niix`` gives for the reference series up to a signed axis permutation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_mask(mask: sitk.Image, path: Path) -> Path:
    if mask.GetPixelID() != sitk.sitkUInt8:
        mask = sitk.Cast(mask, sitk.sitkUInt8)
    sitk.WriteImage(mask, str(path), useCompression=True, compressionLevel=1)  # labels compress well at 1
    return path


_INTEGER_TYPES = ((np.int16, sitk.sitkInt16), (np.uint16, sitk.sitkUInt16), (np.int32, sitk.sitkInt32))


def write_reference(image: sitk.Image, path: Path) -> Path:
    """The reference series (float32 after rescale) as NIfTI-1 on its own lattice: stored as the
    smallest integer type holding its values exactly when they are whole numbers (most MR series: a
    third of the float32 file), else float32. The values are the series' own, never rescaled."""
    array = sitk.GetArrayViewFromImage(image)
    out = image
    if array.size and np.all(np.isfinite(array)) and np.array_equal(array, np.round(array)):
        low, high = float(array.min()), float(array.max())
        for dtype, pixel in _INTEGER_TYPES:
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                out = sitk.Cast(image, pixel)
                break
    sitk.WriteImage(out, str(path), useCompression=True, compressionLevel=1)
    return path
