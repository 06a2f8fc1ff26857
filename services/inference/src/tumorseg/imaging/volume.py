"""DICOM series → one volume with exact LPS geometry.

Array contract of the result (``SeriesVolume.image``, a ``SimpleITK.Image``):
- index axes (i, j, k) = (column, row, slice): i runs along ImageOrientationPatient's row direction
  (first three values), j along its column direction (last three), k along the slice normal
  row × column, ascending. Slices are sorted by their position along that normal, never by InstanceNumber.
- origin = ImagePositionPatient of the first slice in that order, in mm, patient LPS (DICOM's frame).
- spacing = (column spacing, row spacing, slice spacing) in mm — note PixelSpacing is stored (row, column).
- direction = the 3×3 matrix whose columns are row direction, column direction, normal (LPS).
- pixel type float32, with each slice's RescaleSlope/RescaleIntercept applied.

Multi-frame instances (Enhanced MR, Legacy Converted Enhanced MR: one instance, every slice a frame) give
the same volume: each frame is a slice, its position, orientation, pixel spacing and rescale read from the
per-frame or shared functional groups (``tumorseg.functional_groups``), frames sorted along the normal
whatever their order in the file; ``frame_numbers[k]`` then names the frame of slice k. A series may mix
the two kinds of instance; several stacks (orientations) are refused as for classic series.

This is the lattice ``dcm2niix`` produces for the same series, up to a signed permutation of the axes
(dcm2niix writes RAS and may flip the row axis): compare lattices, not raw affines.

A series that cannot become such a volume raises ``BrokenSeries`` naming the series and the reason:
too few slices, missing or invalid geometry tags (absent, not finite, an orientation that is not two
orthogonal unit vectors, a spacing that is not positive), several orientations, a slice position shared
twice, slices not on one line along the normal, uneven slice spacing (a missing slice), or pixel data that
cannot be decoded. A series over ``InputLimits`` (matrix, slice count, field of view) raises
``SeriesTooLarge`` from its headers, before any pixel is decoded or the volume allocated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tumorseg import functional_groups as fg
from tumorseg.errors import BrokenSeries, SeriesApart
from tumorseg.imaging import grid
from tumorseg.imaging.header import Header, read_header
from tumorseg.limits import InputLimits

log = logging.getLogger(__name__)

# Geometry tolerances: direction cosines are written with limited precision, positions in 0.01 mm steps.
ORIENTATION_TOLERANCE = 1e-3
SPACING_RELATIVE_TOLERANCE = 0.02
SPACING_ABSOLUTE_TOLERANCE_MM = 0.02
MIN_SLICES = 2
UNIT_TOLERANCE = 0.01  # direction cosines are unit vectors, written with a few digits
MIN_PIXEL_SPACING_MM = 1e-3  # a micrometre: no MR pixel is smaller, and below it the geometry degenerates
MAX_RESCALE = 1e6  # |RescaleSlope| and |RescaleIntercept|: larger would overflow float32 intensities
_NATIVE_LE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


@dataclass(frozen=True)
class SeriesVolume:
    """A loaded series: the volume and what a DICOM SEG needs to reference its source instances.

    ``sop_instance_uids[k]`` is the instance whose pixels are slice k of ``image`` (same order); for a
    series of multi-frame instances ``frame_numbers[k]`` is the frame (1-based) of that instance, and
    ``frame_numbers`` is empty for single-frame instances."""

    image: sitk.Image
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    label: str
    frame_numbers: tuple[int, ...] = ()

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        size = self.image.GetSize()
        return (int(size[0]), int(size[1]), int(size[2]))


Instance = Dataset | Header  # a Header where it can be read fast (see tumorseg.imaging.header)


def _parse(data: bytes, label: str) -> Instance:
    header = read_header(data)
    if header is not None and _native_dtype(header) is not None:
        return header
    try:
        return pydicom.dcmread(DicomBytesIO(data))
    except Exception as exc:  # pydicom raises many types for a damaged file
        raise BrokenSeries(f"series {label}: an instance is not readable DICOM ({exc})") from exc


@dataclass(frozen=True)
class _Frame:
    """One slice to be: an instance, or one frame (``index``, 0-based) of a multi-frame instance."""

    ds: Instance
    index: int | None
    orientation: NDArray[np.float64]
    position: NDArray[np.float64]
    pixel_spacing: NDArray[np.float64]


def _frames(datasets: Sequence[Instance], label: str) -> list[_Frame]:
    """Every slice of the series: each single-frame instance, each frame of each multi-frame one."""
    frames = []
    for ds in datasets:
        if not fg.is_multi_frame(ds):
            frames.append(
                _Frame(
                    ds,
                    None,
                    _vector(ds, "ImageOrientationPatient", 6, label),
                    _vector(ds, "ImagePositionPatient", 3, label),
                    _vector(ds, "PixelSpacing", 2, label),
                )
            )
            continue
        count = fg.frame_count(ds)
        per_frame = fg.per_frame_groups(ds)
        if per_frame and len(per_frame) != count:
            raise BrokenSeries(
                f"series {label}: instance {ds.get('SOPInstanceUID', '?')} has {count} frames but "
                f"{len(per_frame)} per-frame functional groups"
            )
        for f in range(count):
            value = _frame_lookup(ds, f)
            frames.append(
                _Frame(
                    ds,
                    f,
                    _vector(ds, "ImageOrientationPatient", 6, label, value),
                    _vector(ds, "ImagePositionPatient", 3, label, value),
                    _vector(ds, "PixelSpacing", 2, label, value),
                )
            )
    return frames


def _frame_lookup(ds: Instance, frame: int) -> Callable[[str], Any]:
    """A keyword's value for frame ``frame`` (0-based) of a multi-frame instance."""
    return lambda keyword: fg.find(ds, keyword, frame)


