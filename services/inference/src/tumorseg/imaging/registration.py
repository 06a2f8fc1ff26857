"""Rigid co-registration of a study's series to its reference series (6 degrees of freedom).

Patients move between series: a few millimetres and degrees over a 30-minute examination. The series of one
study share a frame of reference, so the scanner's geometry is the starting point (identity), and a rigid
transform found by maximising Mattes mutual information (multi-modal: FLAIR against T1 against T2) corrects
the motion. The work is done at low resolution (about 2 mm, then 4 mm → 2 mm pyramid) inside the head of the
reference series, so it costs a fraction of the network's inference.

Capture range: any motion up to ``MAX_ROTATION_DEG`` and ``MAX_TRANSLATION_MM`` between two series. The
optimisation starts on a coarse level (about ``COARSE_MM``) from several starts, the scanner's geometry
always one of them and the head masks' centres of mass another; the start with the best metric is refined
on the 4 → 2 mm pyramid, as is any other coarse solution that ended elsewhere. When the solution's overlap
(below) is under ``SURE_OVERLAP``, starts turned about each axis are tried too; the best by metric wins.

Contract: ``register`` returns a ``Registration`` whose ``transform`` maps a point of the reference series'
physical space (LPS, mm) to the same anatomy in the moving series' physical space — the ITK "fixed → moving"
convention that ``sitk.Resample`` expects, so each series is resampled onto the model grid in one pass with
its transform composed in (``grid.resample_to_array(..., transform=...)``). A solution that moves no point
of the head by more than ``SNAP_MM`` is taken as identity (``applied`` False): pre-registered input (BraTS)
keeps its exact copy paths.

Little to find, little cost: a series on the reference's own lattice whose non-zero voxels are the
reference's (to within ``SAME_SUPPORT``; both at least a quarter exact zeros) was registered and masked
with it already (BraTS-style preprocessing: one brain mask applied to every co-registered series). It is
taken as aligned without a search (``iterations`` 0; metric and quality at identity, judged as any other),
the result a search would snap to identity anyway. A series masked on its own after moving, or on another
lattice, is searched as before.

Knowing when it failed: the Mattes MI of a good solution depends on the modality pair, so the judgement is
the head masks' overlap (Dice) after the transform within the fields of view both series cover, and how
much of the reference's cranium the series covers (``MIN_OVERLAP``, ``MIN_COVERAGE``, measured on the
clinical-head phantoms: see the README). A registration below either, beyond the accepted range (rotation
over ``MAX_ROTATION_DEG``, translation over ``MAX_TRANSLATION_MM``), whose metric did not improve, or of a
series without a head, is ``failed``: its series must not be used (``preprocess.prepare`` leaves it out;
the pipeline treats it as missing under the model package's input policy), and ``warning`` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

log = logging.getLogger(__name__)

LOW_RES_MM = 2.0  # the finest level of the pyramid
SNAP_MM = 1.0  # below this displacement anywhere in the head, the series is already in register
MAX_ROTATION_DEG = 15.0
MAX_TRANSLATION_MM = 30.0
# A motion at the edge of the accepted range is found to within this (degrees, mm); beyond it, refused
_RANGE_TOLERANCE = (0.5, 1.0)
_SAMPLES = 20_000  # metric samples per evaluation (random, fixed seed: reproducible)
_FINE_ITERATIONS = 120
_SEED = 20211
_BINS = 32
HUBS = ("t1ce", "t1")  # see StudyRegistration
# Registrations run side by side: one alone keeps about 1.5 of 2 cores busy (ITK's threads wait for each
# other between iterations)
REGISTRATION_WORKERS = 2
PYRAMID_SHRINK = (2, 1)  # of the LOW_RES_MM image
PYRAMID_SMOOTH_MM = (2.0, 0.0)
COARSE_MM = 8.0  # the multi-start level
QUALITY_MM = 4.0  # the head masks the quality is measured on
_COARSE_SAMPLES = 2_000
# A centre-of-mass start closer than this to the scanner's geometry converges with it (a coarse voxel)
_MOMENTS_MIN_MM = 4.0
# Turns tried from the best start when the overlap of its solution is below SURE_OVERLAP
_TURNS_DEG = 10.0
SURE_OVERLAP = 0.975
# Two coarse solutions further apart than this (anywhere in the head's box) are both refined
_COARSE_APART_MM = 4.0
# Thresholds of the quality measure (see the README, registration): on the clinical-head phantoms every
# correct registration overlapped by 0.98 or more and covered 0.98 or more of the reference's cranium; false
# optima 9 mm or more off overlapped by 0.94 or less
MIN_OVERLAP = 0.95
MIN_COVERAGE = 0.5
# The coverage is that of the reference head's top CRANIUM_MM (along S): the brain, not the face and neck
# that a slab over the brain leaves out (an adult brain is 120-140 mm from vertex to foramen magnum)
CRANIUM_MM = 150.0
NO_REFERENCE_HEAD = "the reference shows no head"  # in the warning of every registration to such a reference
# Two series whose non-zero voxels differ by at most this share of the reference's were masked together (see
# the module docstring): a separately masked brain moved by half a voxel changes a few percent of them
SAME_SUPPORT = 0.001
STRIPPED_ZEROS = 0.25  # a series with a support to compare is at least this share exact zeros


@dataclass(frozen=True)
class Registration:
    """The rigid transform of one series to the reference, and how it was judged (see module docstring)."""

    transform: sitk.Euler3DTransform  # reference physical (LPS mm) → series physical (LPS mm)
    found: sitk.Euler3DTransform  # what the optimiser found, applied or not
    metric_initial: float  # Mattes MI (negative; lower is better) in the scanner's geometry
    metric: float  # at the solution
    iterations: int
    max_displacement_mm: float  # of the solution, over the reference head's bounding box
    applied: bool
    warning: str | None = None
    via: str | None = None  # the hub series when composed (see ``StudyRegistration``)
    overlap: float = 1.0  # head masks' Dice within the common field of view, at the solution
    coverage: float = 1.0  # share of the reference's head inside the series' field of view
    failed: bool = False  # the series must not be used (see module docstring); ``warning`` says why
    moving: MovingHead | None = field(default=None, repr=False, compare=False)  # to judge a composition

    @property
    def rotation_deg(self) -> float:
        """The solution's rotation angle (degrees, about the axis it turns around)."""
        matrix = np.asarray(self.found.GetMatrix()).reshape(3, 3)
        return float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1) / 2, -1.0, 1.0))))

    @property
    def translation_mm(self) -> float:
        """How far the solution moves the centre of the reference head (mm)."""
        return float(np.linalg.norm(self.found.GetTranslation()))

    def to_json(self) -> dict[str, Any]:
        return {
            "matrix": [[round(float(v), 6) for v in row] for row in matrix_4x4(self.transform)],
            "rotation_deg": round(self.rotation_deg, 3),
            "translation_mm": round(self.translation_mm, 3),
            "angles_deg": [round(float(np.degrees(a)), 3) for a in self.found.GetParameters()[:3]],
            "offset_mm": [round(float(v), 3) for v in self.found.GetTranslation()],
            "metric": round(self.metric, 5),
            "metric_initial": round(self.metric_initial, 5),
            "iterations": self.iterations,
            "applied": self.applied,
            "via": self.via,
            "overlap": round(self.overlap, 4),
            "coverage": round(self.coverage, 4),
            "failed": self.failed,
        }


