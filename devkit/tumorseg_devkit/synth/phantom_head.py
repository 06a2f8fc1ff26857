"""Clinical-head phantoms: the BraTS-like phantom brains inside a whole head, as a scanner delivers them.

Contract
- ``generate_head_case(seed)`` -> ``HeadCase``: four series (FLAIR, T1, T1ce, T2; int16 >= 0) on the head
  lattice ``HEAD_SHAPE`` = (240, 256, 256), 1 mm isotropic, array axes = NIfTI voxel axes (i, j, k);
  ``affine`` (nibabel convention, voxel -> RAS+ mm, shared by all series) is diag(-1, -1, 1) with
  translation (0, 253, -60): i to the patient's left, j posterior, k superior. The brain and tumour are
  exactly those of ``phantom.generate_case(seed)`` (same anatomy, labels and per-case contrasts); at rest
  the BraTS lattice sits in the head lattice at ``BRAIN_OFFSET`` = (0, 14, 60) voxels, same RAS positions.
  Around the brain: CSF, dura, skull, scalp, eyes, face and upper neck (``phantom_head_tissue``).
- Each series is acquired independently: the patient moves rigidly (rotation up to ``max_rotation_deg``
  about a random axis through the head's centroid, translation up to ``max_translation_mm``; from
  ``min_rotation_deg`` / ``min_translation_mm``, default 0; a draw that would carry part of the brain out
  of the lattice, every series' field of view, is drawn again: never at the default 5 deg / 5 mm), the noiseless
  head is sampled trilinearly in the moved pose, times a smooth bias field (peak |bias - 1| up to
  ``max_bias``), times a scanner scale (log-uniform 100-3000), then Rician noise everywhere (the air
  background is Rayleigh noise), rounded to int16 >= 0.
- Truth in each series' own frame: ``seg[m]`` (uint8 BraTS labels 0, 1 NCR, 2 ED, 4 ET) and ``brain[m]``
  (bool, the phantom's brain mask), sampled with nearest neighbour through the same motion.

Motion convention. ``motion[m]`` is a 4 x 4 matrix in LPS millimetres (DICOM / ITK patient coordinates:
x to the patient's Left, y Posterior, z Superior; LPS = diag(-1, -1, 1) applied to nibabel's RAS) that maps
an anatomical point p (the head at rest, in the scanner's physical space defined by ``affine``) to where it
appears in series m: x = motion[m] @ p. Series m's image at physical point x shows the resting head at
motion[m]^-1 @ x. The true rigid transform from series r's physical space to series m's physical space,
in the ITK / SimpleITK "fixed r -> moving m" sense (a point of the fixed image maps to the same anatomy
in the moving image), is motion[m] @ inv(motion[r]).

Determinism: a seed gives the same arrays on every run. Random streams are the children of
``np.random.SeedSequence(seed)``: children 0-3 are ``generate_case``'s (plan, anatomy, tumour, contrast),
child 4 draws the head's tissues and contrasts, child 5 is split into one stream per series for the
acquisition; the limits only scale the acquisition's draws.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.phantom import CasePlan, brain_and_tumour, plan_case, write_cases
from tumorseg_devkit.synth.phantom_contrast import render
from tumorseg_devkit.synth.phantom_head_tissue import (
    BRAIN_OFFSET,
    HEAD_AFFINE,
    HEAD_SHAPE,
    Box,
    Head,
    Tissue,
    build_head,
    embed,
    even_box,
    head_means,
    head_signal,
    upsample2,
    upsample2_box,
)

__all__ = [
    "BRAIN_OFFSET",
    "HEAD_AFFINE",
    "HEAD_SHAPE",
    "MOTION_CONVENTION",
    "HeadCase",
    "MotionRange",
    "Tissue",
    "bias_field",
    "generate_head_case",
    "write_head_case",
    "write_head_cases",
]

log = logging.getLogger(__name__)

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
LPS_FROM_RAS: F64 = np.diag([-1.0, -1.0, 1.0, 1.0])
MOTION_CONVENTION = (
    "motion[m]: 4x4, LPS mm (x left, y posterior, z superior); maps a point p of the head at rest (physical "
    "space of the shared affine) to where it appears in series m: x = motion[m] @ p. Fixed r -> moving m "
    "(ITK convention) is motion[m] @ inv(motion[r])."
)
_SCALE = (100.0, 3000.0)
_NOISE = (0.015, 0.05)  # Rician sigma relative to white matter
_SEG_BITS = 0b111  # labels 0-4 in the low bits, brain flag above them while resampling


@dataclass(frozen=True, eq=False)
class HeadCase:
    """One clinical-head case; see the module docstring for lattices, frames and the motion convention.

    ``images``/``seg``/``brain``/``motion`` are keyed by modality (``SEQUENCES``); every array has shape
    ``HEAD_SHAPE`` (axes i, j, k of ``affine``); ``motion`` matrices are 4 x 4 float64, LPS mm. ``tissue``
    (uint8 ``Tissue`` codes) is the head at rest, in no series' frame: useful to check anatomy and
    contrasts, not part of the written layout.
    """

    images: dict[str, NDArray[np.int16]]
    seg: dict[str, NDArray[np.uint8]]
    brain: dict[str, NDArray[np.bool_]]
    affine: F64
    motion: dict[str, F64]
    plan: CasePlan
    tissue: NDArray[np.uint8]

    def __post_init__(self) -> None:
        for name, arrays in (("images", self.images), ("seg", self.seg), ("brain", self.brain)):
            if set(arrays) != set(SEQUENCES) or any(a.shape != HEAD_SHAPE for a in arrays.values()):
                raise ValueError(f"{name} must hold {SEQUENCES} arrays of shape {HEAD_SHAPE}")
        if set(self.motion) != set(SEQUENCES) or any(m.shape != (4, 4) for m in self.motion.values()):
            raise ValueError(f"motion must hold one 4 x 4 matrix per modality {SEQUENCES}")
        if self.tissue.shape != HEAD_SHAPE:
            raise ValueError(f"tissue must have shape {HEAD_SHAPE}")


@dataclass(frozen=True)
class _Acquisition:
    """What one series draws: motion (LPS mm), bias waves and peak, scanner scale, relative noise."""

    motion: F64
    waves: F64  # (n, 5): wave vector (3, rad/mm in voxel axes), phase, weight
    peak_bias: float
    scale: float
    noise: float


@dataclass(frozen=True)
class MotionRange:
    """How far each series' patient moves from rest: a rotation angle in [``min_rotation_deg``,
    ``max_rotation_deg``] about a random axis through the head's centroid and a translation of length in
    [``min_translation_mm``, ``max_translation_mm``] in a random direction (uniform within each range)."""

    max_rotation_deg: float = 5.0
    max_translation_mm: float = 5.0
    min_rotation_deg: float = 0.0
    min_translation_mm: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.min_rotation_deg <= self.max_rotation_deg <= 90):
            raise ValueError("rotation range must satisfy 0 <= min <= max <= 90 degrees")
        if not (0 <= self.min_translation_mm <= self.max_translation_mm <= 100):
            raise ValueError("translation range must satisfy 0 <= min <= max <= 100 mm")

    @classmethod
    def parse(cls, text: str) -> MotionRange:
        """``DEG,MM`` (up to DEG degrees and MM millimetres) or ``DEG0-DEG1,MM0-MM1`` (within ranges)."""
        try:
            rotation, translation = (part.strip() for part in text.split(","))
            r0, r1 = (float(v) for v in rotation.split("-")) if "-" in rotation else (0.0, float(rotation))
            t0, t1 = (
                (float(v) for v in translation.split("-"))
                if "-" in translation
                else (0.0, float(translation))
            )
        except ValueError as exc:
            raise ValueError(f"motion {text!r}: expected DEG,MM or DEG0-DEG1,MM0-MM1 (e.g. 7.5,15)") from exc
        return cls(r1, t1, r0, t0)


# Redraws of one series' motion that would carry part of the brain out of the lattice (the field of view)
_MAX_REDRAWS = 100


def _draw_motion(
    rng: np.random.Generator, centre_lps: F64, motion_range: MotionRange, brain_corners: F64
) -> F64:
    """A rigid motion (4 x 4, LPS mm) within ``motion_range`` that keeps ``brain_corners`` (head voxel
    coordinates, (8, 3)) inside the head lattice; drawn again while it does not (never at the default range,
    whose draws are those of before the range existed)."""
    for _ in range(_MAX_REDRAWS):
        motion = _motion_draw(rng, centre_lps, motion_range)
        to_lps = _voxel_lps(HEAD_AFFINE)
        moved = np.linalg.inv(to_lps) @ motion @ to_lps @ np.c_[brain_corners, np.ones(len(brain_corners))].T
        if np.all(moved[:3] >= 0) and np.all(moved[:3].T <= np.asarray(HEAD_SHAPE) - 1):
            return motion
    raise ValueError(f"no motion within {motion_range} keeps the brain inside the head lattice")


def _motion_draw(rng: np.random.Generator, centre_lps: F64, motion_range: MotionRange) -> F64:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    r0, r1 = motion_range.min_rotation_deg, motion_range.max_rotation_deg
    angle = np.deg2rad(r0) + np.deg2rad(r1 - r0) * rng.uniform()
    direction = rng.standard_normal(3)
    t0, t1 = motion_range.min_translation_mm, motion_range.max_translation_mm
    translation = direction / np.linalg.norm(direction) * (t0 + (t1 - t0) * rng.uniform())
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    motion = np.eye(4)
    motion[:3, :3] = rotation
    motion[:3, 3] = centre_lps + translation - rotation @ centre_lps
    return motion


def _draw_acquisition(
    rng: np.random.Generator,
    centre_lps: F64,
    max_rotation_deg: float,
    max_translation_mm: float,
    max_bias: float,
    *,
    min_rotation_deg: float = 0.0,
    min_translation_mm: float = 0.0,
    brain_corners: F64 | None = None,
) -> _Acquisition:
    """One series' draws; with ``brain_corners``, a motion that keeps them inside the lattice."""
    motion_range = MotionRange(max_rotation_deg, max_translation_mm, min_rotation_deg, min_translation_mm)
    if brain_corners is None:
        motion = _motion_draw(rng, centre_lps, motion_range)
    else:
        motion = _draw_motion(rng, centre_lps, motion_range, brain_corners)
    waves = np.zeros((3, 5))
    for w in waves:
        k = rng.standard_normal(3)
        w[:3] = k * 2 * np.pi / (rng.uniform(200, 500) * np.linalg.norm(k))
        w[3], w[4] = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0)
    peak = max_bias * rng.uniform()
    scale = float(np.exp(rng.uniform(*np.log(_SCALE))))
    return _Acquisition(motion, waves, float(peak), scale, float(rng.uniform(*_NOISE)))


