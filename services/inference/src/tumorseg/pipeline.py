"""One segmentation, stage by stage (``Segmenter.run``), each stage handing the next a typed value:

1. assemble the study (``fetch``): the PACS listing, the series mapping, a study no longer receiving
   instances → ``StudyPlan``;
2. fetch and load the series (``fetch``, ``load``), each co-registered to the reference as soon as it is
   decoded, while the next one downloads (``registration``: the wait left after loading) → ``LoadedStudy``;
3. preprocess onto the model grid (``preprocess``; the brain extraction and bias correction that run
   inside it are reported as ``brain_extraction`` and ``bias_correction``) → ``ModelInput``;
4. inference (``inference``) and postprocessing back onto the reference lattice (``postprocess``)
   → ``Segmentation``;
5. export (``export``): NIfTI mask and reference, preview PNG, the result JSON (``SegmentResult``),
   committed to the result store; on request a DICOM SEG and SR stored in the source study, then the
   result updated with them.

One ``StageTimer`` keeps the seconds of every stage, the overlapping ones included.

``Segmenter`` holds what lives across requests (PACS client, predictor, result store) and is the one
place that decides concurrency: one request at a time on the model, a bounded number of synchronous
requests waiting (``Busy`` beyond that), and the job runner's one job in a place of its own. It is used by the
API and by ``tumorseg segment`` alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, cast

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from tumorseg import __version__, metrics
from tumorseg.errors import (
    AmbiguousSeries,
    BrokenSeries,
    Busy,
    InvalidInput,
    ModalityMissing,
    ModelError,
    PacsNotFound,
    StudyIncomplete,
    TumorsegError,
)
from tumorseg.export.dicom_seg import (
    SEG_MANUFACTURER,
    algorithm_tag,
    build_segmentation,
    encode,
    next_series_number,
    read_headers,
)
from tumorseg.export.nifti import write_mask, write_reference
from tumorseg.export.preview import write_preview
from tumorseg.imaging.cache import SeriesCache
from tumorseg.imaging.postprocess import voxel_volume_mm3
from tumorseg.imaging.preprocess import ModelInput, prepare
from tumorseg.imaging.registration import (
    HUBS,
    NO_REFERENCE_HEAD,
    REGISTRATION_WORKERS,
    Registration,
    StudyRegistration,
)
from tumorseg.imaging.volume import SeriesVolume, check_overlap, load_series
from tumorseg.labels import LABEL_NAMES, volumes_ml
from tumorseg.limits import InputLimits
from tumorseg.model.package import ModelManifest
from tumorseg.model.predictor import Predictor
from tumorseg.pacs import Pacs
from tumorseg.records import SeriesInfo
from tumorseg.results import ResultStore, new_result_id
from tumorseg.schema import (
    BrainExtractionRef,
    DicomSegRef,
    MaskGeometry,
    ModelRef,
    ReferenceRef,
    SegmentResult,
    SeriesRef,
    SeriesRegistration,
    Timings,
    VolumesMl,
)
from tumorseg.schema import Registration as RegistrationReport
from tumorseg.sequences import SEQUENCES, InputPolicy, SequenceName
from tumorseg.study.assemble import AssembledStudy, assemble
from tumorseg.validation import check_patient_id, check_uid
from tumorseg.volumetry import store_report

log = logging.getLogger(__name__)

STABLE_POLL_S = 1.0
DECODE_WORKERS = 2  # series decoded side by side while the next one downloads
STABLE_RETRY_AFTER_S = 10

STAGES = (
    "fetch",
    "load",
    "registration",
    "brain_extraction",
    "bias_correction",
    "preprocess",
    "inference",
    "postprocess",
    "export",
)


@dataclass(frozen=True)
class SegmentRequest:
    patient_id: str
    study_instance_uid: str | None = None
    reference: str = "flair"
    explicit_series: Mapping[str, str] | None = None
    store_seg: bool = False
    registration: bool | None = None  # None: the Segmenter's setting (TUMORSEG_REGISTRATION)
    wait: bool = False  # a study Orthanc has not marked stable: wait for it (bounded) instead of 409

    def __post_init__(self) -> None:
        check_patient_id(self.patient_id)
        if self.study_instance_uid is not None:
            check_uid(self.study_instance_uid, "study")
        for modality, uid in (self.explicit_series or {}).items():
            check_uid(uid, f"the {modality} SeriesInstanceUID")
        if self.reference not in SEQUENCES:
            raise InvalidInput(f"reference must be one of {', '.join(SEQUENCES)}, not {self.reference!r}")


@dataclass
class StageTimer:
    """The seconds of each of ``STAGES`` in one segmentation, and its total: the one place they are kept.
    A stage may be timed in pieces, which add up. Where stages overlap, part of the time measured in one
    was spent on another (decoding the downloads did not hide, brain extraction inside preprocessing):
    ``shift`` moves it there. ``progress`` hears each stage's name as it starts (a job's ``stage``)."""

    progress: Callable[[str], None] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress is not None:
            self.progress(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 4)

    def shift(self, seconds: float, source: str, target: str) -> None:
        """``seconds`` measured in stage ``source`` that were spent on stage ``target``."""
        self.timings[source] = round(self.timings.get(source, 0.0) - seconds, 4)
        self.timings[target] = round(self.timings.get(target, 0.0) + seconds, 4)

    def report(self) -> Timings:
        """Every stage's seconds (0 for one that did not run) and the total since the timer started."""
        seconds = {name: self.timings.get(name, 0.0) for name in STAGES}
        return Timings(**seconds, total=round(time.perf_counter() - self.started, 4))


