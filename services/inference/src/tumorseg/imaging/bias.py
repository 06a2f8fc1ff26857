"""Bias-field correction of one channel on the model grid (N4, SimpleITK), inside the brain.

A clinical series carries a smooth multiplicative bias (coil sensitivity): a tissue is some per cent
brighter on one side of the head than on the other, and after z-scoring a 10 % bias moves it by about 0.5.
A network that sees all four sequences tells a bright patch of one from oedema by the others; one that
must do without FLAIR or T2 called the bright front of a head's FLAIR oedema (measured on a clinical-head
phantom without T2: WT Dice 0.44 with its 20 % bias, 0.82 without bias, 0.85 after this correction).

``correct_bias`` runs N4 (Tustison et al. 2010) on the channel shrunk by ``SHRINK`` (4 mm voxels on the
1 mm model grid; the bias is smooth), within the voxels above 0 (the brain, where the channel is zero
outside it), and divides the full-resolution channel by the field N4 found, evaluated on it. About 1 s per
channel of a 160 x 190 x 150 brain on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

SHRINK = 4  # voxels of the model grid per N4 voxel
ITERATIONS = (20, 20, 20)  # per fitting level (three levels: the B-spline mesh refined twice)
MIN_VOXELS = 4096  # a channel with fewer voxels inside is left as it is (nothing to fit)
METHODS = ("none", "n4")


def correct_bias(channel: NDArray[np.float32]) -> NDArray[np.float32]:
    """In place: ``channel`` divided by its N4 bias field inside its voxels above 0; the others unchanged.
    Returns ``channel``."""
    inside = channel > 0
    if np.count_nonzero(inside) < MIN_VOXELS:
        return channel
    image = sitk.GetImageFromArray(np.where(inside, channel, np.float32(0.0)))
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    small, small_mask = sitk.Shrink(image, [SHRINK] * 3), sitk.Shrink(mask, [SHRINK] * 3)
    if not sitk.GetArrayViewFromImage(small_mask).any():
        return channel
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(ITERATIONS))
    n4.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(image))
    np.divide(channel, np.exp(log_field, dtype=np.float32), out=channel, where=inside)
    return channel
