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


def reversed_axes(geometry: sitk.Image, array: NDArray[np.generic] | None = None) -> sitk.Image:
    """The lattice of ``geometry`` with its index axes in reverse order (k, j, i), as an empty uint8 image
    or holding ``array`` given in (i, j, k) order: SimpleITK's (z, y, x) numpy view of such an image is
    (i, j, k) of ``geometry``, so no transposing copy is needed either way. Physically the same voxels."""
    if array is None:
        image = sitk.Image([int(n) for n in geometry.GetSize()[::-1]], sitk.sitkUInt8)
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetOrigin(geometry.GetOrigin())
    image.SetSpacing(geometry.GetSpacing()[::-1])
    image.SetDirection(
        tuple(float(v) for v in np.asarray(geometry.GetDirection()).reshape(3, 3)[:, ::-1].ravel())
    )
    return image


Permutation = tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]


def signed_permutation(
    a: NDArray[np.float64], b: NDArray[np.float64], tol: float = 1e-4
) -> Permutation | None:
    """When source index = ``a`` @ target index + ``b`` sends every target voxel centre onto a source
    voxel centre: ``a`` a signed permutation and ``b`` integer (within ``tol``). Then target axis t runs
    along source axis ``axes[t]`` in direction ``signs[t]`` (±1), and target index 0 is source index
    ``offsets`` (per source axis). None otherwise (other spacing, a rotation, a fractional shift).
    The one test of "these lattices coincide" for the service (``lattice_map``) and the DICOM writer."""
    rounded, offsets = np.rint(a), np.rint(b)
    if np.abs(a - rounded).max() > tol or np.abs(b - offsets).max() > tol:
        return None
    if not (np.abs(rounded).sum(axis=0) == 1).all() or not (np.abs(rounded).sum(axis=1) == 1).all():
        return None
    axes = tuple(int(np.flatnonzero(rounded[:, t])[0]) for t in range(3))
    signs = tuple(int(rounded[axes[t], t]) for t in range(3))
    return axes, signs, tuple(int(v) for v in offsets)  # type: ignore[return-value]


def lattice_map(source: sitk.Image, target: sitk.Image, tol: float = 1e-4) -> Permutation | None:
    """How ``target``'s voxel centres fall on ``source``'s lattice, when each is a source voxel centre
    (``signed_permutation``). BraTS volumes and the model grid coincide, as does a 1 mm sagittal series
    whose voxel centres sit on integer mm."""
    b = np.asarray(
        source.TransformPhysicalPointToContinuousIndex(target.TransformIndexToPhysicalPoint((0, 0, 0)))
    )
    columns = []
    for axis in range(3):
        step = [0, 0, 0]
        step[axis] = 1
        columns.append(
            np.asarray(
                source.TransformPhysicalPointToContinuousIndex(target.TransformIndexToPhysicalPoint(step))
            )
            - b
        )
    return signed_permutation(np.stack(columns, axis=1), b, tol)


def resample_to_array(
    image: sitk.Image,
    target: sitk.Image,
    *,
    fill: float = 0.0,
    out: NDArray[np.float32] | None = None,
    threads: int | None = None,
    transform: sitk.Transform | None = None,
) -> NDArray[np.float32]:
    """``image`` linearly interpolated at ``target``'s voxel centres, as a float32 (i, j, k) array;
    ``fill`` where a centre lies outside ``image``'s voxels (half a voxel beyond the outer centres), as in
    ``sitk.Resample``. When the lattices coincide (``lattice_map``) interpolation would only copy voxels,
    so the voxels are copied, by slicing; otherwise SimpleITK resamples onto a twin of ``target`` with the
    index axes reversed, whose (z, y, x) view is already (i, j, k). ``threads``: SimpleITK's threads for
    this call (default: its global setting). ``transform`` (ITK convention: a point of ``target``'s
    physical space → the same anatomy in ``image``'s, e.g. a co-registration) is composed into the one
    interpolation; with it there is no copy path."""
    shape = tuple(int(n) for n in target.GetSize())
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    mapping = lattice_map(image, target) if transform is None else None
    if mapping is None:
        resampler = sitk.ResampleImageFilter()
        resampler.SetReferenceImage(reversed_axes(target))
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetDefaultPixelValue(fill)
        resampler.SetOutputPixelType(sitk.sitkFloat32)
        if transform is not None:
            resampler.SetTransform(transform)
        if threads is not None:
            resampler.SetNumberOfThreads(threads)
        resampled = resampler.Execute(image)
        out[...] = sitk.GetArrayViewFromImage(resampled)  # a view: ``resampled`` must outlive the copy
        return out
    axes, signs, offsets = mapping
    source = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0).transpose(axes)  # source axis axes[a] → a
    size = source.shape
    inner, outer = [], []
    for a in range(3):
        sign, offset = signs[a], offsets[axes[a]]
        # target t ↦ source offset + sign * t, kept where 0 <= source < size[a]
        lo, hi = (-offset, size[a] - offset) if sign > 0 else (offset - size[a] + 1, offset + 1)
        lo, hi = max(lo, 0), min(hi, shape[a])
        if hi <= lo:
            out[...] = fill
            return out
        first, last = offset + sign * lo, offset + sign * (hi - 1)
        inner.append(slice(lo, hi))
        outer.append(slice(first, last + 1) if sign > 0 else slice(first, last - 1 if last > 0 else None, -1))
    block = (inner[0], inner[1], inner[2])
    if any(s.start > 0 or s.stop < n for s, n in zip(inner, shape, strict=True)):
        out[...] = fill
    out[block] = source[outer[0], outer[1], outer[2]]
    return out


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