@dataclass(frozen=True)
class ResultLinks:
    """Where the API serves a result's files and viewer. The API builds them (``tumorseg.api.urls``, the
    one place that knows its routes) and gives the ``Segmenter`` the function; they are part of the result
    JSON that the API, the workers and ``tumorseg segment`` write alike."""

    mask_url: str
    preview_url: str
    reference_url: str
    viewer_url: str


@dataclass(frozen=True)
class StudyPlan:
    """The first stage's outcome: the study, its series mapping, and how this request runs."""

    request: SegmentRequest
    assembled: AssembledStudy
    store_seg: bool  # the request's, or TUMORSEG_STORE_SEG
    registration: bool  # the request's, else TUMORSEG_REGISTRATION

    @property
    def reference(self) -> str:
        return self.request.reference

    @property
    def present(self) -> tuple[str, ...]:
        """The sequences used: all four, unless the model does without one the study lacks."""
        return self.assembled.mapping.present


@dataclass(frozen=True)
class LoadedStudy:
    """The fetch, load and registration stages' outcome: the volumes used (not those whose registration
    failed, which are then missing), their registrations to the reference (None: registration off), the
    failed ones (reported in the result), and the downloaded files the SEG needs (the reference's)."""

    volumes: dict[str, SeriesVolume]
    registrations: dict[str, Registration] | None
    failed: dict[str, Registration]
    files: dict[str, list[bytes]]
    reference: SeriesVolume


@dataclass(frozen=True)
class Segmentation:
    """The inference and postprocessing stages' outcome."""

    mask: sitk.Image  # BraTS labels (uint8) on the reference series' lattice, LPS
    network: str  # the package's network that ran ("main" or "fallback")


def _series_label(modality: str, info: SeriesInfo) -> str:
    return f"{modality} '{info.series_description}' (SeriesInstanceUID {info.series_instance_uid})"


class _SeriesDecoder:
    """The volumes of a study's present series: from the series cache, else decoded from downloaded files
    (``decode``, in a pool's threads while the next series downloads) and put in the cache. Each volume is
    handed to ``study_registration`` the moment it is there."""

    def __init__(
        self,
        plan: StudyPlan,
        cache: SeriesCache,
        limits: InputLimits,
        study_registration: StudyRegistration | None,
    ) -> None:
        self.series = plan.assembled.mapping.series
        self.cache, self.limits, self.study_registration = cache, limits, study_registration
        # The SEG references every source instance: it needs the reference series' files for headers.
        self.keep_files = plan.reference if plan.store_seg else None
        self.volumes: dict[str, SeriesVolume] = {}
        for m in plan.present:
            if (volume := cache.get(self.series[m])) is not None:
                self._add(m, volume)
        first = (plan.reference, *HUBS)
        self.wanted = sorted(  # to download: the reference and the hub first
            (m for m in plan.present if m not in self.volumes or m == self.keep_files),
            key=lambda m: first.index(m) if m in first else len(first),
        )

    def _add(self, m: str, volume: SeriesVolume) -> None:
        self.volumes[m] = volume
        if self.study_registration is not None:
            self.study_registration.add(m, volume.image)

    def decode(self, m: str, data: list[bytes]) -> list[bytes]:
        """One downloaded series decoded and handed on; the files kept (the SEG's), else none."""
        if m not in self.volumes:
            with _library_errors("loading", BrokenSeries):
                volume = load_series(data, _series_label(m, self.series[m]), limits=self.limits)
            self.cache.put(self.series[m], volume)
            self._add(m, volume)
        return data if m == self.keep_files else []


