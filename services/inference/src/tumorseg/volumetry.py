"""The volumetry SR of a result, stored in the study next to its SEG: one SR per SEG.

``store_report`` runs after the SEG is in the study (just stored, or found there from an earlier request
of the same model version). When the SEG was just stored, no SR can reference it yet: the SR is built from
the SEG dataset in hand and stored. When the SEG was already there, the study is searched for an SR of
this service that references that SEG instance (its evidence sequence); only when none is found (a crash
between the SEG and the SR) is the SEG downloaded and an SR built for it and stored. Either way the SR is
also written into the result folder (``report.dcm``), and the result names it (``dicom_sr``).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from tumorseg.export.dicom_seg import SEG_MANUFACTURER, encode, next_series_number
from tumorseg.export.dicom_sr import build_report
from tumorseg.model.package import ModelManifest
from tumorseg.pacs import Pacs
from tumorseg.records import SeriesInfo
from tumorseg.schema import DicomSegRef, DicomSrRef, SegmentResult

log = logging.getLogger(__name__)

REPORT_FILE = "report.dcm"


def existing_report(
    pacs: Pacs, listed: list[SeriesInfo], seg: DicomSegRef
) -> tuple[DicomSrRef, SeriesInfo] | None:
    """An SR of this service in the study (``listed``: its series) that references the SEG ``seg``, and
    its series."""
    for info in listed:
        if info.modality != "SR" or not info.instance_count:
            continue
        instance = pacs.first_instance(info)
        if (
            instance.manufacturer == SEG_MANUFACTURER
            and seg.sop_instance_uid in instance.referenced_instances
        ):
            log.info("an SR of this SEG is already in the study; not storing another")
            found = DicomSrRef(
                series_instance_uid=info.series_instance_uid,
                sop_instance_uid=instance.sop_instance_uid,
                seg_sop_instance_uid=seg.sop_instance_uid,
                orthanc_id=instance.orthanc_id,
            )
            return found, info
    return None


def download_seg(pacs: Pacs, listed: list[SeriesInfo], seg: DicomSegRef) -> Dataset:
    """The SEG instance ``seg`` as stored in the study (its series is among ``listed``)."""
    for info in listed:
        if info.series_instance_uid == seg.series_instance_uid:
            for data in pacs.download_series(info):
                dataset = pydicom.dcmread(DicomBytesIO(data))
                if str(dataset.SOPInstanceUID) == seg.sop_instance_uid:
                    return dataset
    raise ValueError(f"the SEG {seg.sop_instance_uid} is not in the study any more")


def store_report(
    pacs: Pacs,
    result: SegmentResult,
    result_folder: Path,
    manifest: ModelManifest,
    listed: list[SeriesInfo],
    seg: DicomSegRef,
    segmentation: Dataset | None,
) -> DicomSrRef:
    """The SR of ``result``'s volumes on the SEG ``seg`` (``segmentation``: its dataset when it was just
    built, else None and it is downloaded), stored unless the study has one already; written into
    ``result_folder`` either way (see the module docstring)."""
    found = existing_report(pacs, listed, seg) if segmentation is None else None
    if found is not None:
        ref, info = found
        for data in pacs.download_series(info):
            if (
                str(pydicom.dcmread(DicomBytesIO(data), stop_before_pixels=True).SOPInstanceUID)
                == ref.sop_instance_uid
            ):
                _write_atomically(result_folder / REPORT_FILE, data)
        return ref
    if segmentation is None:
        segmentation = download_seg(pacs, listed, seg)
    numbers = [s.series_number for s in listed] + [str(segmentation.get("SeriesNumber", ""))]
    report = build_report(
        segmentation,
        result.volumes_ml.model_dump(),
        patient_id=result.patient_id,
        algorithm_name=manifest.name,
        algorithm_version=manifest.version,
        series_number=next_series_number(numbers),
    )
    data = encode(report)
    _write_atomically(result_folder / REPORT_FILE, data)
    stored = pacs.upload_instance(data)
    log.info("stored a DICOM SR of the volumes in the study")
    return DicomSrRef(
        series_instance_uid=str(report.SeriesInstanceUID),
        sop_instance_uid=str(report.SOPInstanceUID),
        seg_sop_instance_uid=seg.sop_instance_uid,
        orthanc_id=stored.orthanc_id,
    )


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` (in a committed result's folder): written aside, then renamed into place."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with partial.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
