"""Slice lattices for the DICOM writer: a NIfTI voxel grid (RAS) becomes a DICOM slice stack (LPS).

Array and geometry contract (everything here is in the DICOM patient frame, LPS, millimetres):

- :class:`SourceVolume` holds a NIfTI image as stored: ``data[i, j, k]`` (any numeric dtype) and
  ``affine``, the 4×4 map from ``(i, j, k, 1)`` to LPS, i.e. ``diag(-1, -1, 1, 1) @ nifti_affine``
  (NIfTI's world frame is RAS; DICOM's is LPS, so x and y change sign). Only affines whose three
  columns are orthogonal are accepted: a DICOM slice stack cannot carry a shear.
- :class:`Lattice` is one DICOM slice stack. ``direction`` has three unit columns: X, the row
  direction (column index grows along it; the first triplet of ImageOrientationPatient), Y, the
  column direction (row index grows along it; the second triplet) and N = X × Y, the slice normal.
  ``spacing`` is (x, y, z) mm: between columns, between rows, between slices, so PixelSpacing
  (row spacing \\ column spacing) is ``(y, x)``. ``size`` is (columns, rows, slices). ``origin`` is
  the centre of pixel (row 0, column 0) of slice 0, the slice lowest along N. Lattice index
  ``(u, v, w)`` = (column, row, slice) maps to ``origin + X·u·x + Y·v·y + N·w·z``.
- A volume sampled on a lattice is an array ``values[w, v, u]`` = ``[slice, row, column]``.

By default a series keeps the source lattice exactly: the lattice is the source grid with its axes
permuted and flipped so that X, Y and N point the way a reader of that plane expects, and sampling
is pure re-indexing (no interpolation, dtype kept). A tilt or an explicit spacing builds a new
lattice that covers the full extent of the source voxel centres and resamples linearly (SimpleITK).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import SimpleITK as sitk

from tumorseg.errors import InvalidInput
from tumorseg.imaging.grid import signed_permutation

Plane = Literal["axial", "sagittal", "coronal"]
PLANES: tuple[Plane, ...] = get_args(Plane)
MAX_TILT_DEG = 45.0

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# X (row direction) and Y (column direction) of each plane as radiologists display it, LPS:
# axial: patient's left to the right of the screen is +X = L; anterior at the top, so rows run
# towards P; coronal and sagittal: superior at the top, so rows run towards I (-z).
_DISPLAY_AXES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


@dataclass(frozen=True)
class SeriesGeometry:
    """How one series is acquired relative to the source grid.

    ``plane``: the slice plane. ``tilt_deg``: an oblique acquisition, the slice frame rotated by this
    angle about its own X axis (right-handed, LPS): for axial and coronal stacks that is the
    patient's left-right axis, like an AC-PC angulation (positive tips an axial normal from
    superior towards anterior); for sagittal stacks it is the anterior-posterior axis.
    ``spacing``: (x, y, z) mm, between columns, between rows, between slices; ``None`` keeps the
    source spacing. ``reverse_slices``: InstanceNumber 1 at the far end of the normal (e.g. the
    superior end of an axial stack) instead of the near end; the positions are unchanged.
    """

    plane: Plane = "axial"
    tilt_deg: float = 0.0
    spacing: tuple[float, float, float] | None = None
    reverse_slices: bool = False

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise InvalidInput(f"plane must be one of {', '.join(PLANES)}, not {self.plane!r}")
        if not math.isfinite(self.tilt_deg) or abs(self.tilt_deg) > MAX_TILT_DEG:
            raise InvalidInput(
                f"tilt must be a number of degrees within ±{MAX_TILT_DEG:g}, not {self.tilt_deg}"
            )
        if self.spacing is not None:
            if len(self.spacing) != 3 or not all(math.isfinite(s) and 0.05 <= s <= 50 for s in self.spacing):
                raise InvalidInput(
                    f"spacing must be three values X,Y,Z between 0.05 and 50 mm, not {self.spacing}"
                )
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))

    @property
    def resamples(self) -> bool:
        return self.tilt_deg != 0.0 or self.spacing is not None


@dataclass(frozen=True, eq=False)
class SourceVolume:
    """A NIfTI volume: ``data[i, j, k]`` as stored, ``affine`` (i, j, k, 1) → LPS mm (see module doc)."""

    data: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise InvalidInput(f"expected a 3-D volume, got shape {self.data.shape}")
        cols = self.affine[:3, :3]
        norms = np.linalg.norm(cols, axis=0)
        if not np.all(norms > 1e-6) or not np.all(np.isfinite(self.affine)):
            raise InvalidInput("the NIfTI affine is degenerate (a zero-length or non-finite voxel axis)")
        dirs = cols / norms
        gram = dirs.T @ dirs
        if not np.allclose(gram, np.eye(3), atol=1e-4):
            raise InvalidInput("the NIfTI affine has a shear; DICOM slice stacks need orthogonal voxel axes")

    @classmethod
    def from_nifti(cls, data: np.ndarray, affine_ras: np.ndarray) -> SourceVolume:
        return cls(data=data, affine=_LPS_FROM_RAS @ np.asarray(affine_ras, dtype=np.float64))

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def directions(self) -> np.ndarray:
        """Unit direction of each voxel axis, as columns (3×3, LPS)."""
        return self.affine[:3, :3] / self.spacing

    def corners(self) -> np.ndarray:
        """The 8 extreme voxel centres, (8, 3) LPS mm."""
        hi = np.array(self.data.shape) - 1
        idx = np.array([[a, b, c, 1.0] for a in (0, hi[0]) for b in (0, hi[1]) for c in (0, hi[2])])
        return (self.affine @ idx.T).T[:, :3]


@dataclass(frozen=True, eq=False)
class Lattice:
    """One DICOM slice stack (see module doc): origin, direction [X Y N], spacing (x, y, z), size (u, v, w)."""

    origin: np.ndarray
    direction: np.ndarray
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]

    @property
    def affine(self) -> np.ndarray:
        """4×4 map from lattice index (column, row, slice, 1) to LPS mm."""
        aff = np.eye(4)
        aff[:3, :3] = self.direction * np.asarray(self.spacing)
        aff[:3, 3] = self.origin
        return aff

    @property
    def normal(self) -> np.ndarray:
        return np.asarray(self.direction[:, 2])

    @property
    def image_orientation(self) -> list[float]:
        """ImageOrientationPatient: X then Y."""
        return [*self.direction[:, 0].tolist(), *self.direction[:, 1].tolist()]

    def slice_position(self, w: int) -> np.ndarray:
        """ImagePositionPatient of slice ``w``."""
        return np.asarray(self.origin + self.direction[:, 2] * self.spacing[2] * w)


def display_frame(plane: Plane) -> np.ndarray:
    """The conventional [X Y N] of a plane in LPS, as columns."""
    x, y = (np.array(v) for v in _DISPLAY_AXES[plane])
    return np.column_stack([x, y, np.cross(x, y)])


def source_aligned_frame(source: SourceVolume, plane: Plane) -> tuple[np.ndarray, tuple[float, float, float]]:
    """[X Y N] made of the source's own voxel axes, chosen and signed to look like ``plane``.

    The slice axis is the voxel axis closest to the plane's normal, the column axis the remaining
    one closest to the display X; signs follow the display frame. For an oblique source the frame
    stays oblique, which is what keeps its lattice exact. Returns the frame and the source spacing
    along X, Y, N.
    """
    want = display_frame(plane)
    dirs = source.directions
    spacing = source.spacing
    free = [0, 1, 2]
    a_n = max(free, key=lambda a: abs(float(dirs[:, a] @ want[:, 2])))
    free.remove(a_n)
    a_x = max(free, key=lambda a: abs(float(dirs[:, a] @ want[:, 0])))
    free.remove(a_x)
    a_y = free[0]
    x = dirs[:, a_x] * math.copysign(1.0, float(dirs[:, a_x] @ want[:, 0]))
    y = dirs[:, a_y] * math.copysign(1.0, float(dirs[:, a_y] @ want[:, 1]))
    frame = np.column_stack([x, y, np.cross(x, y)])
    return frame, (float(spacing[a_x]), float(spacing[a_y]), float(spacing[a_n]))


def tilted(frame: np.ndarray, tilt_deg: float) -> np.ndarray:
    """Rotate [X Y N] by ``tilt_deg`` about X (right-handed): Y' = cY + sN, N' = cN - sY."""
    if tilt_deg == 0.0:
        return frame
    t = math.radians(tilt_deg)
    x, y, n = frame[:, 0], frame[:, 1], frame[:, 2]
    return np.column_stack([x, math.cos(t) * y + math.sin(t) * n, math.cos(t) * n - math.sin(t) * y])


def covering_lattice(source: SourceVolume, frame: np.ndarray, spacing: tuple[float, float, float]) -> Lattice:
    """The lattice with this frame and spacing that covers every source voxel centre's extent.

    Along each axis the extent of the source's voxel-centre box is projected, ``floor(extent /
    spacing) + 1`` samples are taken and centred in it. With the source's own frame and spacing this
    reproduces the source grid exactly.
    """
    corners = source.corners()
    proj = corners @ frame  # coordinates along X, Y, N
    lo, hi = proj.min(axis=0), proj.max(axis=0)
    sp = np.asarray(spacing, dtype=np.float64)
    size = np.floor((hi - lo) / sp + 1e-6).astype(int) + 1
    start = lo + ((hi - lo) - (size - 1) * sp) / 2
    origin = frame @ start
    return Lattice(
        origin=origin,
        direction=frame,
        spacing=(float(sp[0]), float(sp[1]), float(sp[2])),
        size=(int(size[0]), int(size[1]), int(size[2])),
    )


def plan_lattice(source: SourceVolume, geometry: SeriesGeometry) -> Lattice:
    """The slice stack a series with ``geometry`` is written on (exactly the source grid by default)."""
    frame, source_spacing = source_aligned_frame(source, geometry.plane)
    frame = tilted(frame, geometry.tilt_deg)
    lattice = covering_lattice(source, frame, geometry.spacing or source_spacing)
    index_map = _exact_index_map(source, lattice)
    if index_map is not None:
        # Snap the origin onto the source voxel centre it stands for (removes ~1e-13 mm noise).
        _, offset = index_map
        origin = (source.affine @ np.append(offset, 1.0))[:3]
        lattice = Lattice(origin=origin, direction=frame, spacing=lattice.spacing, size=lattice.size)
    return lattice


def _exact_index_map(source: SourceVolume, lattice: Lattice) -> tuple[np.ndarray, np.ndarray] | None:
    """If every lattice point is a source voxel centre (``grid.signed_permutation``) inside the source:
    (signed permutation P, offset o) with source index = P @ lattice index + o. Otherwise ``None``."""
    m = np.linalg.solve(source.affine, lattice.affine)
    found = signed_permutation(m[:3, :3], m[:3, 3])
    if found is None:
        return None
    axes, signs, offsets = found
    perm = np.zeros((3, 3))
    for t in range(3):
        perm[axes[t], t] = signs[t]
    offset = np.asarray(offsets, dtype=np.float64)
    hi = np.array(lattice.size) - 1
    ends = np.array(
        [perm @ np.array([a, b, c]) + offset for a in (0, hi[0]) for b in (0, hi[1]) for c in (0, hi[2])]
    )
    if ends.min() < 0 or np.any(ends.max(axis=0) > np.array(source.data.shape) - 1):
        return None
    return perm, offset


def sample(source: SourceVolume, lattice: Lattice) -> np.ndarray:
    """The source's intensities on ``lattice`` as ``values[slice, row, column]``.

    Exact lattices are re-indexed (source dtype kept, bit for bit). Others are resampled in physical
    space with linear interpolation (0 outside the source); integer sources are rounded back to
    integers, as a scanner reconstructs integers; the result is float64.
    """
    index_map = _exact_index_map(source, lattice)
    if index_map is not None:
        return _reindex(source.data, lattice.size, *index_map)
    return _resample(source, lattice)


def _reindex(
    data: np.ndarray, size: tuple[int, int, int], perm: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    axis_of = {}  # lattice axis -> source axis
    window = []
    for a in range(3):
        b = int(np.argmax(np.abs(perm[a])))
        axis_of[b] = a
        start, n = int(offset[a]), size[b]
        # Basic slices (views) rather than fancy indexing: a flip is a negative step.
        window.append(
            slice(start, start + n) if perm[a, b] > 0 else slice(start, start - n if start >= n else None, -1)
        )
    picked = data[tuple(window)]
    return np.ascontiguousarray(picked.transpose(axis_of[2], axis_of[1], axis_of[0]))


def _resample(source: SourceVolume, lattice: Lattice) -> np.ndarray:
    work = np.float64 if source.data.dtype == np.float64 else np.float32
    image = sitk.GetImageFromArray(np.ascontiguousarray(source.data.transpose(2, 1, 0), dtype=work))
    image.SetOrigin(source.affine[:3, 3].tolist())
    image.SetSpacing(source.spacing.tolist())
    image.SetDirection(source.directions.flatten().tolist())
    out = sitk.Resample(
        image,
        list(lattice.size),
        sitk.Transform(),
        sitk.sitkLinear,
        lattice.origin.tolist(),
        list(lattice.spacing),
        lattice.direction.flatten().tolist(),
        0.0,
        sitk.sitkFloat64,
    )
    values = sitk.GetArrayFromImage(out)  # [slice, row, column]
    if np.issubdtype(source.data.dtype, np.integer):
        values = np.rint(values)
    return values
