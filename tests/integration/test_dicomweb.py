"""The service over DICOMweb only (Orthanc's DICOMweb plugin as the PACS, TUMORSEG_ORTHANC_URL pointing
nowhere): the same mapping and mask, voxel for voxel, as over Orthanc REST; the SEG stored through STOW-RS
into the source study, and found there again; /health and inspect over QIDO-RS; the auto-trigger polling
QIDO-RS."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.filebase import DicomBytesIO
from typer.testing import CliRunner

from tests.jobs import FAST, job_of, seg_series
from tests.orthanc import OrthancEndpoint, cli_with_env, segment_settings, upload_folder
from tests.results import mask_array
from tests.studies import Edit, UploadedStudy, clone_study
from tumorseg.api.main import create_app
from tumorseg.cli import app as cli
from tumorseg.pacs.dicomweb import DicomwebClient
from tumorseg_devkit.local import LocalOrthanc
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing answers there


def _dicomweb(orthanc: OrthancEndpoint, random_model: Path, results: Path, **extra: object) -> TestClient:
    settings = segment_settings(
        NOWHERE, orthanc.auth, random_model, results, dicomweb_url=f"{orthanc.url}/dicom-web", **extra
    )
    return TestClient(create_app(settings))


def test_the_same_study_gives_the_same_mask_over_rest_and_dicomweb(
    clinical_study: UploadedStudy, orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    rest_app = create_app(segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path / "rest"))
    with TestClient(rest_app) as rest:
        over_rest = rest.post(f"/segment/{clinical_study.patient_id}")
        assert over_rest.status_code == 200, over_rest.text
        rest_mask = mask_array(rest, over_rest.json(), tmp_path / "rest.nii.gz")
    with _dicomweb(orthanc, random_model, tmp_path / "web") as web:
        health = web.get("/health").json()
        assert health["orthanc"] == {"reachable": True, "version": None}
        over_web = web.post(f"/segment/{clinical_study.patient_id}")
        assert over_web.status_code == 200, over_web.text
        web_mask = mask_array(web, over_web.json(), tmp_path / "web.nii.gz")
    a, b = over_rest.json(), over_web.json()
    assert {m: s["series_instance_uid"] for m, s in a["series"].items()} == {
        m: s["series_instance_uid"] for m, s in b["series"].items()
    }
    assert all(s["orthanc_id"] for s in a["series"].values())
    assert all(s["orthanc_id"] is None for s in b["series"].values())  # no Orthanc ids over DICOMweb
    assert a["mapping_notes"] == b["mapping_notes"] and a["mask"] == b["mask"]
    assert np.count_nonzero(rest_mask) > 0, "empty mask: the comparison would say nothing"
    assert np.array_equal(rest_mask, web_mask)


def test_the_seg_goes_into_the_source_study_through_stow_rs_once(
    clinical_study: UploadedStudy, orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    patient_id = clone_study(clinical_study.converted, tmp_path / "study")
    upload_folder(orthanc, tmp_path / "study")
    with _dicomweb(orthanc, random_model, tmp_path / "results") as web:
        first = web.post(f"/segment/{patient_id}", params={"reference": "t1ce", "store_seg": "true"})
        assert first.status_code == 200, first.text
        again = web.post(f"/segment/{patient_id}", params={"reference": "t1ce", "store_seg": "true"})
        assert again.status_code == 200, again.text
    result, repeated = first.json(), again.json()
    seg = result["dicom_seg"]
    assert seg["orthanc_id"] is None
    assert repeated["dicom_seg"] == seg  # found in the study over QIDO/WADO: no second SEG
    with orthanc.client() as pacs:  # the test looks through Orthanc's REST API; the service did not
        (study,) = pacs.find_studies(patient_id)
        assert study.study_instance_uid == result["study_instance_uid"]
        segs = [s for s in pacs.list_series(study.key) if s.modality == "SEG"]
        assert [(s.series_instance_uid, s.instance_count) for s in segs] == [(seg["series_instance_uid"], 1)]
        (instance,) = pacs.instance_ids(segs[0].key)
        stored = pydicom.dcmread(DicomBytesIO(pacs.download_instance(instance)))
    assert str(stored.SOPInstanceUID) == seg["sop_instance_uid"]
    referenced = {str(item.SeriesInstanceUID) for item in stored.ReferencedSeriesSequence}
    assert referenced == {result["reference"]["series_instance_uid"]}


def test_a_series_is_fetched_over_dicomweb_from_its_uids_alone(
    clinical_study: UploadedStudy, orthanc: OrthancEndpoint
) -> None:
    """No hidden order between calls: a series record another client listed (Orthanc REST) is enough
    for the DICOMweb client to read one instance and download every one."""
    with orthanc.client() as rest:
        (study,) = [
            s
            for s in rest.find_studies(clinical_study.patient_id)
            if s.study_instance_uid == clinical_study.converted.study_instance_uid
        ]
        series = next(s for s in rest.list_series(study.key) if s.modality == "MR")
    with DicomwebClient(f"{orthanc.url}/dicom-web", orthanc.auth) as web:
        instance = web.first_instance(series)
        assert (instance.series_instance_uid, instance.orthanc_id) == (series.series_instance_uid, None)
        files = web.download_series(series)
    assert len(files) == series.instance_count
    uids = {str(pydicom.dcmread(DicomBytesIO(f), stop_before_pixels=True).SeriesInstanceUID) for f in files}
    assert uids == {series.series_instance_uid}


@pytest.fixture
def dicomweb_env(orthanc: OrthancEndpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    env = {
        **orthanc.env(),
        "TUMORSEG_ORTHANC_URL": NOWHERE,
        "TUMORSEG_DICOMWEB_URL": f"{orthanc.url}/dicom-web",
    }
    with cli_with_env(monkeypatch, env) as runner:
        yield runner


def test_inspect_over_dicomweb_reports_the_mapping_segment_would_use(
    dicomweb_env: CliRunner, clinical_study: UploadedStudy
) -> None:
    run = dicomweb_env.invoke(cli, ["inspect", clinical_study.patient_id, "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.output)
    assert report["orthanc"]["protocol"] == "DICOMweb" and report["orthanc"]["reachable"] is True
    assert set(report["series"]) == {"flair", "t1", "t1ce", "t2"}
    assert all(s["orthanc_id"] is None for s in report["series"].values())
    assert report["study_instance_uid"] == clinical_study.converted.study_instance_uid


def test_auto_segment_over_dicomweb_polls_recent_studies_and_segments_each_once(
    own_orthanc: LocalOrthanc, plain_study: ConvertedStudy, random_model: Path, tmp_path: Path
) -> None:
    """No change log over DICOMweb: QIDO polling of the last days' studies, one job (and SEG) per study
    content; our own SEG arriving makes no new job; a study older than the window is left alone."""
    orthanc = OrthancEndpoint(own_orthanc.url, *own_orthanc.auth)
    today = date.today().strftime("%Y%m%d")

    def dated(day: str) -> Edit:
        def edit(modality: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
            ds.StudyDate = ds.SeriesDate = day
            return ds

        return edit

    recent = clone_study(plain_study, tmp_path / "recent", edit=dated(today))
    old = clone_study(plain_study, tmp_path / "old", edit=dated("20200101"))
    upload_folder(orthanc, tmp_path / "recent")
    upload_folder(orthanc, tmp_path / "old")
    settings = segment_settings(
        NOWHERE,
        orthanc.auth,
        random_model,
        tmp_path / "results",
        dicomweb_url=f"{orthanc.url}/dicom-web",
        auto_segment=True,
        auto_segment_poll_s=0.5,
        **FAST,
    )
    with TestClient(create_app(settings)) as client:
        job = job_of(client, recent)
        assert (job["state"], job["origin"]) == ("done", "auto"), job
        time.sleep(3)  # several polls after our SEG arrived: the study's images are unchanged
        assert client.get("/jobs").json()["total"] == 1
        assert client.get("/jobs", params={"patient_id": old}).json()["total"] == 0
    assert seg_series(orthanc, recent) == 1 and seg_series(orthanc, old) == 0
