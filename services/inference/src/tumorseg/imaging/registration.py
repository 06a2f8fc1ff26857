"""Rigid co-registration of a study's series to its reference series (6 degrees of freedom).

Patients move between series: a few millimetres and degrees over a 30-minute examination. The series of one
study share a frame of reference, so the scanner's geometry is the starting point (identity), and a rigid
transform found by maximising Mattes mutual information (multi-modal: FLAIR against T1 against T2) corrects
the motion. The work is done at low resolution (about 2 mm, then 4 mm → 2 mm pyramid) inside the head of the
reference series, so it costs a fraction of the network's inference.

Contract: ``register`` returns a ``Registration`` whose ``transform`` maps a point of the reference series'
physical space (LPS, mm) to the same anatomy in the moving series' physical space — the ITK "fixed → moving"
convention that ``sitk.Resample`` expects, so each series is resampled onto the model grid in one pass with
its transform composed in (``grid.resample_to_array(..., transform=...)``). A solution that moves no point
of the head by more than ``SNAP_MM`` is taken as identity (``applied`` False): pre-registered input (BraTS)
keeps its exact copy paths. An implausible solution (rotation over ``MAX_ROTATION_DEG``, translation over
``MAX_TRANSLATION_MM``, or a metric that did not improve) is not applied either, and ``warning`` says why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

log = logging.getLogger(__name__)

LOW_RES_MM = 2.0  # the finest level of the pyramid
SNAP_MM = 1.0  # below this displacement anywhere in the head, the series is already in register
MAX_ROTATION_DEG = 15.0
MAX_TRANSLATION_MM = 30.0
_SAMPLES = 20_000  # metric samples per evaluation (random, fixed seed: reproducible)
_SEED = 20211
_BINS = 32
HUBS = ("t1ce", "t1")  # see StudyRegistration
# Registrations run side by side: one alone keeps about 1.5 of 2 cores busy (ITK's threads wait for each
# other between iterations)
REGISTRATION_WORKERS = 2
PYRAMID_SHRINK = (2, 1)  # of the LOW_RES_MM image
PYRAMID_SMOOTH_MM = (2.0, 0.0)


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
            "rotation_deg": round(self.rotation_deg, 3),
            "translation_mm": round(self.translation_mm, 3),
            "angles_deg": [round(float(np.degrees(a)), 3) for a in self.found.GetParameters()[:3]],
            "offset_mm": [round(float(v), 3) for v in self.found.GetTranslation()],
            "metric": round(self.metric, 5),
            "metric_initial": round(self.metric_initial, 5),
            "iterations": self.iterations,
            "applied": self.applied,
            "via": self.via,
        }


@dataclass(frozen=True)
class Fixed:
    """The reference series prepared once for all registrations: low resolution, and the head as the
    region where the metric is evaluated."""

    image: sitk.Image  # float32, ~LOW_RES_MM
    mask: sitk.Image  # uint8 head mask on ``image``'s lattice
    centre: tuple[float, float, float]  # centroid of the head (LPS mm): the centre of rotation
    corners: NDArray[np.float64]  # (8, 3) corners of the head's bounding box (LPS mm)


def low_resolution(image: sitk.Image, spacing_mm: float = LOW_RES_MM) -> sitk.Image:
    """``image`` as float32 with voxels about ``spacing_mm`` wide: each axis binned by the integer factor
    that comes closest (averaging, so no aliasing), the lattice's orientation kept."""
    factors = [max(1, int(round(spacing_mm / s))) for s in image.GetSpacing()]
    image = sitk.Cast(image, sitk.sitkFloat32)
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def head_mask(image: sitk.Image) -> sitk.Image:
    """The head (or, for a skull-stripped volume, the brain) on ``image``'s lattice: above an Otsu threshold
    of the non-zero voxels, the largest connected part, holes filled. uint8."""
    array = sitk.GetArrayViewFromImage(image)
    values = array[array > 0]
    if values.size == 0:
        empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        empty.CopyInformation(image)
        return empty
    threshold = _otsu(values)
    mask = sitk.BinaryThreshold(image, lowerThreshold=threshold, upperThreshold=float("inf"))
    if np.count_nonzero(array == 0) > array.size // 4:  # zero background (stripped or masked): use it all
        mask = sitk.BinaryThreshold(image, lowerThreshold=1e-6, upperThreshold=float("inf"))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    largest = components == 1
    return sitk.Cast(sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(largest, [2, 2, 2])), sitk.sitkUInt8)


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
    return Fixed(image, mask, (float(centre[0]), float(centre[1]), float(centre[2])), corners)


def _max_displacement(transform: sitk.Transform, corners: NDArray[np.float64]) -> float:
    """The largest distance a rigid ``transform`` moves a point of the box spanned by ``corners`` (a rigid
    motion moves the points of a box the most at its corners)."""
    moved = np.asarray([transform.TransformPoint(p.tolist()) for p in corners])
    return float(np.linalg.norm(moved - corners, axis=1).max())


