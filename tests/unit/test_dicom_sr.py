"""The DICOM SR volumetry report on its own (no PACS): built on a SEG of a synthetic oblique series,
written, checked by dciodvfy, read back with highdicom to the volumes it was given."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import Comprehensive3DSRStorage

from tests.dicom_checks import dciodvfy_errors
from tests.dicom_factory import volume_series
from tumorseg.export.dicom_seg import build_segmentation, encode, read_headers
from tumorseg.export.dicom_sr import (
    SR_REGIONS,
    build_report,
    read_report,
    time_point,
    tracking_uid,
)
from tumorseg.imaging.postprocess import voxel_volume_mm3
from tumorseg.imaging.volume import load_series
from tumorseg.labels import volumes_ml
from tumorseg.pacs.tags import referenced_instances


def seg_and_volumes(patient_id: str = "SRTEST") -> tuple[hd.seg.Segmentation, dict[str, float]]:
    files = volume_series(
        lambda p: 100.0 + p[:, 0],
        rows=12,
        columns=10,
        slices=6,
        origin=(-5.0, -7.0, 3.0),
        row_dir=(1.0, 0.0, 0.0),
        col_dir=(0.0, 0.94, -0.342),
        pixel_spacing=(0.9, 1.1),
        slice_spacing=3.0,
        patient_id=patient_id,
    )
    volume = load_series(files, "synthetic")
    labels = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, dtype=np.uint8)
    labels[1:3, 2:6, 1:4] = 1
    labels[2:5, 6:9, 2:8] = 2
    labels[3:5, 1:4, 5:9] = 4
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(volume.image)
    seg = build_segmentation(
        mask, volume, read_headers(files), algorithm_name="tiny", algorithm_version="0", series_number=9
    )
    return seg, volumes_ml(labels, voxel_volume_mm3(volume.image))


def test_sr_passes_dciodvfy_and_reads_back_to_its_volumes(tmp_path: Path) -> None:
    seg, volumes = seg_and_volumes()
    assert set(volumes) == {r.key for r in SR_REGIONS}  # volumes_ml has ncr and ed too
    assert volumes["tc"] == pytest.approx(volumes["ncr"] + volumes["et"])
    assert volumes["wt"] == pytest.approx(volumes["ncr"] + volumes["ed"] + volumes["et"])
    sr = build_report(
        seg, volumes, patient_id="SRTEST", algorithm_name="tiny", algorithm_version="0", series_number=10
    )
    path = tmp_path / "sr.dcm"
    path.write_bytes(encode(sr))
    assert dciodvfy_errors(path) == []
    read = hd.sr.srread(path)
    assert read.SOPClassUID == Comprehensive3DSRStorage
    assert read.StudyInstanceUID == seg.StudyInstanceUID and read.PatientID == "SRTEST"
    parsed = read_report(read)
    assert parsed.volumes_ml == pytest.approx({k: round(v, 3) for k, v in volumes.items()}, abs=0.01)
    assert parsed.segments == {
        "ncr": (seg.SOPInstanceUID, 1),
        "ed": (seg.SOPInstanceUID, 2),
        "et": (seg.SOPInstanceUID, 3),
    }
    assert parsed.time_points == {time_point(str(seg.StudyDate))}
    assert str(seg.SOPInstanceUID) in referenced_instances(
        {
            "CurrentRequestedProcedureEvidenceSequence": _simplified(
                read.CurrentRequestedProcedureEvidenceSequence
            )
        }
    )


def test_tracking_uids_follow_the_patient_not_the_study() -> None:
    first, volumes = seg_and_volumes("SAMEPAT")
    second, _ = seg_and_volumes("SAMEPAT")
    assert first.StudyInstanceUID != second.StudyInstanceUID
    reports = [
        read_report(
            build_report(
                seg, volumes, patient_id="SAMEPAT", algorithm_name="m", algorithm_version="1", series_number=2
            )
        )
        for seg in (first, second)
    ]
    assert reports[0].tracking_uids == reports[1].tracking_uids
    assert len(set(reports[0].tracking_uids.values())) == len(SR_REGIONS)
    assert tracking_uid("SAMEPAT", "et") != tracking_uid("OTHER", "et")
    assert time_point("20240131") == "2024-01-31"


def test_a_missing_region_is_refused() -> None:
    seg, volumes = seg_and_volumes()
    del volumes["ncr"]
    with pytest.raises(ValueError, match="ncr"):
        build_report(
            seg, volumes, patient_id="SRTEST", algorithm_name="m", algorithm_version="1", series_number=2
        )


def _simplified(sequence: object) -> list[dict[str, object]]:
    """A pydicom sequence in Orthanc's simplified-tags form (keyword → string or list of objects)."""
    items = []
    for ds in sequence:  # type: ignore[attr-defined]
        item: dict[str, object] = {}
        for element in ds:
            item[element.keyword] = _simplified(element.value) if element.VR == "SQ" else str(element.value)
        items.append(item)
    return items
