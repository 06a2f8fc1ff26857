"""One segmentation, stage by stage: assemble study → fetch → load → preprocess → inference →
postprocess (back onto the reference lattice) → export (NIfTI mask, preview PNG, and on request a DICOM
SEG stored in the source study) → persist. Each stage is timed.

``Segmenter`` holds what lives across requests (Orthanc client, predictor, result store) and runs one
request at a time on the model, with a bounded number waiting (``Busy`` beyond that). It is used by the
API and by ``tumorseg segment`` alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from tumorseg import __version__
from tumorseg.errors import Busy, InvalidInput
from tumorseg.export.dicom_seg import StoredSeg, next_series_number, store_segmentation
from tumorseg.export.nifti import write_mask
from tumorseg.export.preview import write_preview
from tumorseg.imaging.postprocess import to_reference_mask, voxel_volume_mm3
from tumorseg.imaging.preprocess import MODALITIES, prepare
from tumorseg.imaging.volume import SeriesVolume, load_series
from tumorseg.model.labels import LABEL_NAMES, volumes_ml
from tumorseg.model.predictor import Predictor
from tumorseg.pacs import OrthancClient, SeriesInfo
from tumorseg.results import ResultStore, new_result_id
from tumorseg.study.assemble import AssembledStudy, assemble
from tumorseg.validation import check_patient_id, check_uid

log = logging.getLogger(__name__)

STAGES = ("fetch", "load", "preprocess", "inference", "postprocess", "export")


@dataclass(frozen=True)
class SegmentRequest:
    patient_id: str
    study_instance_uid: str | None = None
    reference: str = "flair"
    explicit_series: Mapping[str, str] | None = None
    store_seg: bool = False

    def __post_init__(self) -> None:
        check_patient_id(self.patient_id)
        if self.study_instance_uid is not None:
            check_uid(self.study_instance_uid, "study")
        for modality, uid in (self.explicit_series or {}).items():
            check_uid(uid, f"the {modality} SeriesInstanceUID")
        if self.reference not in MODALITIES:
            raise InvalidInput(f"reference must be one of {', '.join(MODALITIES)}, not {self.reference!r}")


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
        pacs: OrthancClient,
        predictor: Predictor,
        store: ResultStore,
        *,
        max_waiting: int = 4,
        rules: Path | None = None,
        store_seg: bool = False,
    ) -> None:
        self.pacs = pacs
        self.predictor = predictor
        self.store = store
        self.rules = rules
        self.store_seg = store_seg  # TUMORSEG_STORE_SEG: a SEG for every request, asked for or not
        self._model_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_waiting + 1)

    def run(self, request: SegmentRequest, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        if not self._slots.acquire(blocking=False):
            raise Busy("the inference queue is full; retry later", retry_after_s=30)
        try:
            return self._run(request, StageTimer(progress=progress))
        finally:
            self._slots.release()

    def _run(self, request: SegmentRequest, timer: StageTimer) -> dict[str, Any]:
        started = time.perf_counter()
        with timer.stage("fetch"):
            assembled = assemble(
                self.pacs, request.patient_id, request.study_instance_uid, request.explicit_series, self.rules
            )
            series = assembled.mapping.series
            with ThreadPoolExecutor(max_workers=len(MODALITIES)) as pool:
                files = dict(
                    zip(
                        MODALITIES,
                        pool.map(lambda m: self.pacs.download_series(series[m]), MODALITIES),
                        strict=True,
                    )
                )
        store_seg = request.store_seg or self.store_seg
        # The SEG references every source instance: keep the reference series' files for its headers.
        source_files = files[request.reference] if store_seg else []
        with timer.stage("load"), ThreadPoolExecutor(max_workers=len(MODALITIES)) as pool:
            loaded: dict[str, SeriesVolume] = dict(
                zip(
                    MODALITIES,
                    pool.map(lambda m: load_series(files.pop(m), _series_label(m, series[m])), MODALITIES),
                    strict=True,
                )
            )
        reference = loaded[request.reference]
        manifest = self.predictor.manifest
        with timer.stage("preprocess"):
            model_input, _ = prepare(
                {m: v.image for m, v in loaded.items()}, request.reference, manifest.preprocessing
            )
        with self._model_lock, timer.stage("inference"):
            probabilities = self.predictor.predict(model_input)
        with timer.stage("postprocess"):
            mask = to_reference_mask(probabilities, model_input.grid, reference.image, manifest.threshold)
        result_id = new_result_id()
        with timer.stage("export"):
            staging = self.store.staging(result_id)
            try:
                write_mask(mask, staging / "mask.nii.gz")
                write_preview(reference.image, mask, staging / "preview.png")
                dicom_seg = self._store_seg(mask, reference, source_files, assembled) if store_seg else None
                labels = sitk.GetArrayViewFromImage(mask).astype(np.uint8, copy=False)
                volumes = volumes_ml(labels, voxel_volume_mm3(reference.image))
                result = {
                    "result_id": result_id,
                    "patient_id": request.patient_id,
                    "study_instance_uid": assembled.study.study_instance_uid,
                    "series": {
                        m: {
                            "series_instance_uid": series[m].series_instance_uid,
                            "series_description": series[m].series_description,
                            "orthanc_id": series[m].orthanc_id,
                        }
                        for m in MODALITIES
                    },
                    "reference": {
                        "modality": request.reference,
                        "series_instance_uid": reference.series_instance_uid,
                    },
                    "labels": dict(LABEL_NAMES),
                    "volumes_ml": {k: round(v, 3) for k, v in volumes.items()},
                    "mask_url": f"/results/{result_id}/mask.nii.gz",
                    "preview_url": f"/results/{result_id}/preview.png",
                    "dicom_seg": dicom_seg.to_json() if dicom_seg else None,
                    "mask": {
                        "shape": list(mask.GetSize()),
                        "spacing": list(mask.GetSpacing()),
                        "origin": list(mask.GetOrigin()),
                        "direction": list(mask.GetDirection()),
                    },
                    "model": {"name": manifest.name, "version": manifest.version},
                    "mapping_notes": list(assembled.mapping.notes),
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "tumorseg_version": __version__,
                }
            except BaseException:
                self.store.discard(staging)
                raise
        timings = {name: timer.timings.get(name, 0.0) for name in STAGES}
        timings["total"] = round(time.perf_counter() - started, 4)
        result["timings_s"] = timings
        try:
            self.store.commit(result_id, staging, result)
        except BaseException:
            self.store.discard(staging)
            raise
        log.info("result %s: %s", result_id, " ".join(f"{k}={v:.2f}s" for k, v in timings.items()))
        return result

    def _store_seg(
        self, mask: sitk.Image, reference: SeriesVolume, source_files: list[bytes], assembled: AssembledStudy
    ) -> StoredSeg:
        mapping = assembled.mapping
        numbers = [s.series_number for s in mapping.series.values()] + [
            s.series_number for s, _ in mapping.rejected
        ]
        manifest = self.predictor.manifest
        return store_segmentation(
            self.pacs,
            mask,
            reference,
            source_files,
            algorithm_name=manifest.name,
            algorithm_version=manifest.version,
            series_number=next_series_number(numbers),
        )