def _vector(
    ds: Instance, keyword: str, length: int, label: str, lookup: Callable[[str], Any] | None = None
) -> NDArray[np.float64]:
    """``length`` finite numbers of ``keyword`` (through ``lookup`` for a frame of a multi-frame instance);
    ``BrokenSeries`` when absent, short or not numbers."""
    try:
        value = lookup(keyword) if lookup is not None else ds.get(keyword)
        vector = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except Exception:  # pydicom raises many types for a damaged element (wrong length, not numbers)
        vector = None
    if vector is None or vector.shape != (length,) or not np.isfinite(vector).all():
        raise BrokenSeries(f"series {label}: instance {ds.get('SOPInstanceUID', '?')} has no valid {keyword}")
    return vector


def _count(ds: Instance, keyword: str, label: str) -> int:
    """A positive integer attribute (Rows, Columns); ``BrokenSeries`` when absent or not positive."""
    try:
        value = int(ds.get(keyword))
    except Exception:  # absent (TypeError), not a number, or a damaged element pydicom cannot read
        value = 0
    if value <= 0:
        raise BrokenSeries(f"series {label}: instance {ds.get('SOPInstanceUID', '?')} has no valid {keyword}")
    return value


def _number(
    ds: Instance, keyword: str, default: float, label: str, lookup: Callable[[str], Any] | None = None
) -> float:
    try:
        value = lookup(keyword) if lookup is not None else ds.get(keyword)
        number = float(value) if value not in (None, "") else default
    except Exception:  # not a number, or a damaged element pydicom cannot read
        number = float("nan")
    if not np.isfinite(number) or abs(number) > MAX_RESCALE:
        raise BrokenSeries(f"series {label}: instance {ds.get('SOPInstanceUID', '?')} has no valid {keyword}")
    return number


def _native_dtype(ds: Instance) -> type[np.integer] | None:
    """The stored integer type of an uncompressed little-endian single-frame greyscale slice of 8 or 16
    bits; None when the general decoder is needed."""
    if ds.file_meta.get("TransferSyntaxUID") not in _NATIVE_LE or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    bits, signed = int(ds.get("BitsAllocated", 0) or 0), int(ds.get("PixelRepresentation", 0) or 0) == 1
    stored_bits = int(ds.get("BitsStored", bits) or bits)
    if not 1 <= stored_bits <= bits or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return None
    return {8: np.int8 if signed else np.uint8, 16: np.int16 if signed else np.uint16}.get(bits)