@dataclass(frozen=True)
class Fixed:
    """The reference series prepared once for all registrations: low resolution, the head as the region
    where the metric is evaluated, and the coarse level and head mask of the multi-start and the quality."""

    image: sitk.Image  # float32, ~LOW_RES_MM
    mask: sitk.Image  # uint8 head mask on ``image``'s lattice
    centre: tuple[float, float, float]  # centroid of the head (LPS mm): the centre of rotation
    corners: NDArray[np.float64]  # (8, 3) corners of the head's bounding box (LPS mm)
    coarse: sitk.Image  # float32, ~COARSE_MM
    coarse_mask: sitk.Image  # uint8 head mask on ``coarse``'s lattice
    head: sitk.Image  # uint8 head mask at ~QUALITY_MM (``quick_head_mask``)
    head_centre: tuple[float, float, float] | None  # centroid of ``head`` (LPS mm); None: no head
    cranium: NDArray[np.bool_]  # ``head``'s voxels within CRANIUM_MM of its top: where the brain is
    reference: sitk.Image | None = None  # the reference at full resolution, for ``already_aligned``
    support: NDArray[np.bool_] | None = None  # its non-zero voxels when stripped-looking (``_support``)


@dataclass(frozen=True)
class MovingHead:
    """A moving series' head mask and field of view at ~QUALITY_MM (uint8 images on one lattice)."""

    mask: sitk.Image
    fov: sitk.Image  # 1 where the series has data (non-zero after binning), 0 elsewhere
    centre: tuple[float, float, float] | None  # centroid of ``mask`` (LPS mm); None: no head


def matrix_4x4(transform: sitk.Euler3DTransform) -> NDArray[np.float64]:
    """The rigid ``transform`` as a 4 x 4 matrix acting on (x, y, z, 1) in LPS mm, its centre folded in:
    p ↦ R (p - c) + c + t."""
    matrix = np.eye(4)
    rotation = np.asarray(transform.GetMatrix()).reshape(3, 3)
    centre, offset = np.asarray(transform.GetCenter()), np.asarray(transform.GetTranslation())
    matrix[:3, :3] = rotation
    matrix[:3, 3] = offset + centre - rotation @ centre
    return matrix


