"""The mask as NIfTI-1: uint8 BraTS labels on exactly the reference series' lattice.

SimpleITK writes the LPS geometry of the image as RAS qform and sform (codes 1, scanner), the same lattice
``dcm2niix`` gives for the reference series up to a signed axis permutation.
"""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk


def write_mask(mask: sitk.Image, path: Path) -> Path:
    if mask.GetPixelID() != sitk.sitkUInt8:
        mask = sitk.Cast(mask, sitk.sitkUInt8)
    sitk.WriteImage(mask, str(path), useCompression=True, compressionLevel=1)  # labels compress well at 1
    return path
