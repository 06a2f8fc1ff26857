"""Model output → BraTS label mask on the reference series' exact lattice.

Input: region probabilities, float32 (3, I, J, K) in TC, WT, ET order, on the (cropped) model grid.
Each region's probability map is resampled linearly in physical space onto the reference lattice and
thresholded there — the mask is decided on the reference voxels themselves, never copied from the model
grid — then nested into labels (ET = 4, rest of TC = 1, rest of WT = 2). Optionally, tumour components
smaller than ``min_component_ml`` are removed (speckle far from the lesion), and an enhancing region
smaller than ``min_enhancing_ml`` in all becomes necrotic core (the model package's choice).
Output: ``SimpleITK.Image`` uint8 with the reference's size, origin, spacing and direction.
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from tumorseg.imaging import grid as g
from tumorseg.labels import ET, NCR, regions_to_labels

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
    small = np.flatnonzero(sizes < min_voxels)
    small = small[small > 0]
    if small.size == 0:
        return labels
    labels = labels.copy()
    boxes = ndimage.find_objects(components)
    for component in small:  # within each small component's bounding box only
        box = boxes[component - 1]
        labels[box][components[box] == component] = 0
    return labels


def relabel_small_enhancing(labels: NDArray[np.uint8], min_ml: float, voxel_mm3: float) -> None:
    """In place: when the whole enhancing region (label 4) is smaller than ``min_ml``, it becomes
    necrotic core (label 1). TC and WT keep their voxels; only ET is given up."""
    if min_ml <= 0:
        return
    enhancing = labels == ET
    count = int(np.count_nonzero(enhancing))
    if 0 < count * voxel_mm3 / 1000.0 < min_ml:
        labels[enhancing] = NCR


def covering_box(
    reference: sitk.Image, other: sitk.Image
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """(start, size) of the smallest index box of ``reference`` holding every voxel centre that lies
    within ``other``'s extent (its voxel centres' bounding box, plus one voxel); None when they miss."""
    corners = g.physical_corners(other)
    spacing = np.asarray(other.GetSpacing())
    direction = np.asarray(other.GetDirection()).reshape(3, 3)
    # Grow by one voxel of ``other`` along each of its axes: linear interpolation reaches that far.
    steps = np.asarray(list(itertools.product((-1.0, 1.0), repeat=3))) * spacing
    grown = (corners[:, None, :] + (steps @ direction.T)[None, :, :]).reshape(-1, 3)
    index = np.asarray([reference.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in grown])
    size = np.asarray(reference.GetSize())
    low = np.clip(np.floor(index.min(axis=0)).astype(int), 0, size)
    high = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, 0, size)
    if np.any(high <= low):
        return None
    return (int(low[0]), int(low[1]), int(low[2])), (
        int(high[0] - low[0]),
        int(high[1] - low[1]),
        int(high[2] - low[2]),
    )


def above_threshold_box(
    probabilities: NDArray[np.float32], threshold: float
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """(start, size) on the model grid of every voxel above ``threshold`` in any region, grown by one
    voxel and clipped to the grid; None when no voxel is above it.

    A linear interpolation is a convex combination of its 8 neighbours, so it exceeds the threshold only
    where some neighbour does: every reference voxel that can become tumour interpolates from voxels
    inside this box, and sees there exactly what it would see on the whole grid."""
    above = np.any(probabilities > threshold, axis=0)
    if not above.any():
        return None
    low, high = [], []
    for axis in range(3):
        hits = np.flatnonzero(above.any(axis=tuple(a for a in range(3) if a != axis)))
        low.append(max(int(hits[0]) - 1, 0))
        high.append(min(int(hits[-1]) + 2, above.shape[axis]))
    return (low[0], low[1], low[2]), (high[0] - low[0], high[1] - low[1], high[2] - low[2])


def _region_on(
    channel: NDArray[np.float32],
    own: tuple[tuple[int, int, int], tuple[int, int, int]] | None,
    model_grid: sitk.Image,
    sub: sitk.Image,
    threshold: float,
) -> NDArray[np.bool_]:
    """(i, j, k) booleans on ``sub``: where ``channel`` resampled there exceeds ``threshold``, computed only
    from ``own``, the channel's ``above_threshold_box``."""
    region = np.zeros(sub.GetSize(), dtype=bool)
    if own is None:
        return region
    (a0, b0, c0), (na, nb, nc) = own
    grid = g.crop(model_grid, (a0, b0, c0), (na, nb, nc))
    box = covering_box(sub, grid)
    if box is None:
        return region
    (i0, j0, k0), (ni, nj, nk) = box
    values = channel[a0 : a0 + na, b0 : b0 + nb, c0 : c0 + nc]
    on_sub = g.resample_to_array(g.reversed_axes(grid, values), g.crop(sub, (i0, j0, k0), (ni, nj, nk)))
    region[i0 : i0 + ni, j0 : j0 + nj, k0 : k0 + nk] = on_sub > threshold
    return region


def to_reference_mask(
    probabilities: NDArray[np.float32],
    model_grid: sitk.Image,
    reference: sitk.Image,
    threshold: float = 0.5,
    min_component_ml: float = DEFAULT_MIN_COMPONENT_ML,
    min_enhancing_ml: float = 0.0,
) -> sitk.Image:
    labels = np.zeros(reference.GetSize()[::-1], dtype=np.uint8)  # (k, j, i)
    # Only the reference voxels near the tumour are resampled (see ``above_threshold_box``), each region near
    # its own voxels: everywhere else no region can exceed the threshold. The result is that of resampling
    # the whole grid.
    owns = [above_threshold_box(channel[None], threshold) for channel in probabilities]
    found = [own for own in owns if own is not None]
    box = None
    if found:  # the union of the regions' boxes
        low = np.min([start for start, _ in found], axis=0)
        size = np.max([np.add(start, extent) for start, extent in found], axis=0) - low
        tumour = g.crop(
            model_grid, (int(low[0]), int(low[1]), int(low[2])), (int(size[0]), int(size[1]), int(size[2]))
        )
        box = covering_box(reference, tumour)
    if box is not None:
        (i0, j0, k0), (ni, nj, nk) = box
        sub = g.crop(reference, (i0, j0, k0), (ni, nj, nk))
        regions = [
            _region_on(channel, own, model_grid, sub, threshold).T
            for channel, own in zip(probabilities, owns, strict=True)
        ]  # (k, j, i)
        voxel_mm3 = voxel_volume_mm3(reference)
        near = remove_small_components(
            regions_to_labels(np.stack(regions)), int(np.ceil(min_component_ml * 1000.0 / voxel_mm3))
        )
        relabel_small_enhancing(near, min_enhancing_ml, voxel_mm3)
        labels[k0 : k0 + nk, j0 : j0 + nj, i0 : i0 + ni] = near
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(reference)
    return mask
