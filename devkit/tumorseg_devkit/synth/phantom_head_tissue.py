"""Head tissues around a phantom brain: the clinical-head lattice, tissue labels and noiseless contrasts.

Contract
- Head lattice: ``HEAD_SHAPE`` = (240, 256, 256) voxels, 1 mm isotropic, axes (i, j, k) of ``HEAD_AFFINE``
  (nibabel convention, voxel -> RAS+ mm): diag(-1, -1, 1) with translation (0, 253, -60), so i runs to the
  patient's left, j posterior, k superior, as on the BraTS lattice. The BraTS lattice sits inside it
  unchanged: head voxel = BraTS voxel + ``BRAIN_OFFSET``, and both affines give a brain voxel the same
  RAS position. Around the BraTS box the head lattice adds 14 mm in front (face), 2 mm behind, 41 mm
  above (the scalp, with room to move) and 60 mm below (upper neck).
- ``build_head`` -> ``Head``: a uint8 map of ``Tissue`` codes on that lattice; ``Tissue.BRAIN`` is exactly
  ``Anatomy.brain`` moved by ``BRAIN_OFFSET``, no other tissue ever covers a brain voxel.
- ``head_signal`` -> float32 noiseless signal on the head lattice relative to white matter = 1: the
  brain's own signal (``phantom_contrast.render``) on the brain voxels, per-tissue means (``head_means``)
  with texture elsewhere, 0 in air.

How the head is made. Layers follow the distance to a smoothed brain hull (a 4 mm Gaussian closing of the
brain, computed on a 2 mm lattice, so the skull bridges the sulci): extra-axial CSF, dura, inner table,
diploe, outer table, then scalp muscle (temporalis, thicker laterally), subcutaneous fat and skin at the
outer surface. Everything else is placed in the template's (MNI) millimetres through the case's pose, so
it lands where the brain's anatomy says: eyes with orbital fat, sclera and lens below and in front of the
frontal lobes, a rough face (nose, nasal cavity, maxillary sinuses) and an upper neck (muscle and fat,
pharynx, vertebral column, spinal canal and cord continuing the brainstem). Thicknesses, sizes and
contrasts are drawn per case from plausible ranges; thicknesses also vary smoothly over the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.phantom_anatomy import BRATS_AFFINE, SHAPE, Anatomy, Pose
from tumorseg_devkit.synth.phantom_contrast import BrainContrast

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Coords = tuple[F32, F32, F32]
Box = tuple[slice, ...]  # a box of the head lattice, one slice per axis
ScalarT = TypeVar("ScalarT", bound=np.generic)

HEAD_SHAPE: tuple[int, int, int] = (240, 256, 256)
BRAIN_OFFSET: tuple[int, int, int] = (0, 14, 60)
HEAD_AFFINE: F64 = BRATS_AFFINE.copy()
HEAD_AFFINE[:3, 3] = BRATS_AFFINE[:3, 3] - BRATS_AFFINE[:3, :3] @ np.array(BRAIN_OFFSET, dtype=np.float64)


class Tissue(IntEnum):
    AIR = 0
    BRAIN = 1
    CSF = 2
    DURA = 3
    VENOUS = 4  # dural venous sinuses
    BONE = 5  # cortical bone
    MARROW = 6  # diploe and vertebral marrow (fatty)
    MUSCLE = 7
    FAT = 8
    SKIN = 9
    VITREOUS = 10
    LENS = 11
    SCLERA = 12
    CORD = 13


# Texture amplitude (relative std of the signal) per tissue.
_TEXTURE = {Tissue.CSF: 0.03, Tissue.DURA: 0.05, Tissue.VENOUS: 0.06, Tissue.BONE: 0.3, Tissue.MARROW: 0.10}
_TEXTURE |= {Tissue.MUSCLE: 0.06, Tissue.FAT: 0.05, Tissue.SKIN: 0.06, Tissue.VITREOUS: 0.02}
_TEXTURE |= {Tissue.LENS: 0.03, Tissue.SCLERA: 0.05, Tissue.CORD: 0.03}


@dataclass(frozen=True, eq=False)
class Head:
    """Tissue labels on ``HEAD_SHAPE`` (axes i, j, k of ``HEAD_AFFINE``) and what the contrast needs."""

    tissue: NDArray[np.uint8]  # Tissue codes
    box: Box  # where the head is: non-air voxels, 2 voxels of air around them, even bounds
    brain_index: NDArray[np.intp]  # flat (C-order) index in ``box`` of each of Anatomy.voxels, in order
    texture: tuple[F32, F32]  # two smooth fields on ``box``, times each tissue's texture amplitude


def embed(volume: NDArray[ScalarT]) -> NDArray[ScalarT]:
    """A volume of the BraTS lattice (``SHAPE``) placed on the head lattice, zeros around it."""
    out = np.zeros(HEAD_SHAPE, dtype=volume.dtype)
    i, j, k = BRAIN_OFFSET
    out[i : i + SHAPE[0], j : j + SHAPE[1], k : k + SHAPE[2]] = volume
    return out


def _smoothstep(x: F32, lo: float, hi: float) -> F32:
    t = np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


def _part(
    axis: int, start: int | None = None, stop: int | None = None, step: int | None = None
) -> tuple[slice, ...]:
    index = [slice(None)] * 3
    index[axis] = slice(start, stop, step)
    return tuple(index)


def upsample2(a: F32) -> F32:
    """Trilinear x2 upsampling: fine voxel v lies at coarse coordinate (v - 0.5) / 2, edges clamped."""
    for axis in (2, 1, 0):  # the last axis first: the strided passes run on the smallest arrays
        shape = list(a.shape)
        shape[axis] *= 2
        out = np.empty(shape, dtype=np.float32)
        quarter = np.float32(0.25) * a
        even, odd = out[_part(axis, 0, None, 2)], out[_part(axis, 1, None, 2)]
        np.subtract(a, quarter, out=even)
        odd[...] = even
        even[_part(axis, 1)] += quarter[_part(axis, None, -1)]
        even[_part(axis, 0, 1)] += quarter[_part(axis, 0, 1)]
        odd[_part(axis, None, -1)] += quarter[_part(axis, 1)]
        odd[_part(axis, -1)] += quarter[_part(axis, -1)]
        a = out
    return a


def upsample2_box(coarse: F32, box: Box) -> F32:
    """``upsample2(coarse)[box]``, computed on the part of ``coarse`` that ``box`` needs."""
    lo = [max(s.start // 2 - 1, 0) for s in box]
    hi = [min((s.stop + 1) // 2 + 1, n) for s, n in zip(box, coarse.shape, strict=True)]
    fine = upsample2(coarse[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))])
    return fine[tuple(slice(s.start - 2 * a, s.stop - 2 * a) for s, a in zip(box, lo, strict=True))]


def even_box(mask: NDArray[np.bool_], margin: int) -> Box:
    """Bounding box of ``mask`` grown by ``margin`` voxels, with even bounds, clipped to the lattice."""
    box = []
    for axis, n in enumerate(mask.shape):
        hits = np.nonzero(mask.any(axis=tuple(b for b in range(3) if b != axis)))[0]
        box.append(slice(max((hits[0] - margin) // 2 * 2, 0), min((hits[-1] + margin + 2) // 2 * 2, n)))
    return tuple(box)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> F32:
    """Smooth random field, unit std."""
    f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    f /= max(float(f.std()), 1e-6)
    return f


class _Frame:
    """Head voxel (i, j, k) -> template (MNI) mm through the case's pose (the elastic warp, 1-4 mm, ignored)."""

    def __init__(self, pose: Pose) -> None:
        self.matrix = pose.linear @ HEAD_AFFINE[:3, :3]
        self.offset = pose.linear @ (HEAD_AFFINE[:3, 3] - pose.out_centre_mm) + pose.template_centre_mm

    def coords(self, box: Box, step: int = 1) -> Coords:
        """Template mm of the voxels of ``box`` (every ``step``-th, at the centres of step-blocks)."""
        i, j, k = (np.arange(s.start, s.stop, step) + (step - 1) / 2 for s in box)
        axes = (i[:, None, None], j[None, :, None], k[None, None, :])
        q = [self.offset[a] + sum(self.matrix[a, b] * axes[b] for b in range(3)) for a in range(3)]
        return q[0].astype(np.float32), q[1].astype(np.float32), q[2].astype(np.float32)

    def to_voxel(self, q_mm: F64) -> F64:
        return np.asarray(np.linalg.solve(self.matrix, q_mm - self.offset), dtype=np.float64)

    def box(self, lo: tuple[float, ...], hi: tuple[float, ...]) -> Box:
        """The head-lattice box (clipped, 2 voxels of margin) that holds the template-mm box [lo, hi]."""
        corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij"), dtype=np.float64)
        vox = np.linalg.solve(self.matrix, corners.reshape(3, -1) - self.offset[:, None])
        a = np.clip(np.floor(vox.min(1)).astype(int) - 2, 0, HEAD_SHAPE)
        b = np.clip(np.ceil(vox.max(1)).astype(int) + 3, a, HEAD_SHAPE)
        return tuple(slice(int(s), int(e)) for s, e in zip(a, b, strict=True))


