"""Tumours of the phantoms: where they sit, how they push, and their NCR / ET / ED compartments.

Contract
- Volumes are on the phantom lattice (``phantom_anatomy.SHAPE``, axes i, j, k of ``BRATS_AFFINE``,
  1 mm isotropic). ``Tumour.seg`` is uint8 with the BraTS 2021 labels 0, 1 (NCR, or non-enhancing core
  when the lesion does not enhance), 2 (ED), 4 (ET); the float32 ``core``/``et``/``ed`` maps are the same
  compartments blurred slightly (partial volume) for the image synthesis.
- Every label lies inside ``Anatomy.brain``; oedema avoids CSF; necrosis is at least one voxel
  (6-connectivity) inside the tumour core, so with enhancement it is wrapped in the enhancing rim.
- Volumes are hit exactly (to the voxel) where the brain has room: each compartment is the set of the N
  best-scoring voxels of a noisy, anisotropic, rotated ellipsoid score, N from the plan.

Shapes: score = 1 - r_ellipsoid + lobulation noise (+ a white-matter bonus for oedema, which makes it
finger into WM as vasogenic oedema does). All noise is generated coarse and interpolated, and all work is
done in a box around each lesion, so a 150 mL tumour costs well under a second.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from tumorseg_devkit.synth.phantom_anatomy import (
    BRATS_AFFINE,
    SHAPE,
    Anatomy,
    MassEffect,
    Pose,
    Templates,
)

log = logging.getLogger(__name__)

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Mask = NDArray[np.bool_]


@dataclass(frozen=True)
class LesionPlan:
    """One lesion as planned: where, how big, how it is built."""

    site: str  # "deep" | "periventricular" | "cortical" (see phantom_anatomy.SITES)
    wt_ml: float  # whole tumour (NCR + ET + ED) volume aimed at
    tc_fraction: float  # tumour core (NCR + ET) / whole tumour
    ncr_fraction: float  # necrosis / tumour core; 0 for a solid enhancing core
    enhancing: bool  # False: a non-enhancing core, labelled 1 throughout

    @property
    def radius_mm(self) -> float:
        return float((3 * self.wt_ml * 1000 / (4 * np.pi)) ** (1 / 3))


@dataclass(frozen=True, eq=False)
class Tumour:
    """Labels and soft compartment maps on ``SHAPE`` (axes i, j, k of ``BRATS_AFFINE``)."""

    seg: NDArray[np.uint8]
    core: F32  # label 1 (necrosis or non-enhancing core), blurred
    et: F32
    ed: F32


def place_lesions(
    lesions: Sequence[LesionPlan], templates: Templates, pose: Pose, rng: np.random.Generator
) -> list[F64]:
    """Pick a centre (output voxel coordinates) per lesion from the template's site catalogue.

    Secondary lesions keep clear of the earlier ones (multifocal, not one lobulated mass).
    """
    centres: list[F64] = []
    for lesion in lesions:
        sites = templates.sites[lesion.site]
        best: F64 | None = None
        for _ in range(50):
            c = pose.to_output_vox(sites[rng.integers(len(sites))][None, :])[0]
            if np.any(c < 8) or np.any(c > np.array(SHAPE) - 9):
                continue
            best = c
            gaps = [np.linalg.norm(c - o) for o in centres]
            if all(g > lesion.radius_mm + 25 for g in gaps):
                break
        if best is None:  # pragma: no cover - the catalogue always has sites inside the box
            best = np.array(SHAPE, dtype=np.float64) / 2
        centres.append(best)
    return centres


def mass_effects(
    lesions: Sequence[LesionPlan], centres: Sequence[F64], rng: np.random.Generator
) -> list[MassEffect]:
    """A push per lesion, growing with its core: small cores barely displace anything."""
    out = []
    for lesion, c in zip(lesions, centres, strict=True):
        r_tc = lesion.radius_mm * lesion.tc_fraction ** (1 / 3)
        amplitude = rng.uniform(0.1, 0.45) * float(np.clip(r_tc / 15.0, 0.2, 1.0))
        centre_mm = BRATS_AFFINE[:3, :3] @ c + BRATS_AFFINE[:3, 3]
        out.append(MassEffect(centre_mm, amplitude, r_tc + rng.uniform(4.0, 12.0)))
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> F32:
    """Zero-mean, unit-std random field with correlation length ~``scale`` voxels, built coarse."""
    step = max(1.0, scale / 2)
    low = tuple(max(3, int(np.ceil(n / step)) + 1) for n in shape)
    z = ndi.gaussian_filter(rng.standard_normal(low, dtype=np.float32), 1.5, mode="wrap")
    up = ndi.zoom(z, [n / m for n, m in zip(shape, low, strict=True)], order=1, output=np.float32)
    up -= up.mean()
    up /= max(float(up.std()), 1e-6)
    return up


def _random_rotation(rng: np.random.Generator) -> F64:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return np.asarray(q * np.sign(np.diag(r)), dtype=np.float64)


def _ellipsoid_radius(
    rng: np.random.Generator, offsets: Sequence[F32], radius: float, elongation: float
) -> F32:
    """Normalised radius (1 on the surface) of a randomly rotated ellipsoid of mean radius ``radius``."""
    rot = _random_rotation(rng)
    axes = np.exp(rng.uniform(-elongation, elongation, 3))
    axes /= np.prod(axes) ** (1 / 3)
    dx, dy, dz = offsets
    r2 = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
    for k in range(3):
        u = rot[k, 0] * dx + rot[k, 1] * dy + rot[k, 2] * dz
        r2 += (u / np.float32(axes[k] * radius)) ** 2
    return np.sqrt(r2)


def _top(score: F32, allowed: Mask, n: int) -> Mask:
    """The ``n`` highest-scoring allowed voxels (all of them when fewer are allowed)."""
    vals = score[allowed]
    if n <= 0:
        return np.zeros_like(allowed)
    if n >= vals.size:
        return allowed.copy()
    threshold = np.partition(vals, vals.size - n)[vals.size - n]
    return allowed & (score >= threshold)


def _grow(
    lesion: LesionPlan, centre: F64, anatomy: Anatomy, rng: np.random.Generator
) -> tuple[tuple[slice, ...], Mask, Mask, Mask]:
    """One lesion in its box: (box, label-1 core, enhancing rim, oedema) masks."""
    radius = lesion.radius_mm
    half = int(np.ceil(2.0 * radius + 6))
    lo = np.maximum(np.round(centre).astype(int) - half, 0)
    hi = np.minimum(np.round(centre).astype(int) + half + 1, SHAPE)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    grids = np.ogrid[box]
    offsets = [(g - np.float32(c)).astype(np.float32) for g, c in zip(grids, centre, strict=True)]
    # Lesions grow inside the ball inscribed in the box: where the brain leaves no room (a cortical site
    # with a big plan) the volume falls short instead of the shape being cut flat by the box.
    brain = anatomy.brain[box] & (sum(o * o for o in offsets) < np.float32(half - 1) ** 2)
    n_wt = round(lesion.wt_ml * 1000)

    # Core: an eccentric, lobulated ellipsoid inside the oedema.
    r_tc = radius * lesion.tc_fraction ** (1 / 3)
    shift = rng.standard_normal(3)
    shift *= rng.uniform(0.0, 0.35) * (radius - r_tc) / np.linalg.norm(shift)
    tc_offsets = [o - np.float32(s) for o, s in zip(offsets, shift, strict=True)]
    f_tc = 1 - _ellipsoid_radius(rng, tc_offsets, r_tc, 0.35)
    lobes = max(3.0, r_tc * rng.uniform(0.4, 1.0))
    f_tc += np.float32(rng.uniform(0.15, 0.5)) * _smooth_noise(rng, shape, lobes)
    f_tc += np.float32(rng.uniform(0.03, 0.15)) * _smooth_noise(rng, shape, rng.uniform(2.5, 4.0))
    tc = _top(f_tc, brain, round(n_wt * lesion.tc_fraction))

    if not lesion.enhancing:
        core, et = tc, np.zeros_like(tc)
    elif lesion.ncr_fraction > 0:
        # Necrosis: the inner part of the core, eroded away from the core's edge so the rim wraps it,
        # with a noisy level set so the rim thickness varies around the lesion.
        inner = ndi.binary_erosion(tc, iterations=int(rng.choice([1, 2, 2, 3])))
        g = f_tc + np.float32(rng.uniform(0.05, 0.25)) * _smooth_noise(rng, shape, rng.uniform(3.0, 7.0))
        core = _top(g, inner, round(lesion.ncr_fraction * int(tc.sum())))
        et = tc & ~core
    else:
        core, et = np.zeros_like(tc), tc

    # Oedema: a bigger, more irregular blob that prefers white matter and never enters CSF.
    f_ed = 1 - _ellipsoid_radius(rng, offsets, radius, 0.45)
    f_ed += np.float32(rng.uniform(0.15, 0.45)) * _smooth_noise(rng, shape, radius * rng.uniform(0.3, 0.8))
    f_ed += np.float32(rng.uniform(0.05, 0.2)) * _smooth_noise(rng, shape, rng.uniform(2.5, 5.0))
    f_ed += np.float32(rng.uniform(0.1, 0.6)) * (anatomy.wm[box] - np.float32(0.5))
    ed = _top(f_ed, brain & (anatomy.csf[box] < 0.5) & ~tc, n_wt - int(tc.sum()))
    return box, core, et, ed


def grow_tumour(
    lesions: Sequence[LesionPlan], centres: Sequence[F64], anatomy: Anatomy, rng: np.random.Generator
) -> Tumour:
    """All lesions of a case, merged: a core label of one lesion wins over another's oedema."""
    grown = [_grow(les, c, anatomy, rng) for les, c in zip(lesions, centres, strict=True)]
    seg = np.zeros(SHAPE, dtype=np.uint8)
    maps = {name: np.zeros(SHAPE, dtype=np.float32) for name in ("core", "et", "ed")}
    sigma = rng.uniform(0.5, 0.9)  # partial volume at compartment edges
    for box, core, et, ed in grown:
        seg[box][ed & (seg[box] == 0)] = 2
        for name, mask in (("core", core), ("et", et), ("ed", ed)):
            if mask.any():
                maps[name][box] += ndi.gaussian_filter(mask.astype(np.float32), sigma)
    for box, core, et, _ in grown:
        seg[box][et] = 4
        seg[box][core] = 1
    if len(grown) > 1:
        # Overlapping lesions can stack soft maps above 1; oedema gives way to the core.
        for name in ("core", "et"):
            np.minimum(maps[name], 1.0, out=maps[name])
        np.minimum(maps["ed"], 1.0 - np.minimum(maps["core"] + maps["et"], 1.0), out=maps["ed"])
    return Tumour(seg=seg, core=maps["core"], et=maps["et"], ed=maps["ed"])