def _native_pixels(ds: Instance) -> NDArray[np.generic] | None:
    """The stored values of a slice that ``_native_dtype`` accepts, straight from the buffer (``pixel_array``
    costs ~20× more per slice), with the bits above BitsStored cleared (unsigned) or sign-extended
    (signed), as pydicom does; None when the general decoder is needed."""
    dtype = _native_dtype(ds)
    if dtype is None:
        return None
    rows, columns = int(ds.Rows), int(ds.Columns)
    data = ds.PixelData
    size = np.dtype(dtype).itemsize
    if len(data) < rows * columns * size:
        raise ValueError(f"PixelData holds {len(data)} bytes, {rows}x{columns}x{size} expected")
    pixels = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
    unused = 8 * size - int(ds.get("BitsStored", 8 * size) or 8 * size)
    if unused:
        wide = pixels.astype(np.int32)
        if np.issubdtype(dtype, np.signedinteger):
            return (wide << (32 - 8 * size + unused)) >> (32 - 8 * size + unused)
        return wide & ((1 << (8 * size - unused)) - 1)
    return pixels


def _decoded(ds: Instance, label: str) -> NDArray[np.generic]:
    try:
        stored = _native_pixels(ds)
        return stored if stored is not None else ds.pixel_array
    except Exception as exc:  # decoder errors, truncated PixelData, missing handlers
        raise BrokenSeries(
            f"series {label}: pixel data of instance {ds.get('SOPInstanceUID', '?')} cannot be decoded ({exc})"
        ) from exc


def _pixels(
    frame: _Frame, label: str, out: NDArray[np.float32], stored: NDArray[np.generic] | None = None
) -> None:
    """One slice's stored values with the modality rescale applied, written into ``out`` (rows, columns).
    ``stored``: the decoded frames of a multi-frame instance (decoded once for all its frames)."""
    ds = frame.ds
    lookup: Callable[[str], Any] | None = None
    if frame.index is None:
        stored = _decoded(ds, label)
        what = "only greyscale instances are supported"
    else:
        assert stored is not None
        if stored.ndim == 3 and frame.index >= stored.shape[0]:
            raise BrokenSeries(
                f"series {label}: instance {ds.get('SOPInstanceUID', '?')} holds {stored.shape[0]} frames of "
                f"pixels where its headers describe frame {frame.index + 1}"
            )
        stored = stored[frame.index] if stored.ndim == 3 else stored
        what = f"frame {frame.index + 1}: only greyscale frames are supported"
        lookup = _frame_lookup(ds, frame.index)
    if stored.shape != out.shape:
        raise BrokenSeries(
            f"series {label}: instance {ds.get('SOPInstanceUID', '?')} holds {stored.shape} pixels; {what}"
        )
    out[...] = stored
    slope = _number(ds, "RescaleSlope", 1.0, label, lookup) or 1.0
    intercept = _number(ds, "RescaleIntercept", 0.0, label, lookup)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)


def load_series(
    files: Sequence[bytes], label: str, *, limits: InputLimits | None = None, decode_workers: int = 4
) -> SeriesVolume:
    """Build the volume of one series from its instances' Part-10 bytes (any order). See module docstring."""
    limits = limits or InputLimits()
    datasets, frames = _instances(files, label, limits)
    row_dir, col_dir = _orientation(frames, label)
    normal = np.cross(row_dir, col_dir)
    frames, positions, spacing = _along_normal(frames, normal, label)
    rows, columns, pixel_spacing = _in_plane(datasets, frames, label)
    # Before the volume is allocated or a pixel decoded (a small compressed frame can claim 65535² pixels).
    limits.check_frame(label, rows, columns, (float(pixel_spacing[0]), float(pixel_spacing[1])))
    limits.check_depth(label, len(frames), spacing)
    array, multi_frame = _voxels(datasets, frames, label, (rows, columns), decode_workers)
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetSpacing((float(pixel_spacing[1]), float(pixel_spacing[0]), spacing))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row_dir, col_dir, normal]).ravel()))
    first = frames[0].ds
    return SeriesVolume(
        image=image,
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        sop_class_uid=str(first.get("SOPClassUID", "")),
        sop_instance_uids=tuple(str(frame.ds.SOPInstanceUID) for frame in frames),
        label=label,
        frame_numbers=tuple(-1 if f.index is None else f.index + 1 for f in frames) if multi_frame else (),
    )