@dataclass
class _Staging:
    """A result's private folder (``ResultStore.staging``) and the files a side thread writes into it."""

    folder: Path
    side: ThreadPoolExecutor
    pending: list[Future[object]] = field(default_factory=list)

    def write(self, writer: Callable[..., object], *args: object) -> None:
        """``writer(*args)`` in the side thread, after what was asked before."""
        self.pending.append(self.side.submit(writer, *args))

    def written(self) -> None:
        """Every file asked for written (its writer's error raised here)."""
        for future in self.pending:
            future.result()


class Segmenter:
    def __init__(
        self,
        pacs: Pacs,
        predictor: Predictor,
        store: ResultStore,
        *,
        links: Callable[[str], ResultLinks],
        max_waiting: int = 4,
        rules: Path | None = None,
        store_seg: bool = False,
        cache_bytes: int = 0,
        registration: bool = True,
        brain_extractor: str = "auto",
        limits: InputLimits | None = None,
        stable_wait_s: float = 120.0,
    ) -> None:
        self.pacs = pacs
        self.predictor = predictor
        self.store = store
        self.links = links  # a result id -> where the API serves its files (tumorseg.api.urls)
        self.rules = rules
        self.store_seg = store_seg  # TUMORSEG_STORE_SEG: a SEG for every request, asked for or not
        self.cache = SeriesCache(cache_bytes)
        self.registration = registration  # TUMORSEG_REGISTRATION, unless a request says otherwise
        self.brain_extractor = brain_extractor  # TUMORSEG_BRAIN_EXTRACTOR
        self.limits = limits or InputLimits()  # TUMORSEG_MAX_*: checked from headers before decoding
        self.stable_wait_s = stable_wait_s  # TUMORSEG_STABLE_WAIT_S: the bound of ?wait=true
        # Concurrency is decided here alone: ``max_waiting`` requests may wait, and one runs. A waiting
        # request holds nothing (no download, no decoded volume), so the memory in use is that of one
        # request, which ``limits.max_study_bytes`` bounds, plus the series cache.
        self._slots = threading.BoundedSemaphore(max_waiting + 1)
        self._running = threading.Lock()

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """A place in line for a synchronous request: ``Busy`` (503, Retry-After) when ``max_waiting``
        requests already wait. The job runner's one job needs none: it is already queued in the job store,
        and waits for the model in a place of its own."""
        if not self._slots.acquire(blocking=False):
            raise Busy("the inference queue is full; retry later", retry_after_s=30)
        try:
            yield
        finally:
            self._slots.release()

    def run(
        self,
        request: SegmentRequest,
        progress: Callable[[str], None] | None = None,
        result_id: str | None = None,
    ) -> SegmentResult:
        """Segment as ``request`` asks, once the model is free; the result gets ``result_id`` (a job's,
        given when it was created) or a new one. Callers that must not wait without bound take a place in
        line first (``admitted``)."""
        with self._running:
            timer = StageTimer(progress=progress)
            with metrics.segmentation(timer.timings):  # each stage's seconds, also of a run that failed
                return self._run(request, timer, result_id or new_result_id())

    def _run(self, request: SegmentRequest, timer: StageTimer, result_id: str) -> SegmentResult:
        """The stages in their order (the module docstring), each handing the next a typed value."""
        with timer.stage("fetch"):
            plan = self._plan(request)
        loaded = self._load(plan, timer)
        with self._staged(result_id) as staging:
            # The viewer's reference image needs nothing but the reference series: it is written while
            # the model input is made and the network runs (0.2 s of a BraTS-like study's export).
            staging.write(write_reference, loaded.reference.image, staging.folder / "reference.nii.gz")
            model_input = self._preprocess(plan, loaded, timer)
            segmented = self._segment(model_input, loaded.reference, timer)
            result = self._export(plan, loaded, model_input, segmented, timer, result_id, staging)
        if plan.store_seg:
            result = self._store_in_study(plan, loaded, segmented, result, timer)
        _log_timings(result)
        return result

    def _plan(self, request: SegmentRequest) -> StudyPlan:
        """The study, mapped and stable (``_assemble``), which must hold the reference the request names."""
        assembled = self._assemble(request)
        if request.reference not in assembled.mapping.series:
            raise InvalidInput(
                f"reference {request.reference} is not in the study (it has no usable "
                f"{request.reference} series); choose one of {', '.join(assembled.mapping.present)}"
            )
        registration = self.registration if request.registration is None else request.registration
        return StudyPlan(request, assembled, request.store_seg or self.store_seg, registration)

    def _assemble(self, request: SegmentRequest) -> AssembledStudy:
        """The study and its mapping, once no MR series of it is still receiving instances (Orthanc marks a
        series stable StableAge seconds after its last instance): such a study would be segmented on what
        has arrived, and one that cannot be mapped yet may only lack what has not arrived. Other series
        (a SEG just stored by this service, a report) do not hold it up. Without ``request.wait``:
        ``StudyIncomplete`` (409, Retry-After); with it, map again until ``stable_wait_s`` has passed."""
        deadline = time.monotonic() + (self.stable_wait_s if request.wait else 0.0)
        while True:
            error: Exception | None = None
            try:
                assembled = assemble(
                    self.pacs,
                    request.patient_id,
                    request.study_instance_uid,
                    request.explicit_series,
                    self.rules,
                    self.predictor.manifest.inputs,
                )
                mapping = assembled.mapping
                listed = [*mapping.series.values(), *(info for info, _ in mapping.rejected)]
                if assembled.study.is_stable or all(s.is_stable or s.modality != "MR" for s in listed):
                    return _used_by(assembled, self.predictor.manifest.inputs.named)
                arriving = assembled.study.study_instance_uid
            except (ModalityMissing, AmbiguousSeries) as exc:
                unstable = [
                    s.study_instance_uid
                    for s in self.pacs.find_studies(request.patient_id)
                    if not s.is_stable and request.study_instance_uid in (None, s.study_instance_uid)
                ]
                if not unstable:
                    raise
                error, arriving = exc, unstable[0]
            if time.monotonic() >= deadline:
                waited = f" after waiting {self.stable_wait_s:g} s" if request.wait else ""
                raise StudyIncomplete(
                    f"study {arriving} is still receiving instances{waited} (Orthanc has not marked it "
                    "stable); retry later, or ask with ?wait=true to wait for it",
                    retry_after_s=STABLE_RETRY_AFTER_S,
                ) from error
            time.sleep(STABLE_POLL_S)

    def _check_sizes(self, assembled: AssembledStudy, wanted: list[str]) -> None:
        """The limits the PACS listing can show (instances, matrix, in-plane extent, the study's decoded
        size), before anything is downloaded; the headers of every instance are checked again on load."""
        sizes = {}
        for m in wanted:
            info = assembled.mapping.series[m]
            label = _series_label(m, info)
            self.limits.check_frames(label, info.slice_count)
            if info.rows is not None and info.columns is not None:
                if info.pixel_spacing is not None:  # two numbers when the listing has them
                    row_spacing, column_spacing = info.pixel_spacing
                    self.limits.check_frame(label, info.rows, info.columns, (row_spacing, column_spacing))
                sizes[label] = (info.rows, info.columns, info.slice_count)
        self.limits.check_study(sizes)

    def _load(self, plan: StudyPlan, timer: StageTimer) -> LoadedStudy:
        """Fetch, load and co-register the series. Each series is registered as soon as it (and the series
        it is registered to) is decoded, while the others still download: the ``registration`` stage is the
        wait that is left after loading. A series whose registration failed is then missing under the
        package's input policy (or a 422)."""
        with (
            ThreadPoolExecutor(max_workers=REGISTRATION_WORKERS) as registering,
            (
                StudyRegistration(plan.present, plan.reference, registering)
                if plan.registration
                else nullcontext()
            ) as study_registration,
        ):
            volumes, files = self._fetch_and_load(plan, timer, study_registration)
            registrations = None
            if study_registration is not None:
                with timer.stage("registration"), _library_errors("registration", BrokenSeries):
                    registrations = study_registration.all()
        failed = _failed_registrations(registrations, self.predictor.manifest.inputs, list(volumes))
        volumes = {m: v for m, v in volumes.items() if m not in failed}
        if registrations is not None:
            registrations = {m: r for m, r in registrations.items() if m not in failed}
        return LoadedStudy(volumes, registrations, failed, files, volumes[plan.reference])

    def _fetch_and_load(
        self, plan: StudyPlan, timer: StageTimer, study_registration: StudyRegistration | None
    ) -> tuple[dict[str, SeriesVolume], dict[str, list[bytes]]]:
        """The present series as volumes (``_SeriesDecoder``) and the downloaded files the SEG needs (the
        reference series', when it is stored). Times ``fetch`` (until the last download ended) and ``load``
        (the decoding the downloads did not hide, and the overlap check)."""
        decoder = _SeriesDecoder(plan, self.cache, self.limits, study_registration)
        with timer.stage("fetch"):
            self._check_sizes(plan.assembled, [m for m in plan.present if m not in decoder.volumes])
            files, last_download = self._download_all(decoder)
        # ``load`` is the decoding the downloads did not hide: from the last download to the last volume.
        after_downloads = 0.0 if last_download is None else time.perf_counter() - last_download
        with timer.stage("load"), _library_errors("loading", BrokenSeries):
            volumes = {m: decoder.volumes[m] for m in plan.present}
            check_overlap(volumes, plan.reference)
        timer.shift(after_downloads, "fetch", "load")
        return volumes, files

    def _download_all(self, decoder: _SeriesDecoder) -> tuple[dict[str, list[bytes]], float | None]:
        """``decoder.wanted`` downloaded, each series decoded while the next one downloads: the files each
        decoding kept, and when the last download ended (None: nothing to download). One series at a time
        (one WADO-RS request through Orthanc's DICOMweb plugin, else all of the client's parallel instance
        downloads), so that the first (the reference) arrives after a quarter of the time and not with the
        others at the end."""
        last_download = None
        with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as decoding:
            pending: list[tuple[str, Future[list[bytes]]]] = []
            for m in decoder.wanted:
                for _, decoding_done in pending:  # a series that failed to decode ends the request now
                    if decoding_done.done() and decoding_done.exception() is not None:
                        decoding_done.result()
                data = self._download(m, decoder.series[m])
                last_download = time.perf_counter()
                pending.append((m, decoding.submit(decoder.decode, m, data)))
            return {m: future.result() for m, future in pending}, last_download

    def _preprocess(self, plan: StudyPlan, loaded: LoadedStudy, timer: StageTimer) -> ModelInput:
        """The model input on the model grid (``imaging.preprocess.prepare``), which also reports the series
        left out for a failed registration. Brain extraction and bias correction run inside ``prepare``
        and are timed as their own stages."""
        with timer.stage("preprocess"), _library_errors("preprocessing", BrokenSeries):
            model_input, _ = prepare(
                {m: v.image for m, v in loaded.volumes.items()},
                plan.reference,
                self.predictor.manifest.preprocessing_for(loaded.volumes),
                registration=plan.registration,
                brain_extractor=self.brain_extractor,
                registrations=loaded.registrations,
            )
        for stage, seconds in model_input.timings_s.items():
            timer.shift(seconds, "preprocess", stage)
        if not loaded.failed:
            return model_input
        return replace(  # the result shows their registrations and says why they were left out
            model_input,
            registrations={**model_input.registrations, **loaded.failed},
            warnings=(*(str(r.warning) for r in loaded.failed.values()), *model_input.warnings),
        )

    def _segment(self, model_input: ModelInput, reference: SeriesVolume, timer: StageTimer) -> Segmentation:
        """The network's probabilities (``inference``), made a label mask on the reference series' lattice
        (``postprocess``)."""
        with timer.stage("inference"), _library_errors("inference", ModelError):
            probabilities = self.predictor.predict(model_input)
        with timer.stage("postprocess"), _library_errors("postprocessing", BrokenSeries):
            mask = self.predictor.mask(
                probabilities, model_input.grid, reference.image, model_input.brain, model_input.rim_mm
            )
        return Segmentation(mask, self.predictor.network_for(model_input))

    def _export(
        self,
        plan: StudyPlan,
        loaded: LoadedStudy,
        model_input: ModelInput,
        segmented: Segmentation,
        timer: StageTimer,
        result_id: str,
        staging: _Staging,
    ) -> SegmentResult:
        """The result's files and JSON, staged and committed to the result store as one (``export``): the
        mask, the preview beside it, and the reference image begun before."""
        with timer.stage("export"):
            self._write_files(plan, segmented.mask, loaded.reference, staging)
            volumes, geometry = _measure(segmented.mask, loaded.reference)
        links = self.links(result_id)
        result = SegmentResult(
            result_id=result_id,
            patient_id=plan.request.patient_id,
            study_instance_uid=plan.assembled.study.study_instance_uid,
            series=self._series_refs(plan.assembled),
            missing_sequences=_missing_sequences(plan.assembled, self.predictor.manifest, model_input),
            reference=ReferenceRef(
                modality=_sequence(plan.reference),
                series_instance_uid=loaded.reference.series_instance_uid,
            ),
            labels=dict(LABEL_NAMES),
            volumes_ml=volumes,
            mask_url=links.mask_url,
            preview_url=links.preview_url,
            reference_url=links.reference_url,
            viewer_url=links.viewer_url,
            mask=geometry,
            model=_model_ref(self.predictor.manifest, segmented.network),
            mapping_notes=list(plan.assembled.mapping.notes),
            registration=_registration_report(plan.registration, model_input),
            brain_extraction=BrainExtractionRef.model_validate(dict(model_input.brain_extraction)),
            warnings=_warnings(plan.assembled, self.predictor.manifest, model_input),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            tumorseg_version=__version__,
            timings_s=timer.report(),
        )
        self.store.commit(staging.folder, result)
        return result

    @contextmanager
    def _staged(self, result_id: str) -> Iterator[_Staging]:
        """A private folder for a result's files, discarded unless the block completes (commits it); files
        written into it meanwhile (``_Staging.write``) have ended, either way, when the block is left."""
        folder = self.store.staging(result_id)
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging") as side:
                yield _Staging(folder, side)
        except BaseException:
            self.store.discard(folder)
            raise

    def _write_files(
        self, plan: StudyPlan, mask: sitk.Image, reference: SeriesVolume, staging: _Staging
    ) -> None:
        """The mask and the preview (which names the inputs when the study lacked one), side by side, and
        the files begun before (the reference series on its lattice, the viewer's image), all written."""
        absent = _missing(plan.assembled, self.predictor.manifest)
        note = f"inputs: {', '.join(plan.present)} (no {', '.join(absent)})" if absent else None
        with _library_errors("export", BrokenSeries):
            staging.write(write_preview, reference.image, mask, staging.folder / "preview.png", note)
            write_mask(mask, staging.folder / "mask.nii.gz")
            staging.written()

    def _series_refs(self, assembled: AssembledStudy) -> dict[SequenceName, SeriesRef]:
        """The series used, by sequence; ``orthanc_id`` is Orthanc's series id (null over DICOMweb)."""
        series = assembled.mapping.series
        return {
            _sequence(m): SeriesRef(
                series_instance_uid=series[m].series_instance_uid,
                series_description=series[m].series_description,
                orthanc_id=series[m].orthanc_id,
            )
            for m in assembled.mapping.present
        }

    def _store_in_study(
        self,
        plan: StudyPlan,
        loaded: LoadedStudy,
        segmented: Segmentation,
        result: SegmentResult,
        timer: StageTimer,
    ) -> SegmentResult:
        """The SEG and SR in the source study (``export`` again), and the stored result updated with them and
        the final timings. The SEG goes to the PACS only once the result is saved (no SEG without a result),
        and only when the study does not hold one of this model version for this series yet (no duplicates
        from a retry or a second request): then the result names the one already there. The SR of the
        volumes goes next to it, one per SEG (tumorseg.volumetry)."""
        assembled = plan.assembled
        with timer.stage("export"):
            dataset = None
            dicom_seg = self._existing_seg(assembled, loaded.reference)
            if dicom_seg is None:
                dicom_seg, dataset = self._store_seg(
                    segmented.mask, loaded.reference, loaded.files[plan.reference], assembled
                )
            listed = [*assembled.mapping.series.values(), *(s for s, _ in assembled.mapping.rejected)]
            with (
                _library_errors("the DICOM SR", BrokenSeries),
                self.store.extra_files(result.result_id) as folder,
            ):
                dicom_sr = store_report(
                    self.pacs,
                    result,
                    folder,
                    self.predictor.manifest,
                    listed,
                    dicom_seg,
                    dataset,
                )
        update = {"dicom_seg": dicom_seg, "dicom_sr": dicom_sr, "timings_s": timer.report()}
        result = result.model_copy(update=update)
        self.store.update(result)
        return result

    def _existing_seg(self, assembled: AssembledStudy, reference_series: SeriesVolume) -> DicomSegRef | None:
        """A SEG in the study written by this service with this model version for the reference series
        (Manufacturer, DeviceSerialNumber and ReferencedSeriesSequence of its instance), if any."""
        manifest = self.predictor.manifest
        for info, _ in assembled.mapping.rejected:
            if info.modality != "SEG" or not info.instance_count:
                continue
            instance = self.pacs.first_instance(info)
            if (
                instance.manufacturer == SEG_MANUFACTURER
                and instance.device_serial_number == algorithm_tag(manifest.name, manifest.version)
                and reference_series.series_instance_uid in instance.referenced_series
            ):
                log.info("a SEG of this model version is already in the study; not storing another")
                return DicomSegRef(
                    series_instance_uid=info.series_instance_uid,
                    sop_instance_uid=instance.sop_instance_uid,
                    orthanc_id=instance.orthanc_id,
                )
        return None

    def _download(self, modality: str, info: SeriesInfo) -> list[bytes]:
        try:
            return self.pacs.download_series(info)
        except PacsNotFound as exc:  # listed a moment ago: it changed under us
            raise BrokenSeries(
                f"series {_series_label(modality, info)} changed in the PACS while it was fetched "
                "(an instance disappeared); retry when the study is complete"
            ) from exc

    def _store_seg(
        self,
        mask: sitk.Image,
        reference_series: SeriesVolume,
        source_files: list[bytes],
        assembled: AssembledStudy,
    ) -> tuple[DicomSegRef, Dataset]:
        """The SEG of ``mask``, built from the reference series' downloaded instances, uploaded to the
        source study as a new series; and its dataset (the SR references it)."""
        mapping = assembled.mapping
        numbers = [s.series_number for s in mapping.series.values()] + [
            s.series_number for s, _ in mapping.rejected
        ]
        manifest = self.predictor.manifest
        with _library_errors("the DICOM SEG", BrokenSeries):
            segmentation = build_segmentation(
                mask,
                reference_series,
                read_headers(source_files),
                algorithm_name=manifest.name,
                algorithm_version=manifest.version,
                series_number=next_series_number(numbers),
                missing=mapping.missing,
            )
        stored = self.pacs.upload_instance(encode(segmentation))
        log.info("stored a DICOM SEG of %d frames in the study", int(segmentation.NumberOfFrames))
        return DicomSegRef(
            series_instance_uid=str(segmentation.SeriesInstanceUID),
            sop_instance_uid=str(segmentation.SOPInstanceUID),
            orthanc_id=stored.orthanc_id,
        ), segmentation


