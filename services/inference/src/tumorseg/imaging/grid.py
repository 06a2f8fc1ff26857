"""The model grid, and resampling between it and any series' lattice, in physical (LPS) space.

The model grid is axis-aligned in patient space: direction = identity in LPS (index axis i runs to the
patient's Left, j Posterior, k Superior), isotropic spacing (1 mm by default), covering the physical
extent of the reference series. It follows the patient, not the acquisition plane, so an oblique, sagittal
or reversed-slice series gives the model the same view of the head as an axial one. A BraTS 2021 NIfTI
read by SimpleITK has exactly this orientation at 1 mm, so real BraTS data lands on it without
interpolation.

All functions take and return ``SimpleITK.Image`` objects, which carry origin/spacing/direction (LPS, mm).
Arrays handed to the model use index order (i, j, k) — see ``to_array``/``from_array``.
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def physical_corners(image: sitk.Image) -> NDArray[np.float64]:
    """The 8 corner voxel centres of ``image`` in LPS mm, shape (8, 3)."""
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in index])
        for index in itertools.product(*[(0, s - 1) for s in size])
    ]
    return np.asarray(corners, dtype=np.float64)


def model_grid(reference: sitk.Image, spacing_mm: float = 1.0) -> sitk.Image:
    """An empty uint8 image that defines the model grid for ``reference`` (see module docstring).

    The grid's voxel centres span the bounding box of the reference's voxel centres, on nodes at integer
    multiples of ``spacing_mm`` (LPS); an axis-aligned reference with that spacing and an integer-mm origin
    (BraTS NIfTI) coincides with it exactly."""
    corners = physical_corners(reference)
    # Grid nodes sit at integer multiples of the spacing in LPS: a canonical lattice shared by every
    # series of the patient, which coincides with BraTS-style integer-mm lattices (no interpolation).
    low = np.floor(np.round(corners.min(axis=0) / spacing_mm, 4)) * spacing_mm
    high = np.ceil(np.round(corners.max(axis=0) / spacing_mm, 4)) * spacing_mm
    # Round before ceil so float noise (239.0000001) does not add a whole plane.
    size = [int(np.ceil(np.round((h - lo) / spacing_mm, 4))) + 1 for lo, h in zip(low, high, strict=True)]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetOrigin(tuple(float(v) for v in low))
    grid.SetSpacing((spacing_mm,) * 3)
    grid.SetDirection(IDENTITY)
    return grid


def resample(image: sitk.Image, target: sitk.Image, *, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """``image`` on ``target``'s lattice (float32, 0 outside ``image``'s extent)."""
    return sitk.Resample(image, target, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)


def resample_labels(labels: sitk.Image, target: sitk.Image) -> sitk.Image:
    """A label map on ``target``'s lattice (uint8). Label-aware linear interpolation (each label's
    indicator is interpolated and the largest wins), so thin structures survive better than with
    nearest neighbour when the lattices differ in spacing or orientation."""
    return sitk.Resample(labels, target, sitk.Transform(), sitk.sitkLabelLinear, 0, sitk.sitkUInt8)


def to_array(image: sitk.Image) -> NDArray[np.generic]:
    """Pixels in index order (i, j, k) — SimpleITK's own numpy view is (k, j, i)."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))


def from_array(array: NDArray[np.generic], geometry: sitk.Image) -> sitk.Image:
    """An (i, j, k) array placed on ``geometry``'s lattice (same origin, spacing, direction)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.CopyInformation(geometry)
    return image


def crop(geometry: sitk.Image, start: tuple[int, int, int], size: tuple[int, int, int]) -> sitk.Image:
    """An empty uint8 image for the sub-lattice of ``geometry`` starting at index ``start``."""
    sub = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    sub.SetSpacing(geometry.GetSpacing())
    sub.SetDirection(geometry.GetDirection())
    sub.SetOrigin(geometry.TransformIndexToPhysicalPoint([int(s) for s in start]))
    return sub