def low_resolution(image: sitk.Image, spacing_mm: float = LOW_RES_MM) -> sitk.Image:
    """``image`` as float32 with voxels about ``spacing_mm`` wide: each axis binned by the integer factor
    that comes closest (averaging, so no aliasing), the lattice's orientation kept."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    if image.GetPixelID() != sitk.sitkFloat32:  # decoded series are float32 already: no copy
        image = sitk.Cast(image, sitk.sitkFloat32)
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def head_mask(image: sitk.Image) -> sitk.Image:
    """The head (or, for a skull-stripped volume, the brain) on ``image``'s lattice: above an Otsu threshold
    of the non-zero voxels, the largest connected part, holes filled. uint8."""
    return _head_mask(image, closing_radius=2, log_threshold=False)


def quick_head_mask(image: sitk.Image) -> sitk.Image:
    """The head for the quality measure, on a coarse (~QUALITY_MM) image: as ``head_mask``, but Otsu's
    threshold of the logarithm (air against tissue in every contrast: the plain threshold cut a T2's head
    between bright fluid and the rest, 17 % smaller than its T1's) and a closing of one voxel."""
    return _head_mask(image, closing_radius=1, log_threshold=True)


def _head_mask(image: sitk.Image, closing_radius: int, log_threshold: bool) -> sitk.Image:
    array = sitk.GetArrayViewFromImage(image)
    values = array[array > 0]
    if values.size == 0:
        empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        empty.CopyInformation(image)
        return empty
    threshold = float(np.exp(_otsu(np.log(values)))) if log_threshold else _otsu(values)
    mask = sitk.BinaryThreshold(image, lowerThreshold=threshold, upperThreshold=float("inf"))
    zero_background = bool(np.count_nonzero(array == 0) > array.size // 4)
    if log_threshold:  # and not an oblique slab's empty corners, where air noise fills the faces
        zero_background = zero_background and _faces_empty(array)
    if zero_background:  # stripped or masked: use it all
        mask = sitk.BinaryThreshold(image, lowerThreshold=1e-6, upperThreshold=float("inf"))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    largest = components == 1
    closed = closing(largest, closing_radius)
    return sitk.Cast(sitk.BinaryFillhole(closed), sitk.sitkUInt8)


def closing(mask: sitk.Image, radius: int) -> sitk.Image:
    """``sitk.BinaryMorphologicalClosing`` of a uint8 0/1 ``mask`` with a ball of ``radius`` (safe border),
    computed on the box around its foreground (grown by radius + 1) and put back on the whole lattice: the
    same voxels, since the closing of a set by a ball lies inside the set's bounding box and the filter
    pads the box's border as it pads the image's (test_closing). ITK's closing runs on one thread: 95 →
    63 ms on a BraTS-like series at 2 mm, 0-20 % less on heads that fill their field of view."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    if not stats.HasLabel(1):
        return sitk.BinaryMorphologicalClosing(mask, [radius] * 3)
    box = stats.GetBoundingBox(1)
    size = mask.GetSize()
    margin = radius + 1
    low = [max(0, box[a] - margin) for a in range(3)]
    high = [min(size[a], box[a] + box[a + 3] + margin) for a in range(3)]
    part = sitk.RegionOfInterest(mask, [h - lo for lo, h in zip(low, high, strict=True)], low)
    closed = sitk.BinaryMorphologicalClosing(part, [radius] * 3)
    whole = sitk.Image(size, closed.GetPixelID())
    whole.CopyInformation(mask)
    return sitk.Paste(whole, closed, closed.GetSize(), [0, 0, 0], low)


def _faces_empty(array: NDArray[Any]) -> bool:
    """Whether (almost) every voxel on the six faces of ``array`` is zero: a skull-stripped volume."""
    faces = [array[0], array[-1], array[:, 0], array[:, -1], array[:, :, 0], array[:, :, -1]]
    nonzero = sum(int(np.count_nonzero(f)) for f in faces)
    return nonzero < 0.01 * sum(f.size for f in faces)


def _otsu(values: NDArray[np.floating[Any]]) -> float:
    """Otsu's threshold of ``values`` (a 256-bin histogram between the 1st and 99.5th percentiles)."""
    low, high = np.percentile(values, [1.0, 99.5])
    if high <= low:
        return float(low)
    counts, edges = np.histogram(np.clip(values, low, high), bins=256, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * centres)
    total, total_mean = weight[-1], mean[-1]
    between = (total_mean * weight - mean * total) ** 2 / np.maximum(weight * (total - weight), 1e-12)
    return float(centres[int(np.argmax(between[:-1]))])


def _centroid(mask: sitk.Image) -> tuple[float, float, float] | None:
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    if not stats.HasLabel(1):
        return None
    c = stats.GetCentroid(1)
    return (float(c[0]), float(c[1]), float(c[2]))


def _binned_mask(mask: sitk.Image, factor: int) -> sitk.Image:
    """A uint8 mask binned by ``factor`` on each axis: 1 where at least half of the voxels were."""
    binned = sitk.BinShrink(sitk.Cast(mask, sitk.sitkFloat32), [factor] * 3)
    return sitk.Cast(sitk.BinaryThreshold(binned, lowerThreshold=0.5, upperThreshold=2.0), sitk.sitkUInt8)


def prepare_fixed(reference: sitk.Image) -> Fixed:
    image = low_resolution(reference)
    mask = head_mask(image)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    if not stats.HasLabel(1):
        centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
        box = [0, 0, 0, *image.GetSize()]
    else:
        centre = stats.GetCentroid(1)
        box = list(stats.GetBoundingBox(1))
    start, size = box[:3], box[3:]
    corners = np.asarray(
        [
            image.TransformIndexToPhysicalPoint([start[a] + (size[a] - 1) * c[a] for a in range(3)])
            for c in np.ndindex(2, 2, 2)
        ],
        dtype=np.float64,
    )
    coarse_factor = max(1, int(round(COARSE_MM / LOW_RES_MM)))
    coarse = sitk.BinShrink(image, [coarse_factor] * 3)
    coarse_mask = _binned_mask(mask, coarse_factor)
    head = quick_head_mask(low_resolution(image, QUALITY_MM))
    return Fixed(
        image,
        mask,
        (float(centre[0]), float(centre[1]), float(centre[2])),
        corners,
        coarse,
        coarse_mask,
        head,
        _centroid(head),
        _cranium(head),
        reference,
        _support(reference),
    )


def _support(image: sitk.Image) -> NDArray[np.bool_] | None:
    """The non-zero voxels of ``image`` (array order k, j, i) when at least ``STRIPPED_ZEROS`` of them are
    exact zeros (skull-stripped or masked), else None (a head in noise has nothing to compare)."""
    support = sitk.GetArrayViewFromImage(image) != 0
    zeros = support.size - int(np.count_nonzero(support))
    return support if zeros >= STRIPPED_ZEROS * support.size else None


def _same_lattice(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0.0, atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0.0, atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0.0, atol=1e-5)
    )


def already_aligned(fixed: Fixed, moving: sitk.Image) -> bool:
    """Whether ``moving`` was registered and masked with the reference already (see module docstring)."""
    if fixed.support is None or fixed.reference is None or not _same_lattice(fixed.reference, moving):
        return False
    support = _support(moving)
    if support is None:
        return False
    differ = int(np.count_nonzero(support ^ fixed.support))
    return differ <= SAME_SUPPORT * max(1, int(np.count_nonzero(fixed.support)))


def _cranium(head: sitk.Image) -> NDArray[np.bool_]:
    """The voxels of ``head`` (array order k, j, i) at most ``CRANIUM_MM`` below its highest one (LPS z)."""
    mask = sitk.GetArrayViewFromImage(head) > 0
    if not mask.any():
        return mask.copy()
    direction = np.asarray(head.GetDirection()).reshape(3, 3)
    steps = direction[2] * np.asarray(head.GetSpacing())  # z change per index step along i, j, k
    k, j, i = np.ogrid[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    z = head.GetOrigin()[2] + steps[0] * i + steps[1] * j + steps[2] * k
    return np.asarray(mask & (z >= float(z[mask].max()) - CRANIUM_MM))


def prepare_moving(moving_low: sitk.Image) -> MovingHead:
    """The head mask and field of view of a moving series (``moving_low``: its ``low_resolution``)."""
    image = low_resolution(moving_low, QUALITY_MM)
    mask = quick_head_mask(image)
    fov = sitk.Cast(
        sitk.BinaryThreshold(image, lowerThreshold=1e-6, upperThreshold=float("inf")), sitk.sitkUInt8
    )
    return MovingHead(mask, fov, _centroid(mask))


def _apart(a: sitk.Transform, b: sitk.Transform, corners: NDArray[np.float64]) -> float:
    """The largest distance between where ``a`` and ``b`` put a point of the box spanned by ``corners``."""
    moved = [np.asarray([t.TransformPoint(p.tolist()) for p in corners]) for t in (a, b)]
    return float(np.linalg.norm(moved[0] - moved[1], axis=1).max())


def _max_displacement(transform: sitk.Transform, corners: NDArray[np.float64]) -> float:
    """The largest distance a rigid ``transform`` moves a point of the box spanned by ``corners`` (a rigid
    motion moves the points of a box the most at its corners)."""
    moved = np.asarray([transform.TransformPoint(p.tolist()) for p in corners])
    return float(np.linalg.norm(moved - corners, axis=1).max())


def quality(fixed: Fixed, moving: MovingHead, transform: sitk.Transform) -> tuple[float, float]:
    """(overlap, coverage) of ``transform`` (reference → series): the Dice of the two head masks within the
    voxels of the reference's head lattice that the series covers, and the share of the reference's
    cranium (``Fixed.cranium``) that it covers. (0, 0) when either has no head."""
    reference = sitk.GetArrayViewFromImage(fixed.head) > 0
    warped = sitk.Resample(moving.mask, fixed.head, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    inside = sitk.Resample(moving.fov, fixed.head, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    seen = sitk.GetArrayViewFromImage(inside) > 0
    head = sitk.GetArrayViewFromImage(warped) > 0
    cranium = int(np.count_nonzero(fixed.cranium))
    covered = int(np.count_nonzero(reference & seen))
    shown = int(np.count_nonzero(head & seen))
    if cranium == 0 or covered + shown == 0:
        return 0.0, 0.0
    overlap = 2.0 * int(np.count_nonzero(reference & head & seen)) / (covered + shown)
    return overlap, int(np.count_nonzero(fixed.cranium & seen)) / cranium


def _method(mask: sitk.Image, samples: int, threads: int | None) -> sitk.ImageRegistrationMethod:
    """Mattes MI inside ``mask`` (the fixed head) with fixed random samples, linear interpolation."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_BINS)
    mask_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(min(1.0, samples / max(mask_voxels, 1)), _SEED)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    # Gradients by finite differences at the samples only, not a gradient filter over the whole image
    # (which costs more than the optimisation itself at this size).
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    if threads is not None:
        method.SetNumberOfThreads(threads)
    return method


def _coarse(
    fixed: Fixed, moving_coarse: sitk.Image, start: sitk.Euler3DTransform, threads: int | None
) -> tuple[float, sitk.Euler3DTransform]:
    """One start optimised on the coarse level: (metric, transform). Every start is evaluated on the same
    samples, so the metrics compare."""
    method = _method(fixed.coarse_mask, _COARSE_SAMPLES, threads)
    # Steps of at most 2 mm anywhere, the rate estimated again at each iteration: a regular-step descent
    # from a translated start stopped with a third of a 10 degree turn done
    method.SetOptimizerAsGradientDescent(
        learningRate=1.0,
        numberOfIterations=60,
        convergenceMinimumValue=1e-6,
        convergenceWindowSize=10,
        estimateLearningRate=method.EachIteration,
        maximumStepSizeInPhysicalUnits=2.0,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(start, inPlace=False)
    solution = method.Execute(fixed.coarse, moving_coarse)
    found = sitk.Euler3DTransform(sitk.CompositeTransform(solution).GetNthTransform(0))
    return float(method.GetMetricValue()), found


def _starts(fixed: Fixed, moving: MovingHead) -> list[sitk.Euler3DTransform]:
    """The scanner's geometry, and the head masks' centres of mass brought together when they differ."""
    identity = sitk.Euler3DTransform()
    identity.SetCenter(fixed.centre)
    starts = [identity]
    if fixed.head_centre is not None and moving.centre is not None:
        shift = np.subtract(moving.centre, fixed.head_centre)
        if _MOMENTS_MIN_MM < np.linalg.norm(shift) <= 2 * MAX_TRANSLATION_MM:
            moments = sitk.Euler3DTransform(identity)
            moments.SetTranslation(shift.tolist())
            starts.append(moments)
    return starts


def _turns(best: sitk.Euler3DTransform) -> list[sitk.Euler3DTransform]:
    """``best`` turned by ±``_TURNS_DEG`` about each axis: the starts of an ambiguous case."""
    turned = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            start = sitk.Euler3DTransform(best)
            angles = list(best.GetParameters()[:3])
            angles[axis] += sign * np.radians(_TURNS_DEG)
            start.SetRotation(*angles)
            turned.append(start)
    return turned


def _coarse_level(moving_low: sitk.Image) -> sitk.Image:
    return sitk.BinShrink(moving_low, [max(1, int(round(COARSE_MM / LOW_RES_MM)))] * 3)


def _coarse_results(
    fixed: Fixed, moving_coarse: sitk.Image, starts: list[sitk.Euler3DTransform], threads: int | None
) -> list[tuple[float, sitk.Euler3DTransform]]:
    """The coarse multi-start: each start optimised on the coarse level, best (lowest metric) first."""
    return sorted((_coarse(fixed, moving_coarse, start, threads) for start in starts), key=lambda r: r[0])


def _fine_method(fixed: Fixed, threads: int | None) -> sitk.ImageRegistrationMethod:
    method = _method(fixed.mask, _SAMPLES, threads)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=0.01,
        numberOfIterations=_FINE_ITERATIONS,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(PYRAMID_SHRINK))
    method.SetSmoothingSigmasPerLevel(list(PYRAMID_SMOOTH_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _refine(
    fixed: Fixed, moving_low: sitk.Image, start: sitk.Euler3DTransform, threads: int | None
) -> tuple[float, sitk.Euler3DTransform, int]:
    """``start`` optimised on the 4 → 2 mm pyramid: (metric on the finest level, transform, iterations of
    that level); once more from where it stopped when the finest level ran out of iterations (still moving:
    a start 5 degrees off stopped half way, metric -0.30 where the solution has -0.63)."""
    total = 0
    for _ in range(2):
        method = _fine_method(fixed, threads)
        method.SetInitialTransform(start, inPlace=False)
        solution = method.Execute(fixed.image, moving_low)
        start = sitk.Euler3DTransform(sitk.CompositeTransform(solution).GetNthTransform(0))
        iterations = int(method.GetOptimizerIteration())
        total += iterations
        if iterations < _FINE_ITERATIONS - 1:  # the count of the last iteration, from 0
            break
    # The metric at the optimiser's last position, on the finest level with the samples of ``before``
    return float(method.GetMetricValue()), start, total


def register(
    fixed: Fixed, moving: sitk.Image, *, threads: int | None = None, label: str = ""
) -> Registration:
    """Rigid registration of ``moving`` (any lattice, LPS) to the prepared reference ``fixed``."""
    moving_low = low_resolution(moving)
    moving_head = prepare_moving(moving_low)
    identity = sitk.Euler3DTransform()
    identity.SetCenter(fixed.centre)
    if moving_head.centre is None or fixed.head_centre is None:
        what = "the series shows no head" if moving_head.centre is None else NO_REFERENCE_HEAD
        return _failed(fixed, 0.0, 0.0, 0, identity, label, [what], moving_head)
    if already_aligned(fixed, moving):
        return _aligned(fixed, moving_low, moving_head, threads, label)
    try:
        method = _fine_method(fixed, threads)
        method.SetInitialTransform(identity, inPlace=False)
        before = float(method.MetricEvaluate(fixed.image, moving_low))
        moving_coarse = _coarse_level(moving_low)
        coarse = _coarse_results(fixed, moving_coarse, _starts(fixed, moving_head), threads)
        best = coarse[0][1]
        # The coarse metric can barely tell apart solutions a few degrees apart (a 4 mm FLAIR against a
        # T1ce at 8 mm): a coarse solution that ends elsewhere is refined too, the best by metric kept
        candidates = [c for _, c in coarse[1:] if _apart(best, c, fixed.corners) > _COARSE_APART_MM]
        after, found, iterations = _refine(fixed, moving_low, best, threads)
        if quality(fixed, moving_head, found)[0] < SURE_OVERLAP:
            # Ambiguous (a 15 degree nod ended 11 degrees short, overlap 0.94): turned starts too
            turned = _coarse_results(fixed, moving_coarse, _turns(best), threads)[0][1]
            candidates = [c for _, c in coarse[1:]] + [turned]
        for candidate in candidates:
            other, other_found, more = _refine(fixed, moving_low, candidate, threads)
            iterations += more
            if other < after:
                after, found = other, other_found
    except RuntimeError as exc:  # e.g. no overlap: too few samples inside the moving image
        log.warning("registration of %s failed: %s", label, exc)
        reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "no overlap"
        return _failed(fixed, 0.0, 0.0, 0, identity, label, [reason], moving_head)
    if after >= before:
        # The scanner's geometry is itself a start: when no solution beats it by the metric it is the best
        # one (aligned input whose search wandered off, as small BraTS-like crops do at the coarse level),
        # kept as identity and judged by the same overlap and coverage as any solution
        found, after = sitk.Euler3DTransform(identity), before
    overlap, coverage = quality(fixed, moving_head, found)
    registration = Registration(
        found,
        found,
        before,
        after,
        iterations,
        _max_displacement(found, fixed.corners),
        True,
        overlap=overlap,
        coverage=coverage,
        moving=moving_head,
    )
    return _judged(fixed, registration, label)


def _aligned(
    fixed: Fixed, moving_low: sitk.Image, moving_head: MovingHead, threads: int | None, label: str
) -> Registration:
    """The registration of a series ``already_aligned``: identity, no search, judged as any other."""
    identity = sitk.Euler3DTransform()
    identity.SetCenter(fixed.centre)
    method = _fine_method(fixed, threads)
    method.SetInitialTransform(identity, inPlace=False)
    metric = float(method.MetricEvaluate(fixed.image, moving_low))
    overlap, coverage = quality(fixed, moving_head, identity)
    registration = Registration(
        identity,
        identity,
        metric,
        metric,
        0,
        0.0,
        False,
        overlap=overlap,
        coverage=coverage,
        moving=moving_head,
    )
    return _judged(fixed, registration, label)


def _judged(fixed: Fixed, registration: Registration, label: str) -> Registration:
    """``registration`` as found, snapped to identity below ``SNAP_MM``, or failed (see module docstring)."""
    what = _implausible_parts(registration)
    if what:
        warning = _warning(label, what)
        log.warning(warning)
        return replace(_identity(fixed, registration), warning=warning, failed=True)
    if registration.max_displacement_mm < SNAP_MM:
        return _identity(fixed, registration)
    return registration


def _identity(fixed: Fixed, registration: Registration) -> Registration:
    """``registration`` not applied: identity about the head's centre, what was found kept."""
    identity = sitk.Euler3DTransform()
    identity.SetCenter(fixed.centre)
    return replace(
        registration, transform=identity, found=sitk.Euler3DTransform(registration.found), applied=False
    )


def _failed(
    fixed: Fixed,
    before: float,
    after: float,
    iterations: int,
    found: sitk.Euler3DTransform,
    label: str,
    what: list[str],
    moving: MovingHead | None,
) -> Registration:
    warning = _warning(label, what)
    log.warning(warning)
    registration = Registration(
        found,
        found,
        before,
        after,
        iterations,
        _max_displacement(found, fixed.corners),
        False,
        warning,
        overlap=0.0,
        coverage=0.0,
        failed=True,
        moving=moving,
    )
    return _identity(fixed, registration)


def _warning(label: str, what: list[str]) -> str:
    return (
        f"registration of {label} to the reference failed ({'; '.join(what)}): the series is not used "
        "(treated as missing); check it for motion or a wrong field of view"
    )


def _implausible_parts(registration: Registration) -> list[str]:
    what = []
    if registration.rotation_deg > MAX_ROTATION_DEG + _RANGE_TOLERANCE[0]:
        what.append(f"rotation {registration.rotation_deg:.1f}° > {MAX_ROTATION_DEG:.0f}°")
    if registration.translation_mm > MAX_TRANSLATION_MM + _RANGE_TOLERANCE[1]:
        what.append(f"translation {registration.translation_mm:.1f} mm > {MAX_TRANSLATION_MM:.0f} mm")
    if registration.max_displacement_mm >= SNAP_MM and registration.metric >= registration.metric_initial:
        what.append(
            f"mutual information did not improve ({registration.metric_initial:.4f} → {registration.metric:.4f})"
        )
    if registration.coverage < MIN_COVERAGE:
        what.append(
            f"its field of view covers {registration.coverage:.0%} of the reference's cranium "
            f"(< {MIN_COVERAGE:.0%})"
        )
    elif registration.overlap < MIN_OVERLAP:
        what.append(
            f"head outlines overlap by {registration.overlap:.2f} within the common field of view "
            f"(< {MIN_OVERLAP:.2f})"
        )
    return what


def _implausible(registration: Registration, label: str) -> str | None:
    """The warning of a registration that must not be used, or None."""
    what = _implausible_parts(registration)
    return _warning(label, what) if what else None


class StudyRegistration:
    """Every volume of ``names`` but ``reference`` registered to it, each registration submitted to ``pool``
    as soon as the volumes it needs have arrived (``add``), so registration runs while later series are
    still being downloaded and decoded; ``get`` waits for one, ``all`` for every one (keyed by name).
    ``close`` (or leaving the ``with`` block) fails whatever still waits for a volume that never came.

    The post-contrast T1 (else the T1) is the hub, as in BraTS preprocessing: with another reference, the
    hub is registered to the reference and every other series to the hub, and the two transforms are
    composed. T1-weighted 3D series register reliably to every other contrast, while FLAIR and T2, whose
    CSF contrasts are opposite, can settle in a false optimum against each other (10 mm off on head phantom
    34, FLAIR reference). When the hub's own registration fails, every series goes straight to the
    reference. The series are registered to the hub while the hub is registered to the reference (each
    registration starts from the scanner's geometry with fixed samples, so running them together or in
    another order changes no result beyond the rounding of ITK's threaded sums).

    Tasks are submitted in the order they depend on each other and a task waits only for volumes (set by
    the caller's threads) and for tasks submitted before it, which a worker has then already started: no
    worker waits for a task that no worker will run."""

    def __init__(
        self, names: Iterable[str], reference: str, pool: Executor, *, threads: int | None = None
    ) -> None:
        names = list(names)
        if reference not in names:
            raise ValueError(f"the reference {reference!r} is not among {names}")
        self._reference, self._threads = reference, threads
        self._volumes: dict[str, Future[sitk.Image]] = {m: Future() for m in names}
        self._straight: dict[str, Registration] = {}
        hub = next((m for m in HUBS if m in names), None)
        self._hub = None if hub == reference else hub
        self._fixed = pool.submit(lambda: prepare_fixed(self._volumes[reference].result()))
        others = [m for m in names if m not in (reference, self._hub)]
        if self._hub is None:
            self._to_hub = None
            self._futures = {m: pool.submit(self._register, self._fixed, m) for m in others}
            return
        # The hub prepared before anything waits for the reference's preparation: with two workers both
        # preparations run side by side (0.3 s each for a BraTS-like series on 2 cores) instead of one
        # after the other behind a worker that waits.
        hub_fixed = pool.submit(lambda: prepare_fixed(self._volumes[str(self._hub)].result()))
        self._to_hub = pool.submit(self._register, self._fixed, self._hub)
        self._futures = {m: pool.submit(self._register, hub_fixed, m) for m in others}

    def __enter__(self) -> StudyRegistration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, name: str, image: sitk.Image) -> None:
        """``name``'s volume has arrived: the registrations that need it may start."""
        self._volumes[name].set_result(image)

    def close(self) -> None:
        """Every volume that has not arrived never will: the tasks waiting for one end (with an error)."""
        for name, volume in self._volumes.items():
            if not volume.done():
                volume.set_exception(RuntimeError(f"the {name} volume never arrived"))

    def _register(self, fixed: Future[Fixed], name: str) -> Registration:
        return register(fixed.result(), self._volumes[name].result(), threads=self._threads, label=name)

    def _to_reference(self, name: str) -> Registration:
        if name not in self._straight:
            self._straight[name] = self._register(self._fixed, name)
        return self._straight[name]

    def get(self, name: str) -> Registration:
        """The registration of ``name`` (any volume but the reference), once it is done."""
        if self._to_hub is None or self._hub is None:
            return self._futures[name].result()
        to_hub = self._to_hub.result()
        if name == self._hub:
            return to_hub
        via_hub = self._futures[name].result()
        if to_hub.failed or via_hub.failed:
            # A series the hub cannot take, or every series when the hub is not in register, goes straight
            # to the reference (never moved by the hub's motion).
            return self._to_reference(name)
        composed = _compose(self._fixed.result(), to_hub, via_hub, self._hub, name)
        # Judged against the reference itself: the composition failing means the straight way is tried.
        return self._to_reference(name) if composed.failed else composed

    def all(self) -> dict[str, Registration]:
        return {name: self.get(name) for name in self._volumes if name != self._reference}


def register_study(
    volumes: Mapping[str, sitk.Image], reference: str, *, threads: int | None = None
) -> dict[str, Registration]:
    """Every volume but ``reference`` registered to it, keyed like ``volumes`` (``StudyRegistration``)."""
    with (
        ThreadPoolExecutor(max_workers=REGISTRATION_WORKERS) as pool,
        StudyRegistration(volumes, reference, pool, threads=threads) as study,
    ):
        for name, image in volumes.items():
            study.add(name, image)
        return study.all()


def _compose(fixed: Fixed, first: Registration, second: Registration, via: str, label: str) -> Registration:
    """``first`` (reference → hub) then ``second`` (hub → series) as one reference → series registration,
    judged against the reference (overlap and coverage of the series' head, the range of the whole); the
    metric is ``second``'s (series against the hub)."""
    found = _chain(first.found, second.found, fixed.centre)
    transform = _chain(first.transform, second.transform, fixed.centre)
    applied = first.applied or second.applied
    if not applied:
        transform = sitk.Euler3DTransform()
        transform.SetCenter(fixed.centre)
    overlap, coverage = (0.0, 0.0) if second.moving is None else quality(fixed, second.moving, found)
    composed = Registration(
        transform,
        found,
        second.metric_initial,
        second.metric,
        first.iterations + second.iterations,
        _max_displacement(found, fixed.corners),
        applied,
        None,
        via,
        overlap,
        coverage,
        moving=second.moving,
    )
    what = _implausible_parts(composed)
    if not what:
        return composed
    warning = _warning(label, what)
    return replace(_identity(fixed, composed), warning=warning, failed=True)


def _chain(
    a: sitk.Euler3DTransform, b: sitk.Euler3DTransform, centre: tuple[float, float, float]
) -> sitk.Euler3DTransform:
    """The rigid transform p ↦ b(a(p)), centred at ``centre``."""
    matrices = []
    for t in (a, b):
        m = np.eye(4)
        m[:3, :3] = np.asarray(t.GetMatrix()).reshape(3, 3)
        c, offset = np.asarray(t.GetCenter()), np.asarray(t.GetTranslation())
        m[:3, 3] = offset + c - m[:3, :3] @ c
        matrices.append(m)
    both = matrices[1] @ matrices[0]
    chained = sitk.Euler3DTransform()
    chained.SetCenter(centre)
    chained.SetMatrix(both[:3, :3].ravel().tolist())
    c = np.asarray(centre)
    chained.SetTranslation((both[:3, 3] + both[:3, :3] @ c - c).tolist())
    return chained
