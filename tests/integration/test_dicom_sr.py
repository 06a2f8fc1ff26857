"""The volumetry SR stored next to the SEG: POST /segment?store_seg=true against a real Orthanc with the
random-weight tiny model; the SR passes dciodvfy, reads back with highdicom to the JSON's volumes and
references the SEG's segments; a second request stores no second SR; an SR lost after its SEG (a crash
between the two, played by deleting it) is stored again alone, referencing the SEG already there."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pytest
from fastapi.testclient import TestClient

from tests.dicom_checks import dciodvfy_errors
from tests.orthanc import OrthancEndpoint, segment_settings, upload_folder
from tests.studies import clone_study
from tumorseg.api.main import create_app
from tumorseg.export.dicom_sr import read_report, tracking_uid
from tumorseg.pacs import OrthancClient
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration


def _series(pacs: OrthancClient, patient_id: str, modality: str) -> list[tuple[str, int]]:
    (study,) = pacs.find_studies(patient_id)
    return [
        (s.series_instance_uid, s.instance_count)
        for s in pacs.list_series(study.key)
        if s.modality == modality
    ]


def test_one_sr_per_seg_read_back_to_the_json_volumes(
    orthanc: OrthancEndpoint, plain_study: ConvertedStudy, random_model: Path, tmp_path: Path
) -> None:
    patient_id = clone_study(plain_study, tmp_path / "clone")
    upload_folder(orthanc, tmp_path / "clone")
    app = create_app(segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path / "results"))
    with TestClient(app) as api, orthanc.client() as pacs:
        first = api.post(f"/segment/{patient_id}", params={"store_seg": "true"})
        assert first.status_code == 200, first.text
        result = first.json()
        sr_ref, seg_ref = result["dicom_sr"], result["dicom_seg"]
        assert sr_ref["seg_sop_instance_uid"] == seg_ref["sop_instance_uid"]
        path = tmp_path / "sr.dcm"
        path.write_bytes(pacs.download_instance(sr_ref["orthanc_id"]))
        assert dciodvfy_errors(path) == []
        sr = hd.sr.srread(path)
        assert sr.StudyInstanceUID == result["study_instance_uid"] and sr.PatientID == patient_id
        report = read_report(sr)
        volumes = result["volumes_ml"]
        assert set(volumes) == {"et", "tc", "wt", "ncr", "ed"} and volumes["wt"] > 0
        assert report.volumes_ml == pytest.approx(volumes, abs=0.01)
        assert report.segments == {
            "ncr": (seg_ref["sop_instance_uid"], 1),
            "ed": (seg_ref["sop_instance_uid"], 2),
            "et": (seg_ref["sop_instance_uid"], 3),
        }
        assert report.tracking_uids["et"] == tracking_uid(patient_id, "et")
        # The result folder has it too.
        assert (tmp_path / "results" / result["result_id"] / "report.dcm").read_bytes() == path.read_bytes()

        again = api.post(f"/segment/{patient_id}", params={"store_seg": "true"})
        assert again.status_code == 200, again.text
        assert again.json()["dicom_sr"] == sr_ref and again.json()["dicom_seg"] == seg_ref
        assert _series(pacs, patient_id, "SR") == [(sr_ref["series_instance_uid"], 1)]

        # A crash between the SEG and the SR: the retry stores the SR alone, on the SEG already there.
        pacs.delete("instances", sr_ref["orthanc_id"])
        retried = api.post(f"/segment/{patient_id}", params={"store_seg": "true"})
        assert retried.status_code == 200, retried.text
        new_sr = retried.json()["dicom_sr"]
        assert new_sr["sop_instance_uid"] != sr_ref["sop_instance_uid"]
        assert new_sr["seg_sop_instance_uid"] == seg_ref["sop_instance_uid"]
        assert _series(pacs, patient_id, "SEG") == [(seg_ref["series_instance_uid"], 1)]
        assert _series(pacs, patient_id, "SR") == [(new_sr["series_instance_uid"], 1)]
        path.write_bytes(pacs.download_instance(new_sr["orthanc_id"]))
        assert dciodvfy_errors(path) == []
        assert read_report(hd.sr.srread(path)).volumes_ml == pytest.approx(volumes, abs=0.01)


def test_one_sr_per_seg_over_dicomweb(
    orthanc: OrthancEndpoint, plain_study: ConvertedStudy, random_model: Path, tmp_path: Path
) -> None:
    """The same over DICOMweb only (STOW-RS, QIDO-RS, WADO-RS): the SR found again by its evidence, and a
    lost one stored again on the SEG downloaded over WADO-RS."""
    patient_id = clone_study(plain_study, tmp_path / "clone")
    upload_folder(orthanc, tmp_path / "clone")
    settings = segment_settings(
        "http://127.0.0.1:9",
        orthanc.auth,
        random_model,
        tmp_path / "results",
        dicomweb_url=f"{orthanc.url}/dicom-web",
    )
    with TestClient(create_app(settings)) as web, orthanc.client() as pacs:
        first = web.post(f"/segment/{patient_id}", params={"store_seg": "true"}).json()
        again = web.post(f"/segment/{patient_id}", params={"store_seg": "true"}).json()
        assert first["dicom_sr"]["orthanc_id"] is None and again["dicom_sr"] == first["dicom_sr"]
        assert _series(pacs, patient_id, "SR") == [(first["dicom_sr"]["series_instance_uid"], 1)]
        (study,) = pacs.find_studies(patient_id)
        (sr_series,) = [s for s in pacs.list_series(study.key) if s.modality == "SR"]
        pacs.delete("series", sr_series.key)
        retried = web.post(f"/segment/{patient_id}", params={"store_seg": "true"}).json()
        assert retried["dicom_sr"]["seg_sop_instance_uid"] == first["dicom_seg"]["sop_instance_uid"]
        assert _series(pacs, patient_id, "SEG") == [(first["dicom_seg"]["series_instance_uid"], 1)]
        assert _series(pacs, patient_id, "SR") == [(retried["dicom_sr"]["series_instance_uid"], 1)]