def _instances(
    files: Sequence[bytes], label: str, limits: InputLimits
) -> tuple[list[Instance], list[_Frame]]:
    """The parsed instances and every slice they hold (unsorted), once the counts are checked: at least
    ``MIN_SLICES`` slices, each instance with a SOPInstanceUID, within ``limits`` before a frame is expanded."""
    if not files:
        raise BrokenSeries(f"series {label}: no instances; a volume needs at least {MIN_SLICES} slices")
    limits.check_frames(label, len(files))
    datasets = [_parse(data, label) for data in files]
    for ds in datasets:
        if not str(ds.get("SOPInstanceUID", "") or "").strip():
            raise BrokenSeries(f"series {label}: an instance has no SOPInstanceUID")
    if len(datasets) < MIN_SLICES and not any(fg.is_multi_frame(ds) for ds in datasets):
        raise BrokenSeries(f"series {label}: {len(files)} instance(s); a volume needs at least {MIN_SLICES}")
    limits.check_frames(label, sum(fg.frame_count(ds) for ds in datasets))  # before a frame is expanded
    frames = _frames(datasets, label)
    if len(frames) < MIN_SLICES:
        raise BrokenSeries(f"series {label}: {len(frames)} slice(s); a volume needs at least {MIN_SLICES}")
    return datasets, frames