def _ellipsoid(q: Coords, centre: tuple[float, ...], semi: tuple[float, ...]) -> F32:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid in template mm."""
    u = [(q[a] - np.float32(centre[a])) / np.float32(semi[a]) for a in range(3)]
    k0 = np.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
    k1 = np.sqrt(sum((u[a] / np.float32(semi[a])) ** 2 for a in range(3)))
    return k0 * (k0 - 1) / np.maximum(k1, np.float32(1e-6))


def _smin(a: F32, b: F32, k: float = 8.0) -> F32:
    """Smooth union of two signed distances (blend width ``k`` mm)."""
    h = np.maximum(np.float32(k) - np.abs(a - b), 0) / np.float32(k)
    return np.minimum(a, b) - h * h * np.float32(k / 4)


@dataclass(frozen=True)
class _Layers:
    """Outer limits (mm from the brain hull, cumulative) of the cranial layers, and the scalp's
    thicknesses (mm, not cumulative), drawn per case."""

    csf: float
    dura: float
    inner: float
    diploe: float
    outer: float
    galea: float  # scalp muscle over the vault
    temporalis: float  # extra muscle over the temporal fossa
    fat: float
    skin: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Layers:
        u = rng.uniform
        # Bone tables and skin stay >= 1.5 mm, more than the distances' largest step between neighbouring
        # voxels (1.25 with the thickness variation): they are closed shells in 6-connectivity.
        limits = np.cumsum([u(1.3, 3.2), u(0.8, 1.4), u(1.5, 2.3), u(2.0, 5.0), u(1.5, 2.5), u(1.0, 2.5)])
        csf, dura, inner, diploe, outer, galea = (float(v) for v in limits)
        return cls(csf, dura, inner, diploe, outer, galea, u(5.0, 12.0), u(2.0, 6.0), u(1.5, 2.5))


def _hull_distance(brain2: NDArray[np.bool_]) -> F32:
    """Signed distance (mm, > 0 outside) to a smoothed hull of the brain, on the 2 mm lattice, clamped to
    +/-60 mm; the work is done in the brain's bounding box padded by 60 mm."""
    nz = np.argwhere(brain2)
    lo, hi = np.maximum(nz.min(0) - 30, 0), np.minimum(nz.max(0) + 31, brain2.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    core = brain2[box]
    hull = ndi.binary_fill_holes((ndi.gaussian_filter(core.astype(np.float32), 2.0) > 0.4) | core)
    outside = ndi.distance_transform_edt(~hull).astype(np.float32)
    inside = ndi.distance_transform_edt(hull).astype(np.float32)
    d = np.full(brain2.shape, 60.0, dtype=np.float32)
    d[box] = np.where(hull, 1 - 2 * inside, 2 * outside - 1)
    return np.minimum(d, 60.0)


def _outer_surface(q: Coords, d: F32, layers: _Layers, eyes: F64, rng: np.random.Generator) -> F32:
    """Signed distance (mm, < 0 inside) to the head's skin, on the 2 mm lattice: the scalp over the vault
    (thicker over the temporal fossae) smoothly joined to a rough face, a nose, the eyelids and the neck."""
    x, y, z = q
    temporal = _smoothstep(np.abs(x), 35, 62) * _smoothstep(z, -45, -20) * (1 - _smoothstep(z, 5, 55))
    temporal *= _smoothstep(y, -75, -35) * (1 - _smoothstep(y, 5, 45))
    scalp = layers.galea + layers.fat + layers.skin  # galea: the outer limit of the scalp muscle
    body = d - np.float32(scalp) - np.float32(layers.temporalis) * temporal
    face = _ellipsoid(q, (0, 35, -70), (rng.uniform(50, 58), rng.uniform(50, 58), 55))
    nose = _ellipsoid(q, (0, rng.uniform(80, 86), -55), (rng.uniform(9, 12), 14, rng.uniform(20, 24)))
    neck_y, neck_a = rng.uniform(-40, -30), rng.uniform(55, 65)
    ellipse = np.sqrt((x / np.float32(neck_a)) ** 2 + ((y - np.float32(neck_y)) / np.float32(58)) ** 2)
    neck = np.maximum((ellipse - 1) * np.float32(56), z + np.float32(40))
    body = _smin(_smin(body, _smin(face, neck, 25.0)), nose)  # a wide blend fills the face-neck waist
    for ex, ey, ez, r in eyes:
        globe = np.sqrt((x - np.float32(ex)) ** 2 + (y - np.float32(ey)) ** 2 + (z - np.float32(ez)) ** 2)
        body = _smin(body, globe - np.float32(r + 5), 4.0)
    return body


def _deep_fat(q: Coords, rng: np.random.Generator) -> F32:
    """Fat (> 0) or muscle (< 0) in the face and neck, on the 2 mm lattice: blobs of a smooth random field,
    none above the skull base."""
    field = _noise(rng, q[2].shape, 2.5) - np.float32(rng.uniform(0.2, 0.6))
    return field - np.float32(4.0) * _smoothstep(q[2], -45, -25)


def _place_eyes(frame: _Frame, d: F32, layers: _Layers, rng: np.random.Generator) -> F64:
    """Globe centres and radius (template mm, rows x, y, z, r) in front of and below the frontal lobes,
    moved down until the globe keeps 3 mm clear of the inner table (``d``: hull distance, 2 mm lattice).
    The radius is 11-12.5 mm on the head lattice, whatever the pose's scale."""
    r = rng.uniform(11.0, 12.5) * abs(float(np.linalg.det(frame.matrix))) ** (1 / 3)
    x, y, z = rng.uniform(29, 34), rng.uniform(59, 65), rng.uniform(-40, -35)
    eyes = []
    for side in (-1.0, 1.0):
        centre = np.array([side * x, y, z])
        for _ in range(30):
            coarse = (frame.to_voxel(centre) - 0.5) / 2  # on the 2 mm lattice of ``d``
            clearance = float(ndi.map_coordinates(d, coarse[:, None], order=1, cval=60.0)[0]) - r - 3
            if clearance >= layers.inner:
                break
            centre[2] -= max(layers.inner - clearance, 1.0)
        eyes.append([*centre, r])
    return np.asarray(eyes, dtype=np.float64)


def _paint_eyes(tissue: NDArray[np.uint8], d: F32, frame: _Frame, eyes: F64, layers: _Layers) -> None:
    """Orbital fat and walls, then sclera, vitreous and lens; nothing inside the inner table or on the skin."""
    for ex, ey, ez, r in eyes:
        box = frame.box((ex - 25, ey - 45, ez - 25), (ex + 25, ey + 20, ez + 25))
        x, y, z = frame.coords(box)
        t = tissue[box]
        free = (d[box] >= layers.inner) & (t != Tissue.AIR) & (t != Tissue.SKIN)
        orbit = _ellipsoid((x, y, z), (ex - np.sign(ex) * 3, ey - 13, ez), (16, 25, 15))
        t[free & (orbit < 1.5) & (orbit >= 0)] = Tissue.BONE
        t[free & (orbit < 0)] = Tissue.FAT
        rr = np.sqrt((x - np.float32(ex)) ** 2 + (y - np.float32(ey)) ** 2 + (z - np.float32(ez)) ** 2)
        t[(rr < r) & (t != Tissue.SKIN)] = Tissue.SCLERA
        t[rr < r - 1] = Tissue.VITREOUS
        lens = _ellipsoid((x, y, z), (ex, ey + r - 3.0, ez), (4.5, 2.2, 4.5))  # just behind the cornea
        t[lens < 0] = Tissue.LENS


def _paint_neck(tissue: NDArray[np.uint8], frame: _Frame, rng: np.random.Generator) -> None:
    """Spinal canal and cord continuing the brainstem, vertebral column, pharynx, nasal cavity, sinuses."""
    brain = tissue == Tissue.BRAIN
    k0 = int(np.argmax(brain.any(axis=(0, 1))))
    ii, jj = np.nonzero(brain[:, :, k0 : k0 + 3].any(axis=2))
    x0, y0, z0 = frame.matrix @ np.array([ii.mean(), jj.mean(), k0 + 0.5]) + frame.offset
    box = frame.box((x0 - 30, y0 - 25, z0 - 250), (x0 + 30, y0 + 90, z0 + 14))
    x, y, z = frame.coords(box)
    t = tissue[box]
    free, soft = t != Tissue.BRAIN, (t == Tissue.MUSCLE) | (t == Tissue.FAT)
    tilt = rng.uniform(0.0, 0.25)  # the cord runs slightly forward as it descends
    ux, uy = x - np.float32(x0), y - np.float32(y0) - np.float32(tilt) * (np.float32(z0) - z)
    cord = (rng.uniform(5.5, 6.5), rng.uniform(4.5, 5.5))
    canal = (cord[0] + rng.uniform(3.0, 4.5), cord[1] + rng.uniform(2.5, 4.0))

    def ell(cy: float, a: float, b: float) -> F32:
        return np.sqrt((ux / np.float32(a)) ** 2 + ((uy - np.float32(cy)) / np.float32(b)) ** 2)

    # Posterior arches from below the foramen magnum, vertebral bodies (marrow in a cortical rim) in front.
    t[soft & (z < np.float32(z0 - 8)) & (ell(0, canal[0] + 4, canal[1] + 4) < 1) & (uy < 3)] = Tissue.BONE
    half = rng.uniform(8, 10)
    body_y = canal[1] + 2 + half
    vertebra = ell(body_y, rng.uniform(10, 13), half)
    t[soft & (z < np.float32(z0 - 14)) & (vertebra < 1)] = Tissue.BONE
    t[soft & (z < np.float32(z0 - 14)) & (vertebra < 0.85)] = Tissue.MARROW
    airway = rng.uniform(4, 8)
    pharynx = ell(body_y + half + rng.uniform(4, 7) + airway, rng.uniform(10, 15), airway) < 1
    t[soft & (z < np.float32(z0 + 5)) & pharynx] = Tissue.AIR
    t[free & (z < np.float32(z0 + 12)) & (ell(0, *canal) < 1)] = Tissue.CSF
    t[free & (z < np.float32(z0 + 1)) & (ell(0, *cord) < 1)] = Tissue.CORD

    box = frame.box((-45, 25, -90), (45, 95, -35))
    q = frame.coords(box)
    t = tissue[box]
    soft = (t == Tissue.MUSCLE) | (t == Tissue.FAT)
    t[soft & (_ellipsoid(q, (0, 62, -55), (rng.uniform(6, 8), 26, 16)) < 0)] = Tissue.AIR  # nasal cavity
    for side in (-1, 1):  # maxillary sinuses in a thin bony wall
        sinus = _ellipsoid(q, (side * 28, 56, -70), (12, 14, 15))
        t[soft & (sinus < 1.5) & (sinus >= 0)] = Tissue.BONE
        t[soft & (sinus < 0)] = Tissue.AIR


def _paint_sinuses(tissue: NDArray[np.uint8], d: F32, frame: _Frame, rng: np.random.Generator) -> None:
    """Superior sagittal sinus along the vault's midline and the transverse sinuses at the back: triangles
    of venous blood in the CSF and dura next to the skull."""
    nz = np.nonzero(tissue == Tissue.DURA)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    x, y, z = frame.coords(box)
    t, db = tissue[box], d[box]
    band = ((t == Tissue.CSF) | (t == Tissue.DURA)) & (db > -7)
    width = np.float32(rng.uniform(3.0, 5.0)) * np.clip((db + 7) / 7, 0, 1)
    sss = (np.abs(x) < width) & (z > -10) & (y < 60)
    transverse = (np.abs(z + 5 + np.float32(0.3) * np.abs(x)) < width) & (y < -55) & (np.abs(x) < 55)
    t[band & (sss | transverse)] = Tissue.VENOUS


def build_head(anatomy: Anatomy, pose: Pose, rng: np.random.Generator) -> Head:
    """Tissue labels of the whole head around ``anatomy`` (see the module docstring for the layout)."""
    frame = _Frame(pose)
    layers = _Layers.draw(rng)
    brain = embed(anatomy.brain).astype(bool)
    coarse = tuple(n // 2 for n in HEAD_SHAPE)
    brain2 = np.asarray(
        brain.reshape(coarse[0], 2, coarse[1], 2, coarse[2], 2).any(axis=(1, 3, 5)), dtype=bool
    )
    d2 = _hull_distance(brain2)
    # Thicknesses vary over the head by up to +/-20 %: stretch the outside distances accordingly.
    stretch = upsample2(np.clip(_noise(rng, tuple(n // 2 for n in coarse), 4.0), -1, 1))
    d2 = np.where(d2 > 0, d2 / (1 + np.float32(0.2) * stretch), d2)
    eyes = _place_eyes(frame, d2, layers, rng)
    q2 = frame.coords(tuple(slice(0, n) for n in HEAD_SHAPE), 2)
    skin2 = _outer_surface(q2, d2, layers, eyes, rng)
    fat2 = _deep_fat(q2, rng)
    del q2
    # Only the head's box (from the 2 mm surface, one 2 mm voxel of margin) needs the fine fields.
    box = tuple(slice(2 * sl.start, 2 * sl.stop) for sl in even_box(skin2 < 0, 1))
    d = np.full(HEAD_SHAPE, 60.0, dtype=np.float32)
    d[box] = upsample2_box(d2, box)
    skin, fat = upsample2_box(skin2, box), upsample2_box(fat2, box)
    del d2, skin2, fat2

    tissue = np.zeros(HEAD_SHAPE, dtype=np.uint8)
    t, near = tissue[box], d[box]
    inside = skin < 0
    t[inside] = Tissue.MUSCLE
    t[inside & (fat > 0) & (near > layers.galea + 3)] = Tissue.FAT
    t[inside & (skin > -(layers.skin + layers.fat))] = Tissue.FAT
    t[inside & (skin > -layers.skin)] = Tissue.SKIN
    del inside, skin, fat
    limits = (layers.outer, layers.diploe, layers.inner, layers.dura, layers.csf)
    kinds = (Tissue.BONE, Tissue.MARROW, Tissue.BONE, Tissue.DURA, Tissue.CSF)
    for limit, kind in zip(limits, kinds, strict=True):
        t[near < limit] = kind
    _paint_sinuses(tissue, d, frame, rng)
    _paint_eyes(tissue, d, frame, eyes, layers)
    tissue[brain] = Tissue.BRAIN
    _paint_neck(tissue, frame, rng)

    box = even_box(tissue > 0, 2)
    shape = tuple(sl.stop - sl.start for sl in box)
    start = np.array([sl.start for sl in box])[:, None]
    brain_index = np.ravel_multi_index(
        tuple(np.stack(anatomy.voxels) + np.array(BRAIN_OFFSET)[:, None] - start), shape
    )
    amp = np.array([_TEXTURE.get(kind, 0.0) for kind in Tissue], dtype=np.float32)[tissue[box]]
    tex = [upsample2_box(_noise(rng, coarse, rng.uniform(0.8, 1.5)), box) * amp for _ in range(2)]
    return Head(tissue=tissue, box=box, brain_index=brain_index, texture=(tex[0], tex[1]))


def head_means(brain: dict[str, BrainContrast], rng: np.random.Generator) -> dict[str, F32]:
    """Per modality, the mean of every ``Tissue`` relative to WM (a lookup table indexed by the code).

    CSF, vitreous and cord follow the brain's own draws (``brain[m].means``); the rest is drawn here:
    fat T1 1.3-1.7 (T1ce alike), T2 1.4-2.0, FLAIR 1.1-1.6; muscle 0.5-0.75 (T2 0.5-0.8); cortical bone
    0.02-0.08; marrow somewhat below fat; dura and venous sinuses 1.2-1.8 on T1ce.
    """
    u = rng.uniform
    fat = {"t1": u(1.3, 1.7), "t2": u(1.4, 2.0), "flair": u(1.1, 1.6)}
    fat["t1ce"] = fat["t1"] * u(0.97, 1.05)
    muscle = {"t1": u(0.5, 0.75), "t2": u(0.5, 0.8), "flair": u(0.5, 0.75)}
    muscle["t1ce"] = muscle["t1"] * u(1.0, 1.12)
    dura = {"t1": u(0.45, 0.7), "t1ce": u(1.2, 1.6), "t2": u(0.4, 0.7), "flair": u(0.6, 0.9)}
    venous = {"t1": u(0.2, 0.6), "t1ce": u(1.4, 1.8), "t2": u(0.2, 0.6), "flair": u(0.2, 0.7)}
    lens = {"t1": u(0.8, 1.0), "t1ce": u(0.8, 1.0), "t2": u(0.3, 0.5), "flair": u(0.6, 0.9)}
    marrow, skin, vitreous = u(0.75, 0.95), u(1.05, 1.35), u(0.9, 1.1)
    luts: dict[str, F32] = {}
    for m in SEQUENCES:
        lut = np.zeros(len(Tissue), dtype=np.float32)
        csf, gm = brain[m].means["csf"], brain[m].means["gm"]
        lut[Tissue.CSF], lut[Tissue.VITREOUS], lut[Tissue.CORD] = csf, csf * vitreous, 0.7 + 0.3 * gm
        lut[Tissue.DURA], lut[Tissue.VENOUS], lut[Tissue.LENS] = dura[m], venous[m], lens[m]
        lut[Tissue.BONE] = u(0.02, 0.08)
        lut[Tissue.FAT], lut[Tissue.MARROW] = fat[m], fat[m] * marrow
        lut[Tissue.MUSCLE], lut[Tissue.SKIN] = muscle[m], muscle[m] * skin
        lut[Tissue.SCLERA] = muscle[m] * 0.6
        luts[m] = lut
    return luts


def head_signal(head: Head, brain: BrainContrast, lut: F32, theta: float) -> F32:
    """Noiseless signal of one modality on ``head.box`` (air around it) relative to WM: ``lut[tissue]``
    with texture (the two fields of ``head`` mixed at angle ``theta``), ``brain.signal`` on the brain."""
    tex_a, tex_b = head.texture
    signal = np.float32(np.cos(theta)) * tex_a
    signal += np.float32(np.sin(theta)) * tex_b
    signal += 1
    signal *= lut[head.tissue[head.box]]
    np.maximum(signal, 0, out=signal)
    signal.reshape(-1)[head.brain_index] = brain.signal
    return signal
