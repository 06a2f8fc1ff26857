"""Model input preparation, shared by serving and training so the two cannot drift.

``prepare`` takes the four co-registered volumes (``SimpleITK.Image``, any lattices, LPS geometry),
resamples them in physical space onto the model grid of the reference volume (``grid.model_grid``),
crops to the foreground bounding box (+ margin), makes voxels outside any volume's field of view
background in every channel, and normalises each channel to zero mean / unit variance
over its non-zero voxels (MONAI ``NormalizeIntensity(nonzero=True, channel_wise=True)``).

Output array contract: float32, shape (C, I, J, K), channels in ``Preprocessing.channels`` order, the
spatial axes the index axes (i, j, k) of ``ModelInput.grid`` (identity direction in LPS: L, P, S), 1 mm.
``ModelInput.grid`` carries the geometry of exactly those voxels, so a prediction can be put back into
physical space (``grid.from_array``) and onto any series' lattice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from tumorseg.imaging import grid as g
from tumorseg.threads import usable_cpus

MODALITIES = ("flair", "t1", "t1ce", "t2")


@dataclass(frozen=True)
class Preprocessing:
    """What a model package records about its input; ``to_json``/``from_json`` round-trip it."""

    channels: tuple[str, ...] = MODALITIES
    spacing_mm: float = 1.0
    normalisation: str = "zscore_nonzero_channelwise"
    crop_foreground: bool = True
    crop_margin_vox: int = 8
    divisible_by: int = field(default=16)

    def __post_init__(self) -> None:
        if sorted(self.channels) != sorted(MODALITIES):
            raise ValueError(f"channels must be a permutation of {MODALITIES}, got {self.channels}")
        if self.normalisation != "zscore_nonzero_channelwise":
            raise ValueError(f"unknown normalisation {self.normalisation!r}")
        if not 0.25 <= self.spacing_mm <= 4:
            raise ValueError(f"spacing_mm {self.spacing_mm} is outside 0.25–4 mm")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preprocessing:
        values = dict(data)
        if "channels" in values:
            values["channels"] = tuple(values["channels"])
        return cls(**values)


@dataclass(frozen=True)
class ModelInput:
    array: NDArray[np.float32]  # (C, I, J, K), see module docstring
    grid: sitk.Image  # geometry of the spatial axes (empty uint8 image)


def foreground_box(
    mask: NDArray[np.bool_], margin: int, divisible_by: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, size) of the bounding box of ``mask`` grown by ``margin`` and to a multiple of
    ``divisible_by`` where the array allows; the whole array when ``mask`` is empty."""
    if not mask.any():
        return (0, 0, 0), tuple(mask.shape)
    low, high = [], []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        low.append(int(hits[0]))
        high.append(int(hits[-1]) + 1)
    return grow_box(low, high, mask.shape, margin, divisible_by)