def _orientation(frames: Sequence[_Frame], label: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The row and column direction (LPS unit vectors) shared by every slice; one stack, orthonormal."""
    orientations = np.stack([frame.orientation for frame in frames])
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        raise BrokenSeries(f"series {label}: slices have different ImageOrientationPatient (several stacks?)")
    row_dir, col_dir = orientations[0][:3], orientations[0][3:]
    norms = np.asarray([np.linalg.norm(row_dir), np.linalg.norm(col_dir)])
    if np.abs(norms - 1.0).max() > UNIT_TOLERANCE:
        raise BrokenSeries(
            f"series {label}: ImageOrientationPatient is not two unit vectors (lengths "
            f"{norms[0]:.3g} and {norms[1]:.3g})"
        )
    row_dir, col_dir = row_dir / norms[0], col_dir / norms[1]
    if abs(float(row_dir @ col_dir)) > ORIENTATION_TOLERANCE:
        raise BrokenSeries(f"series {label}: ImageOrientationPatient row and column are not orthogonal")
    return row_dir, col_dir


def _along_normal(
    frames: Sequence[_Frame], normal: NDArray[np.float64], label: str
) -> tuple[list[_Frame], NDArray[np.float64], float]:
    """The slices sorted by position along ``normal`` (stable), their positions (LPS mm, in that order)
    and the slice spacing, once checked: no shared position, even steps, no shear against the normal."""
    positions = np.stack([frame.position for frame in frames])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    frames = [frames[i] for i in order]
    positions, distance = positions[order], distance[order]
    spacing = _slice_spacing(np.diff(distance), label)
    # Every slice must start on the line through the first one along the normal (no shear / gantry tilt).
    in_plane = (positions - positions[0]) - np.outer(distance - distance[0], normal)
    if np.abs(in_plane).max() > max(0.05, 0.05 * spacing):
        raise BrokenSeries(
            f"series {label}: slice positions are sheared against the slice normal (gantry tilt?)"
        )
    return frames, positions, spacing


def _slice_spacing(steps: NDArray[np.float64], label: str) -> float:
    """The median of the ``steps`` between sorted slices (mm), refused when two share a position or one
    step differs from it (a missing slice)."""
    if steps.min() < SPACING_ABSOLUTE_TOLERANCE_MM:
        raise BrokenSeries(
            f"series {label}: {int((steps < SPACING_ABSOLUTE_TOLERANCE_MM).sum()) + 1} slices share a slice "
            "position (several echoes, phases or repeats in one series?)"
        )
    spacing = float(np.median(steps))
    uneven = np.abs(steps - spacing) > max(
        SPACING_ABSOLUTE_TOLERANCE_MM, SPACING_RELATIVE_TOLERANCE * spacing
    )
    if uneven.any():
        k = int(np.argmax(uneven))
        raise BrokenSeries(
            f"series {label}: slice spacing is not uniform — {steps[k]:.2f} mm between slices {k + 1} and {k + 2} "
            f"where the others are {spacing:.2f} mm (a missing slice?); re-send the complete series"
        )
    return spacing


def _in_plane(
    datasets: Sequence[Instance], frames: Sequence[_Frame], label: str
) -> tuple[int, int, NDArray[np.float64]]:
    """Rows, Columns and PixelSpacing (row, column spacing in mm), the same for every instance and slice."""
    first = frames[0].ds
    pixel_spacing = frames[0].pixel_spacing
    if pixel_spacing.min() < MIN_PIXEL_SPACING_MM:
        raise BrokenSeries(
            f"series {label}: PixelSpacing {pixel_spacing.tolist()} is not a positive spacing of at least "
            f"{MIN_PIXEL_SPACING_MM} mm"
        )
    rows, columns = _count(first, "Rows", label), _count(first, "Columns", label)
    for ds in datasets:
        if (_count(ds, "Rows", label), _count(ds, "Columns", label)) != (rows, columns):
            raise BrokenSeries(f"series {label}: instances have different image sizes")
    for frame in frames:
        if np.abs(frame.pixel_spacing - pixel_spacing).max() > 1e-4:
            raise BrokenSeries(f"series {label}: slices have different PixelSpacing")
    return rows, columns, pixel_spacing


def _voxels(
    datasets: Sequence[Instance],
    frames: Sequence[_Frame],
    label: str,
    rows_columns: tuple[int, int],
    decode_workers: int,
) -> tuple[NDArray[np.float32], bool]:
    """The (k, j, i) float32 array (SimpleITK's z, y, x) of the sorted ``frames``, rescaled, and whether
    any slice came from a multi-frame instance."""
    array = np.empty((len(frames), *rows_columns), dtype=np.float32)
    # Each multi-frame instance is decoded once, for all its frames.
    multi_frame = {id(frame.ds): frame.ds for frame in frames if frame.index is not None}
    decoded = {key: _decoded(ds, label) for key, ds in multi_frame.items()}
    if decoded or all(ds.file_meta.get("TransferSyntaxUID") in _NATIVE_LE for ds in datasets):
        for k, frame in enumerate(frames):  # memory copies: threads would only add overhead
            _pixels(frame, label, array[k], decoded.get(id(frame.ds)))
    else:
        with ThreadPoolExecutor(max_workers=decode_workers) as pool:  # C decoders release the GIL
            list(pool.map(lambda k: _pixels(frames[k], label, array[k]), range(len(frames))))
    return array, bool(multi_frame)


MIN_OVERLAP = 0.5  # of the smaller series' box: every series must lie mostly within the reference's


def _box(image: sitk.Image) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The axis-aligned LPS box of ``image``'s voxels (corner centres padded by half a voxel's diagonal)."""
    corners = grid.physical_corners(image)
    pad = 0.5 * float(np.linalg.norm(image.GetSpacing()))
    return corners.min(axis=0) - pad, corners.max(axis=0) + pad


def check_overlap(volumes: dict[str, SeriesVolume], reference: str) -> None:
    """``SeriesApart`` (422) unless every series' box overlaps the reference series' box by at least
    ``MIN_OVERLAP`` of the smaller of the two: series that lie apart (another patient position, another
    frame of reference) would give an input of zeros and a silently empty mask. Patient motion between
    series (millimetres) and partial fields of view (a slab inside the head) pass."""
    ref = volumes[reference]
    lo_r, hi_r = _box(ref.image)
    for volume in volumes.values():
        if volume is ref:
            continue
        lo, hi = _box(volume.image)
        shared = float(np.prod(np.clip(np.minimum(hi, hi_r) - np.maximum(lo, lo_r), 0.0, None)))
        smaller = min(float(np.prod(hi - lo)), float(np.prod(hi_r - lo_r)))
        if shared < MIN_OVERLAP * smaller:
            same = volume.frame_of_reference_uid == ref.frame_of_reference_uid
            raise SeriesApart(
                f"series {volume.label} overlaps the reference series {ref.label} by {shared / smaller:.0%} "
                f"of its volume (at least {MIN_OVERLAP:.0%} needed); "
                + (
                    "they share a FrameOfReferenceUID, so the positions themselves are far apart"
                    if same
                    else "they have different FrameOfReferenceUIDs (another acquisition or patient position)"
                )
            )