@contextmanager
def _library_errors(stage: str, error: type[TumorsegError]) -> Iterator[None]:
    """What a library (SimpleITK, numpy, torch, highdicom, Pillow) raises on the data of this request, as
    ``error`` of the error tree, so bad input never ends as a bare 500. Our own errors pass unchanged."""
    try:
        yield
    except TumorsegError:
        raise
    except (ValueError, ArithmeticError, IndexError, RuntimeError, MemoryError) as exc:
        raise error(f"{stage} failed on this study: {type(exc).__name__}: {exc}") from exc


def _failed_registrations(
    registrations: Mapping[str, Registration] | None, inputs: InputPolicy, present: list[str]
) -> dict[str, Registration]:
    """The registrations that failed (their series are then missing), or ``ModalityMissing`` (422) naming
    the series when the package cannot do without it, or the reference when it showed no head."""
    failed = {m: r for m, r in (registrations or {}).items() if r.failed}
    if not failed:
        return {}
    why = "; ".join(str(r.warning) for r in failed.values())
    if any(NO_REFERENCE_HEAD in str(r.warning) for r in failed.values()):
        raise ModalityMissing(
            f"the reference series shows no head, so no series can be registered to it: {why}"
        )
    problem = inputs.problem([m for m in present if m not in failed])
    if problem is not None:
        raise ModalityMissing(f"{why}; without it the model cannot segment the study: {problem}")
    return failed