def register(
    fixed: Fixed, moving: sitk.Image, *, threads: int | None = None, label: str = ""
) -> Registration:
    """Rigid registration of ``moving`` (any lattice, LPS) to the prepared reference ``fixed``."""
    moving_low = low_resolution(moving)
    initial = sitk.Euler3DTransform()
    initial.SetCenter(fixed.centre)

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_BINS)
    mask_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(fixed.mask)))
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(min(1.0, _SAMPLES / max(mask_voxels, 1)), _SEED)
    method.SetMetricFixedMask(fixed.mask)
    method.SetInterpolator(sitk.sitkLinear)
    # Gradients by finite differences at the samples only, not a gradient filter over the whole image
    # (which costs more than the optimisation itself at this size).
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=0.01,
        numberOfIterations=120,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(PYRAMID_SHRINK))
    method.SetSmoothingSigmasPerLevel(list(PYRAMID_SMOOTH_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    if threads is not None:
        method.SetNumberOfThreads(threads)
    try:
        before = float(method.MetricEvaluate(fixed.image, moving_low))
        solution = method.Execute(fixed.image, moving_low)
    except RuntimeError as exc:  # e.g. no overlap, a blank series: too few samples inside the moving image
        log.warning("registration of %s failed: %s", label, exc)
        reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else "no overlap"
        failed = (
            f"registration of {label} to the reference failed ({reason}): the series was used as acquired"
        )
        return _identity(fixed, 0.0, 0.0, 0, initial, failed)
    found = sitk.Euler3DTransform(sitk.CompositeTransform(solution).GetNthTransform(0))
    # The metric at the optimiser's last position, on the finest level with the same samples as ``before``.
    after = float(method.GetMetricValue())
    iterations = int(method.GetOptimizerIteration())
    displacement = _max_displacement(found, fixed.corners)
    registration = Registration(found, found, before, after, iterations, displacement, True)
    warning = _implausible(registration, label)
    if warning is not None:
        log.warning(warning)
        return _identity(fixed, before, after, iterations, found, warning)
    if displacement < SNAP_MM:
        return _identity(fixed, before, after, iterations, found, None)
    return registration


def _identity(
    fixed: Fixed,
    before: float,
    after: float,
    iterations: int,
    found: sitk.Euler3DTransform,
    warning: str | None,
) -> Registration:
    identity = sitk.Euler3DTransform()
    identity.SetCenter(fixed.centre)
    return Registration(
        identity,
        sitk.Euler3DTransform(found),
        before,
        after,
        iterations,
        _max_displacement(found, fixed.corners),
        False,
        warning,
    )


def _implausible(registration: Registration, label: str) -> str | None:
    what = []
    if registration.rotation_deg > MAX_ROTATION_DEG:
        what.append(f"rotation {registration.rotation_deg:.1f}° > {MAX_ROTATION_DEG:.0f}°")
    if registration.translation_mm > MAX_TRANSLATION_MM:
        what.append(f"translation {registration.translation_mm:.1f} mm > {MAX_TRANSLATION_MM:.0f} mm")
    if registration.max_displacement_mm >= SNAP_MM and registration.metric >= registration.metric_initial:
        what.append(
            f"mutual information did not improve ({registration.metric_initial:.4f} → {registration.metric:.4f})"
        )
    if not what:
        return None
    return (
        f"registration of {label} to the reference looks implausible ({'; '.join(what)}): "
        "the series was used as acquired; check it for motion"
    )


class StudyRegistration:
    """Every volume of ``names`` but ``reference`` registered to it, each registration submitted to ``pool``
    as soon as the volumes it needs have arrived (``add``), so registration runs while later series are
    still being downloaded and decoded; ``get`` waits for one, ``all`` for every one (keyed by name).
    ``close`` (or leaving the ``with`` block) fails whatever still waits for a volume that never came.

    The post-contrast T1 (else the T1) is the hub, as in BraTS preprocessing: with another reference, the
    hub is registered to the reference and every other series to the hub, and the two transforms are
    composed. T1-weighted 3D series register reliably to every other contrast, while FLAIR and T2, whose
    CSF contrasts are opposite, can settle in a false optimum against each other (10 mm off on head phantom
    34, FLAIR reference). When the hub's own registration is implausible, every series goes straight to the
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
        self._to_hub = pool.submit(self._register, self._fixed, self._hub)
        hub_fixed = pool.submit(lambda: prepare_fixed(self._volumes[str(self._hub)].result()))
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
        if to_hub.warning is not None or via_hub.warning is not None:
            # A series the hub cannot take, or every series when the hub is not in register, goes straight
            # to the reference (never moved by the hub's motion).
            return self._to_reference(name)
        return _compose(self._fixed.result(), to_hub, via_hub, self._hub)

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


def _compose(fixed: Fixed, first: Registration, second: Registration, via: str) -> Registration:
    """``first`` (reference → hub) then ``second`` (hub → series) as one reference → series registration;
    the metric is ``second``'s (series against the hub)."""
    found = _chain(first.found, second.found, fixed.centre)
    transform = _chain(first.transform, second.transform, fixed.centre)
    applied = first.applied or second.applied
    if not applied:
        transform = sitk.Euler3DTransform()
        transform.SetCenter(fixed.centre)
    return Registration(
        transform,
        found,
        second.metric_initial,
        second.metric,
        first.iterations + second.iterations,
        _max_displacement(found, fixed.corners),
        applied,
        second.warning,
        via,
    )


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