def grow_box(
    low: Sequence[int], high: Sequence[int], shape: Sequence[int], margin: int, divisible_by: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The index box [low, high) grown by ``margin``, then to a multiple of ``divisible_by`` (centred)
    where ``shape`` allows, clipped to ``shape``. Returns (start, size)."""
    start, size = [], []
    for axis in range(3):
        lo, hi = max(int(low[axis]) - margin, 0), min(int(high[axis]) + margin, int(shape[axis]))
        want = int(np.ceil((hi - lo) / divisible_by) * divisible_by)
        if want <= shape[axis]:
            extra = want - (hi - lo)
            lo = max(0, min(lo - extra // 2, int(shape[axis]) - want))
            hi = lo + want
        start.append(lo)
        size.append(hi - lo)
    return tuple(start), tuple(size)


def nonzero_extent_on(
    volume: sitk.Image, grid: sitk.Image
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """The index range of ``grid`` (continuous, low and high corner) covering ``volume``'s non-zero voxels
    in physical space; None for an all-zero volume."""
    array: NDArray[np.generic] = np.asarray(sitk.GetArrayViewFromImage(volume))  # (k, j, i)
    # Two passes over the voxels: per slice, and the OR of all slices (whose rows and columns give j, i).
    per_slice = array.reshape(array.shape[0], -1).any(axis=1)
    in_plane: NDArray[np.bool_] = np.any(array, axis=0)
    bounds = []
    for hits in (per_slice, in_plane.any(axis=1), in_plane.any(axis=0)):
        index = np.flatnonzero(hits)
        if index.size == 0:
            return None
        bounds.append((int(index[0]), int(index[-1])))
    (k0, k1), (j0, j1), (i0, i1) = bounds
    corners = [
        grid.TransformPhysicalPointToContinuousIndex(volume.TransformIndexToPhysicalPoint((i, j, k)))
        for i in (i0, i1)
        for j in (j0, j1)
        for k in (k0, k1)
    ]
    points = np.asarray(corners, dtype=np.float64)
    return points.min(axis=0), points.max(axis=0)


def zscore_nonzero(channel: NDArray[np.float32]) -> NDArray[np.float32]:
    """In place: (x - mean) / std over non-zero voxels; zero voxels stay 0."""
    nonzero = channel != 0
    if nonzero.any():
        values = channel[nonzero]
        mean, std = float(values.mean()), float(values.std())
        # Dense arithmetic, then zeros restored by a multiply: the same numbers as writing back through
        # the mask, at half the cost.
        channel -= np.float32(mean)
        channel /= np.float32(std if std > 0 else 1.0)
        channel *= nonzero
    return channel


def prepare(
    volumes: Mapping[str, sitk.Image], reference: str, prep: Preprocessing, labels: sitk.Image | None = None
) -> tuple[ModelInput, NDArray[np.uint8] | None]:
    """Volumes (and optionally a label map, for training) → model input on the cropped model grid."""
    missing = [m for m in prep.channels if m not in volumes]
    if missing:
        raise ValueError(f"missing volumes for {missing}")
    full = g.model_grid(volumes[reference], prep.spacing_mm)
    shape = full.GetSize()
    if prep.crop_foreground:
        # Crop first, from each volume's non-zero extent in physical space, so that only the voxels the
        # model will see are resampled (the brain is a third of a typical field of view).
        extents = [e for e in (nonzero_extent_on(volumes[m], full) for m in prep.channels) if e is not None]
        if extents:
            low = np.floor(np.min([e[0] for e in extents], axis=0)).astype(int).clip(0, np.asarray(shape))
            high = np.ceil(np.max([e[1] for e in extents], axis=0)).astype(int) + 1
            start, size = grow_box(
                low, np.minimum(high, shape), shape, prep.crop_margin_vox, prep.divisible_by
            )
        else:
            start, size = (0, 0, 0), tuple(shape)
    else:
        start, size = (0, 0, 0), tuple(shape)
    cropped = g.crop(full, (start[0], start[1], start[2]), (size[0], size[1], size[2]))
    # One resampling pass per volume, straight into the (C, I, J, K) array: voxels outside the volume's
    # field of view (the same inside test for every interpolator) come out NaN, never a real intensity.
    array = np.empty((len(prep.channels), *cropped.GetSize()), dtype=np.float32)
    covered = np.ones(array.shape[1:], dtype=bool)
    # The volumes side by side, each with a share of the CPUs: resampling scales better across volumes than
    # within one.
    cpus = usable_cpus()
    workers = min(len(prep.channels), cpus)
    share = max(1, cpus // workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(
            pool.map(
                lambda c: g.resample_to_array(
                    volumes[prep.channels[c]], cropped, fill=np.nan, out=array[c], threads=share
                ),
                range(len(prep.channels)),
            )
        )
    outside = np.empty(array.shape[1:], dtype=bool)
    for c in range(len(prep.channels)):
        covered &= np.logical_not(np.isnan(array[c], out=outside), out=outside)
    # Where one sequence's field of view ends (a thick oblique slab that misses the vertex, say) the others
    # still show brain; the model was never shown a head with one channel cut off, so the voxels outside
    # any field of view are made background in every channel. Full-coverage data (BraTS) is unchanged.
    np.copyto(array, np.float32(0.0), where=~covered)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # numpy releases the GIL
        list(pool.map(zscore_nonzero, array))
    label_array = None
    if labels is not None:
        label_array = g.to_array(g.resample_labels(labels, cropped)).astype(np.uint8, copy=False)
    return ModelInput(array=array, grid=cropped), label_array