def _missing_warning(missing: tuple[str, ...], substitutes: Mapping[str, str] | None = None) -> list[str]:
    if not missing:
        return []
    stand_ins = [f"{substitutes[m]} in the place of {m}" for m in missing if substitutes and m in substitutes]
    return [
        f"the study has no usable {', '.join(missing)} series: segmented without it ("
        + "".join(f"{s}; " for s in stand_ins)
        + "the model package does without it; expect lower accuracy, see the model card)"
    ]


def _used_by(assembled: AssembledStudy, named: tuple[str, ...]) -> AssembledStudy:
    """``assembled`` with only the sequences the model has channels for (``InputPolicy.named``: a published
    model without T1, say); a series mapped to another is listed as not used, with the reason."""
    mapping = assembled.mapping
    unused = [m for m in mapping.series if m not in named]
    if not unused:
        return assembled
    kept = replace(
        mapping,
        series={m: info for m, info in mapping.series.items() if m in named},
        rejected=[*mapping.rejected, *((mapping.series[m], f"the model has no {m} channel") for m in unused)],
    )
    return replace(assembled, mapping=kept)


def _missing(assembled: AssembledStudy, manifest: ModelManifest) -> tuple[str, ...]:
    """The sequences the model has a channel for that the study lacks."""
    return tuple(m for m in assembled.mapping.missing if m in manifest.inputs.named)