def bias_field(waves: F64, peak: float, box: Box | None = None) -> F32:
    """Smooth multiplicative bias on ``HEAD_SHAPE`` (or its part ``box``): exp of a sum of long plane waves
    (``waves`` rows: wave vector in rad per voxel along i, j, k, phase, weight), scaled so that max
    |bias - 1| over the lattice is ``peak``. Made on a 4 mm lattice and interpolated, which keeps it
    within the 4 mm extremes (the waves are 200 mm long or more)."""
    coarse = [np.arange(n // 4, dtype=np.float32) * 4 + np.float32(1.5) for n in HEAD_SHAPE]
    log_bias = np.zeros(tuple(n // 4 for n in HEAD_SHAPE), dtype=np.float32)
    for kx, ky, kz, phase, weight in waves:
        arg = (
            np.float32(kx) * coarse[0][:, None, None]
            + np.float32(ky) * coarse[1][None, :, None]
            + np.float32(kz) * coarse[2][None, None, :]
        )
        log_bias += np.float32(weight) * np.cos(arg + np.float32(phase))
    hi, lo = float(log_bias.max()), float(log_bias.min())
    # Largest t with max(exp(t hi) - 1, 1 - exp(t lo)) <= peak (both sides increase with t).
    limits = [np.log1p(peak) / hi if hi > 0 else np.inf, -np.log1p(-peak) / -lo if lo < 0 else np.inf]
    t = min(limits) if peak > 0 else 0.0
    bias = upsample2(np.exp(np.float32(t) * log_bias))
    return upsample2_box(bias, box or tuple(slice(0, n) for n in HEAD_SHAPE))


def _voxel_lps(affine: F64) -> F64:
    return LPS_FROM_RAS @ affine


def _resample(volume: NDArray[Any], box: Box, voxel_map: F64, out_box: Box, linear: bool) -> NDArray[Any]:
    """``out[v] = rest[voxel_map @ v]`` for the head voxels v of ``out_box`` (an array of its shape), where
    ``rest`` is 0 but for ``volume`` on ``box``; voxel_map is 4 x 4, head voxel -> head voxel; trilinear or
    nearest neighbour (SimpleITK)."""
    # SimpleITK sees a numpy array (i, j, k) as an image with x = k, y = j, z = i: swap the axes.
    swap = np.eye(4)[[2, 1, 0, 3]]
    m = swap @ voxel_map @ swap
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume))
    image.SetOrigin([float(s.start) for s in reversed(box)])
    resampler = sitk.ResampleImageFilter()
    resampler.SetTransform(sitk.AffineTransform(m[:3, :3].ravel().tolist(), m[:3, 3].tolist()))
    resampler.SetSize([s.stop - s.start for s in reversed(out_box)])
    resampler.SetOutputOrigin([float(s.start) for s in reversed(out_box)])
    resampler.SetInterpolator(sitk.sitkLinear if linear else sitk.sitkNearestNeighbor)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def _moved_box(box: Box, series_from_rest: F64, margin: int = 2) -> Box:
    """Bounding box (head voxels, clipped) of the box ``box`` of the resting head seen in a series."""
    ends = [(s.start, s.stop - 1) for s in box]
    corners = np.array(np.meshgrid(*ends, indexing="ij")).reshape(3, -1)
    moved = series_from_rest[:3, :3] @ corners + series_from_rest[:3, 3:]
    a = np.clip(np.floor(moved.min(1)).astype(int) - margin, 0, HEAD_SHAPE)
    b = np.clip(np.ceil(moved.max(1)).astype(int) + margin + 1, a, HEAD_SHAPE)
    return tuple(slice(int(s), int(e)) for s, e in zip(a, b, strict=True))


def _acquire(
    signal: F32,
    labels: NDArray[np.uint8],
    boxes: tuple[Box, Box],
    acq: _Acquisition,
    rng: np.random.Generator,
) -> tuple[NDArray[np.int16], NDArray[np.uint8]]:
    """One series: the resting noiseless ``signal`` and ``labels``, which live on ``boxes`` (0 around
    them), seen through ``acq.motion``; then bias, scale and Rician noise on the whole lattice."""
    to_lps = _voxel_lps(HEAD_AFFINE)
    rest_from_series = np.asarray(
        np.linalg.inv(to_lps) @ np.linalg.inv(acq.motion) @ to_lps, dtype=np.float64
    )
    series_from_rest = np.asarray(np.linalg.inv(rest_from_series), dtype=np.float64)
    head_box, label_box = (_moved_box(b, series_from_rest) for b in boxes)
    moved = _resample(signal, boxes[0], rest_from_series, head_box, linear=True)
    moved *= bias_field(acq.waves, acq.peak_bias, head_box)
    moved *= np.float32(acq.scale)
    seg = np.zeros(HEAD_SHAPE, dtype=np.uint8)
    seg[label_box] = _resample(labels, boxes[1], rest_from_series, label_box, linear=False)
    # Rician noise, |signal + n1 + i n2| with n1, n2 ~ N(0, sigma^2) drawn by Box-Muller: radius r and
    # angle t give n1 = r cos t, n2 = r sin t, so |.|^2 = signal^2 + 2 signal r cos t + r^2, and where the
    # signal is 0 (all around the moved head's box) the magnitude is r itself, Rayleigh noise.
    sigma = np.float32(acq.noise * acq.scale)
    magnitude = rng.random(HEAD_SHAPE, dtype=np.float32)
    np.subtract(np.float32(1), magnitude, out=magnitude)  # in (0, 1]
    np.log(magnitude, out=magnitude)
    magnitude *= np.float32(-2) * sigma * sigma
    np.sqrt(magnitude, out=magnitude)
    cosine = rng.random(moved.shape, dtype=np.float32)
    cosine *= np.float32(2 * np.pi)
    np.cos(cosine, out=cosine)
    radius = magnitude[head_box]
    cosine *= radius
    cosine *= np.float32(2)
    cosine += moved
    cosine *= moved  # signal^2 + 2 signal r cos t
    radius *= radius
    radius += cosine
    np.sqrt(np.maximum(radius, 0, out=radius), out=radius)
    np.rint(magnitude, out=magnitude)
    np.minimum(magnitude, np.float32(np.iinfo(np.int16).max), out=magnitude)
    return magnitude.astype(np.int16), seg


def generate_head_case(
    seed: int,
    *,
    max_rotation_deg: float = 5.0,
    max_translation_mm: float = 5.0,
    max_bias: float = 0.2,
    min_rotation_deg: float = 0.0,
    min_translation_mm: float = 0.0,
) -> HeadCase:
    """Make the clinical-head case of ``seed`` (>= 0) in memory; see the module docstring. The motion of
    each series from rest lies within the ``min_``/``max_`` limits (``MotionRange``)."""
    if not (max_rotation_deg >= 0 and max_translation_mm >= 0 and 0 <= max_bias < 1):
        raise ValueError("limits must be >= 0 (max_bias below 1)")
    MotionRange(max_rotation_deg, max_translation_mm, min_rotation_deg, min_translation_mm)  # validates
    start = time.perf_counter()
    plan = plan_case(seed)
    children = np.random.SeedSequence(seed).spawn(6)
    rng_anatomy, rng_tumour, rng_contrast, rng_head = (np.random.default_rng(c) for c in children[1:5])
    series_rngs = [np.random.default_rng(c) for c in children[5].spawn(len(SEQUENCES))]

    # Exactly generate_case's steps and draws, so the brain and tumour are identical.
    pose, anatomy, tumour = brain_and_tumour(plan, rng_anatomy, rng_tumour)
    contrast = render(anatomy, tumour, plan.profile != "no_et", rng_contrast)

    head = build_head(anatomy, pose, rng_head)
    luts = head_means(contrast, rng_head)
    thetas = {m: float(rng_head.uniform(0, 2 * np.pi)) for m in SEQUENCES}
    flags = anatomy.brain.astype(np.uint8)
    flags *= np.uint8(_SEG_BITS + 1)
    labels = embed(tumour.seg | flags)
    centroid = _head_centroid(head)
    label_box = even_box(labels > 0, 1)
    boxes = (head.box, label_box)
    labels = np.ascontiguousarray(labels[label_box])
    centre_lps = (_voxel_lps(HEAD_AFFINE) @ np.append(centroid, 1.0))[:3]
    brain_corners = _box_corners(even_box(embed(anatomy.brain.astype(np.uint8)) > 0, 0))

    images, seg, brain, motion = {}, {}, {}, {}
    for modality, rng in zip(SEQUENCES, series_rngs, strict=True):
        acq = _draw_acquisition(
            rng,
            centre_lps,
            max_rotation_deg,
            max_translation_mm,
            max_bias,
            min_rotation_deg=min_rotation_deg,
            min_translation_mm=min_translation_mm,
            brain_corners=brain_corners,
        )
        signal = head_signal(head, contrast[modality], luts[modality], thetas[modality])
        images[modality], moved = _acquire(signal, labels, boxes, acq, rng)
        seg[modality] = moved & np.uint8(_SEG_BITS)
        brain[modality] = moved > _SEG_BITS
        motion[modality] = acq.motion
    log.info("head phantom seed %d: %s, %.1f s", seed, plan.profile, time.perf_counter() - start)
    return HeadCase(
        images=images,
        seg=seg,
        brain=brain,
        affine=HEAD_AFFINE.copy(),
        motion=motion,
        plan=plan,
        tissue=head.tissue,
    )


def _box_corners(box: Box) -> F64:
    """The 8 corner voxels (head voxel coordinates) of ``box``."""
    ends = [(float(b.start), float(b.stop - 1)) for b in box]
    return np.array(np.meshgrid(*ends, indexing="ij"), dtype=np.float64).reshape(3, -1).T


def _head_centroid(head: Head) -> F64:
    """Centroid (head voxel coordinates) of everything that is not air."""
    inside = head.tissue > 0
    total = float(np.count_nonzero(inside))
    weights = [inside.sum(axis=tuple(b for b in range(3) if b != a), dtype=np.int64) for a in range(3)]
    return np.array([float(w @ np.arange(w.size)) / total for w in weights])


def _save(data: NDArray[Any], affine: F64, path: Path, descrip: str) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = descrip.encode()[:79]
    nib.save(img, path)


def write_head_case(case: HeadCase, out_dir: Path, case_id: str) -> Path:
    """Write ``case`` as a BraTS-layout folder ``out_dir/case_id`` (what ``to_dicom.convert_case`` reads);
    return the folder.

    ``case_id_{flair,t1,t1ce,t2}.nii.gz`` (int16) and ``case_id_seg.nii.gz`` (uint8, labels in the FLAIR
    frame); ``truth/seg_{m}.nii.gz`` (uint8 labels), ``truth/brain_{m}.nii.gz`` (uint8 0/1) in each series'
    frame and ``truth/motion.json`` (``MOTION_CONVENTION`` and one 4 x 4 LPS matrix per modality). NIfTI-1,
    gzip, ``case.affine`` as sform and qform with codes 1, mm. Existing files of the same names are replaced.
    """
    if not case_id or Path(case_id).name != case_id:
        raise ValueError(f"case_id must be a plain folder name, got {case_id!r}")
    folder = Path(out_dir) / case_id
    truth = folder / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    descrip = f"tumorseg head phantom seed {case.plan.seed}"
    for m in SEQUENCES:
        _save(case.images[m], case.affine, folder / f"{case_id}_{m}.nii.gz", descrip)
        _save(case.seg[m], case.affine, truth / f"seg_{m}.nii.gz", descrip)
        _save(case.brain[m].astype(np.uint8), case.affine, truth / f"brain_{m}.nii.gz", descrip)
    _save(case.seg["flair"], case.affine, folder / f"{case_id}_seg.nii.gz", descrip)
    motion = {"convention": MOTION_CONVENTION} | {m: case.motion[m].tolist() for m in SEQUENCES}
    (truth / "motion.json").write_text(json.dumps(motion, indent=1) + "\n")
    return folder


def write_head_cases(
    out: Path,
    cases: int = 1,
    seed: int = 0,
    start_index: int = 0,
    progress: Callable[[int, Path], None] | None = None,
    **kwargs: float,
) -> list[Path]:
    """Generate and write head cases ``start_index`` .. ``start_index + cases - 1`` of run ``seed``.

    Case ``k`` is ``generate_head_case(case_seed(seed, k), **kwargs)`` written as ``case_id(k)``;
    ``progress(k, folder)`` is called after each. Returns the case folders in order.
    """
    return write_cases(
        out,
        cases,
        seed,
        start_index,
        progress,
        write=lambda s, folder, name: write_head_case(generate_head_case(s, **kwargs), folder, name),
    )
