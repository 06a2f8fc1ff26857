"""One segmentation, stage by stage: assemble study → fetch → load → preprocess → inference →
postprocess (back onto the reference lattice) → export (NIfTI mask, preview PNG, and on request a DICOM
SEG stored in the source study) → persist. Each stage is timed.

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
from typing import Any

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
from tumorseg.schema import DicomSegRef, SegmentResult, Timings
from tumorseg.sequences import SEQUENCES, InputPolicy
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
    timings: dict[str, float] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress is not None:
            self.progress(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 4)


def _series_label(modality: str, info: SeriesInfo) -> str:
    return f"{modality} '{info.series_description}' (SeriesInstanceUID {info.series_instance_uid})"


class Segmenter:
    def __init__(
        self,
        pacs: Pacs,
        predictor: Predictor,
        store: ResultStore,
        *,
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

    def _run(self, request: SegmentRequest, timer: StageTimer, result_id: str) -> SegmentResult:
        started = time.perf_counter()
        store_seg = request.store_seg or self.store_seg
        with timer.stage("fetch"):
            assembled = self._assemble(request)
            present = assembled.mapping.present  # all four, unless the model does without one the study lacks
            if request.reference not in assembled.mapping.series:
                raise InvalidInput(
                    f"reference {request.reference} is not in the study (it has no usable "
                    f"{request.reference} series); choose one of {', '.join(present)}"
                )
        manifest = self.predictor.manifest
        registration = self.registration if request.registration is None else request.registration
        # Each series is registered as soon as it (and the series it is registered to) is decoded, while
        # the others still download: the registration stage is the wait that is left after loading.
        with (
            ThreadPoolExecutor(max_workers=REGISTRATION_WORKERS) as registering,
            (
                StudyRegistration(present, request.reference, registering) if registration else nullcontext()
            ) as study_registration,
        ):
            loaded, files = self._fetch_and_load(request, assembled, timer, store_seg, study_registration)
            registrations = None
            if study_registration is not None:
                with timer.stage("registration"), _library_errors("registration", BrokenSeries):
                    registrations = study_registration.all()
        # A series whose registration failed is missing under the package's input policy (or a 422)
        failed = _failed_registrations(registrations, manifest.inputs, list(loaded))
        loaded = {m: v for m, v in loaded.items() if m not in failed}
        if registrations is not None:
            registrations = {m: r for m, r in registrations.items() if m not in failed}
        reference_series = loaded[request.reference]  # request.reference names it (flair, t1, ...)
        with timer.stage("preprocess"), _library_errors("preprocessing", BrokenSeries):
            model_input, _ = prepare(
                {m: v.image for m, v in loaded.items()},
                request.reference,
                manifest.preprocessing_for(loaded),
                registration=registration,
                brain_extractor=self.brain_extractor,
                registrations=registrations,
            )
        if failed:  # the result shows their registrations and says why they were left out
            model_input = replace(
                model_input,
                registrations={**model_input.registrations, **failed},
                warnings=(*(str(r.warning) for r in failed.values()), *model_input.warnings),
            )
        # prepare() runs registration and brain extraction first: report them as their own stages.
        for stage, seconds in model_input.timings_s.items():
            timer.timings[stage] = round(seconds, 4)
            timer.timings["preprocess"] = round(timer.timings["preprocess"] - seconds, 4)
        with timer.stage("inference"), _library_errors("inference", ModelError):
            probabilities = self.predictor.predict(model_input)
        with timer.stage("postprocess"), _library_errors("postprocessing", BrokenSeries):
            mask = self.predictor.mask(
                probabilities, model_input.grid, reference_series.image, model_input.brain, model_input.rim_mm
            )
        with timer.stage("export"):
            staging = self.store.staging(result_id)
            try:
                with _library_errors("export", BrokenSeries):
                    write_mask(mask, staging / "mask.nii.gz")
                    write_reference(reference_series.image, staging / "reference.nii.gz")
                    absent = _missing(assembled, manifest)
                    note = f"inputs: {', '.join(present)} (no {', '.join(absent)})" if absent else None
                    write_preview(reference_series.image, mask, staging / "preview.png", note)
                fields = _result_fields(
                    result_id,
                    request.patient_id,
                    assembled,
                    request.reference,
                    reference_series,
                    mask,
                    manifest,
                    self.predictor.network_for(model_input),
                    model_input,
                    registration,
                )
            except BaseException:
                self.store.discard(staging)
                raise
        try:
            result = SegmentResult.model_validate({**fields, "timings_s": self._timings(timer, started)})
            self.store.commit(staging, result)
        except BaseException:
            self.store.discard(staging)
            raise
        if store_seg:
            # The SEG goes to the PACS only once the result is saved (no SEG without a result), and only
            # when the study does not hold one of this model version for this series yet (no duplicates
            # from a retry or a second request): then the result names the one already there.
            # The SR of the volumes goes next to it, one per SEG (tumorseg.volumetry).
            with timer.stage("export"):
                segmentation = None
                dicom_seg = self._existing_seg(assembled, reference_series)
                if dicom_seg is None:
                    dicom_seg, segmentation = self._store_seg(
                        mask, reference_series, files[request.reference], assembled
                    )
                listed = [*assembled.mapping.series.values(), *(s for s, _ in assembled.mapping.rejected)]
                with (
                    _library_errors("the DICOM SR", BrokenSeries),
                    self.store.extra_files(result_id) as folder,
                ):
                    dicom_sr = store_report(
                        self.pacs,
                        result,
                        folder,
                        manifest,
                        listed,
                        dicom_seg,
                        segmentation,
                    )
            final = Timings.model_validate(self._timings(timer, started))
            result = result.model_copy(
                update={"dicom_seg": dicom_seg, "dicom_sr": dicom_sr, "timings_s": final}
            )
            self.store.update(result)
        timings = result.timings_s.model_dump()
        log.info(
            "result %s: %s",
            result_id,
            " ".join(f"{k}={v:.2f}s" for k, v in timings.items()),
            extra={"fields": {"result_id": result_id, "timings_s": timings}},
        )
        return result

    def _fetch_and_load(
        self,
        request: SegmentRequest,
        assembled: AssembledStudy,
        timer: StageTimer,
        store_seg: bool,
        study_registration: StudyRegistration | None,
    ) -> tuple[dict[str, SeriesVolume], dict[str, list[bytes]]]:
        """The present series as volumes (from the series cache, else downloaded and decoded, each series
        decoded while the next one downloads, the reference and the hub first) and the downloaded
        files the SEG needs (the reference series', when it is stored). Each volume goes to
        ``study_registration`` the moment it is decoded. Times ``fetch`` (until the last download ended)
        and ``load`` (the decoding the downloads did not hide, and the overlap check)."""
        series = assembled.mapping.series
        present = assembled.mapping.present
        decoded = {m: v for m in present if (v := self.cache.get(series[m])) is not None}
        for m, volume in decoded.items():
            if study_registration is not None:
                study_registration.add(m, volume.image)
        # The SEG references every source instance: it needs the reference series' files for headers.
        first = (request.reference, *HUBS)
        wanted = sorted(
            (m for m in present if m not in decoded or (store_seg and m == request.reference)),
            key=lambda m: first.index(m) if m in first else len(first),
        )
        downloaded: list[float] = []  # when each series' download ended

        def decode(m: str, data: list[bytes]) -> list[bytes]:
            """One downloaded series decoded (while the next downloads) and handed to registration."""
            if m not in decoded:
                with _library_errors("loading", BrokenSeries):
                    volume = load_series(data, _series_label(m, series[m]), limits=self.limits)
                self.cache.put(series[m], volume)
                decoded[m] = volume
                if study_registration is not None:
                    study_registration.add(m, volume.image)
            # The SEG needs the reference series' files; the others end as their volume.
            return data if store_seg and m == request.reference else []

        with timer.stage("fetch"):
            self._check_sizes(assembled, [m for m in present if m not in decoded])
            # One series at a time, each with all of the client's parallel downloads, so that the first
            # (the reference) arrives after a quarter of the time and not with the others at the end.
            with ThreadPoolExecutor(max_workers=DECODE_WORKERS) as decoding:
                pending: list[tuple[str, Future[list[bytes]]]] = []
                for m in wanted:
                    for _, decoding_done in pending:  # a series that failed to decode ends the request now
                        if decoding_done.done() and decoding_done.exception() is not None:
                            decoding_done.result()
                    data = self._download(m, series[m])
                    downloaded.append(time.perf_counter())
                    pending.append((m, decoding.submit(decode, m, data)))
                files = {m: future.result() for m, future in pending}
        # ``load`` is the decoding the downloads did not hide: from the last download to the last volume.
        after_downloads = time.perf_counter() - max(downloaded) if downloaded else 0.0
        timer.timings["fetch"] = round(timer.timings["fetch"] - after_downloads, 4)
        with timer.stage("load"), _library_errors("loading", BrokenSeries):
            loaded = {m: decoded[m] for m in present}
            check_overlap(loaded, request.reference)
        timer.timings["load"] = round(timer.timings["load"] + after_downloads, 4)
        return loaded, files

    @staticmethod
    def _timings(timer: StageTimer, started: float) -> dict[str, float]:
        timings = {name: timer.timings.get(name, 0.0) for name in STAGES}
        timings["total"] = round(time.perf_counter() - started, 4)
        return timings

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


def _result_fields(
    result_id: str,
    patient_id: str,
    assembled: AssembledStudy,
    reference_modality: str,
    reference_series: SeriesVolume,
    mask: sitk.Image,
    manifest: ModelManifest,
    network: str,
    model_input: ModelInput,
    registration: bool,
) -> dict[str, Any]:
    """The result JSON's keys (``SegmentResult``) but ``timings_s``, which the pipeline adds once the
    export is timed, and ``dicom_seg``, which it adds once the SEG is in the study. ``model_input`` brings
    what the clinical-input stages found (co-registration, brain extraction, warnings)."""
    series = assembled.mapping.series
    labels = sitk.GetArrayViewFromImage(mask).astype(np.uint8, copy=False)
    volumes = volumes_ml(labels, voxel_volume_mm3(reference_series.image))
    return {
        "result_id": result_id,
        "patient_id": patient_id,
        "study_instance_uid": assembled.study.study_instance_uid,
        "series": {
            m: {
                "series_instance_uid": series[m].series_instance_uid,
                "series_description": series[m].series_description,
                "orthanc_id": series[m].orthanc_id,
            }
            for m in assembled.mapping.present
        },
        "missing_sequences": list(_missing(assembled, manifest))
        + [m for m, r in model_input.registrations.items() if r.failed],  # left out: see warnings
        "reference": {
            "modality": reference_modality,
            "series_instance_uid": reference_series.series_instance_uid,
        },
        "labels": dict(LABEL_NAMES),
        "volumes_ml": {k: round(v, 3) for k, v in volumes.items()},
        "mask_url": f"/results/{result_id}/mask.nii.gz",
        "preview_url": f"/results/{result_id}/preview.png",
        "reference_url": f"/results/{result_id}/reference.nii.gz",
        "viewer_url": f"/results/{result_id}/viewer",
        "mask": {
            "shape": list(mask.GetSize()),
            "spacing": list(mask.GetSpacing()),
            "origin": list(mask.GetOrigin()),
            "direction": list(mask.GetDirection()),
        },
        "model": {
            **manifest.describe(),  # name, version, backend, provenance
            "network": network,  # the one Predictor.predict ran
        },
        "mapping_notes": list(assembled.mapping.notes),
        "registration": {
            "enabled": registration,
            "series": {m: r.to_json() for m, r in model_input.registrations.items()},
        },
        "brain_extraction": dict(model_input.brain_extraction),
        "warnings": list(assembled.mapping.warnings)  # choices to check (tumorseg.study.outcome)
        + list(model_input.warnings)
        + _missing_warning(_missing(assembled, manifest), dict(manifest.inputs.substitutes)),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tumorseg_version": __version__,
    }