def _sequence(name: str) -> SequenceName:
    """A sequence name as the result JSON types it (the request and the mapping hold no other)."""
    return cast(SequenceName, name)


def _measure(mask: sitk.Image, reference: SeriesVolume) -> tuple[VolumesMl, MaskGeometry]:
    """The mask's volumes per region and label (mL, to 3 decimals) and its lattice (the reference's)."""
    labels = sitk.GetArrayViewFromImage(mask).astype(np.uint8, copy=False)
    volumes = volumes_ml(labels, voxel_volume_mm3(reference.image))
    geometry = MaskGeometry(
        shape=list(mask.GetSize()),
        spacing=list(mask.GetSpacing()),
        origin=list(mask.GetOrigin()),
        direction=list(mask.GetDirection()),
    )
    return VolumesMl(**{k: round(v, 3) for k, v in volumes.items()}), geometry


def _missing_sequences(
    assembled: AssembledStudy, manifest: ModelManifest, model_input: ModelInput
) -> list[SequenceName]:
    """The sequences the study lacks, then those left out for a failed registration (see warnings)."""
    failed = [m for m, r in model_input.registrations.items() if r.failed]
    return [_sequence(m) for m in (*_missing(assembled, manifest), *failed)]


def _model_ref(manifest: ModelManifest, network: str) -> ModelRef:
    """Name, version, backend and provenance of the package, and the network ``Predictor.predict`` ran."""
    return ModelRef(**manifest.describe(), network=cast(Literal["main", "fallback"], network))


def _registration_report(enabled: bool, model_input: ModelInput) -> RegistrationReport:
    """Every series' registration to the reference (failed ones too), as the result JSON shows it."""
    return RegistrationReport(
        enabled=enabled,
        series={
            _sequence(m): SeriesRegistration.model_validate(r.to_json())
            for m, r in model_input.registrations.items()
        },
    )


def _warnings(assembled: AssembledStudy, manifest: ModelManifest, model_input: ModelInput) -> list[str]:
    """What a reader should check: the mapping's choices (tumorseg.study.outcome), what the clinical-input
    stages found (co-registration, brain extraction), and the sequences the model did without."""
    missing = _missing_warning(_missing(assembled, manifest), dict(manifest.inputs.substitutes))
    return [*assembled.mapping.warnings, *model_input.warnings, *missing]


def _log_timings(result: SegmentResult) -> None:
    timings = result.timings_s.model_dump()
    log.info(
        "result %s: %s",
        result.result_id,
        " ".join(f"{k}={v:.2f}s" for k, v in timings.items()),
        extra={"fields": {"result_id": result.result_id, "timings_s": timings}},
    )
