"""Model output → BraTS label mask on the reference series' exact lattice.

Input: region probabilities, float32 (3, I, J, K) in TC, WT, ET order, on the (cropped) model grid.
Each region's probability map is resampled linearly in physical space onto the reference lattice and
thresholded there — the mask is decided on the reference voxels themselves, never copied from the model
grid — then nested into labels (ET = 4, rest of TC = 1, rest of WT = 2). Optionally, tumour components
smaller than ``min_component_ml`` are removed (speckle far from the lesion).
Output: ``SimpleITK.Image`` uint8 with the reference's size, origin, spacing and direction.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from tumorseg.imaging import grid as g
from tumorseg.model.labels import regions_to_labels

DEFAULT_MIN_COMPONENT_ML = 0.1


def voxel_volume_mm3(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing()))


def remove_small_components(labels: NDArray[np.uint8], min_voxels: int) -> NDArray[np.uint8]:
    """Zero every connected tumour component (26-connectivity) with fewer than ``min_voxels`` voxels."""
    if min_voxels <= 1:
        return labels
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return labels
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = False
    labels = labels.copy()
    labels[small[components]] = 0
    return labels


def to_reference_mask(
    probabilities: NDArray[np.float32],
    model_grid: sitk.Image,
    reference: sitk.Image,
    threshold: float = 0.5,
    min_component_ml: float = DEFAULT_MIN_COMPONENT_ML,
) -> sitk.Image:
    regions = []
    for channel in probabilities:
        on_reference = g.resample(g.from_array(channel, model_grid), reference)
        regions.append(sitk.GetArrayViewFromImage(on_reference) > threshold)  # (k, j, i)
    labels = regions_to_labels(np.stack(regions))
    min_voxels = int(np.ceil(min_component_ml * 1000.0 / voxel_volume_mm3(reference)))
    labels = remove_small_components(labels, min_voxels)
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(reference)
    return mask
