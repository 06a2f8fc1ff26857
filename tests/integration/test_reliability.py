"""Reliability and security against real processes: logs without PHI, faults, recovery."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.orthanc import OrthancEndpoint, service_env, service_settings
from tests.service import running_service
from tests.studies import UploadedStudy, clone_study
from tumorseg.api.main import create_app
from tumorseg.pacs import OrthancClient
from tumorseg.pacs.upload import upload_directory
from tumorseg.records import SeriesInfo
from tumorseg_devkit.local import LocalOrthanc
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration


def test_logs_are_json_lines_with_request_ids_and_no_phi(
    clinical_study: UploadedStudy, orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    log = tmp_path / "service.log"
    env = service_env(orthanc.url, orthanc.auth, random_model, tmp_path / "results")
    with running_service(env, log, tmp_path) as url:
        ok = httpx.post(
            f"{url}/segment/{clinical_study.patient_id}", headers={"X-Request-ID": "scan-1"}, timeout=600
        )
        missing = httpx.post(
            f"{url}/segment/{clinical_study.patient_id}-NOBODY", headers={"X-Request-ID": "scan-2"}
        )
    assert ok.status_code == 200 and ok.headers["X-Request-ID"] == "scan-1"
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "scan-2"

    text = log.read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert entries and all({"ts", "level", "logger", "request_id", "message"} <= set(e) for e in entries)
    ours = [e for e in entries if e["request_id"] == "scan-1"]
    assert any("fetch" in e.get("timings_s", {}) or "fetch=" in e["message"] for e in ours), "stage timings"
    assert any(e.get("route") == "/segment/{patient_id}" and e.get("status") == 200 for e in ours)
    # The phantom's name and birth date, and the PatientID itself, appear nowhere in the log.
    for phi in ("PHANTOM^DEMO", "PHANTOM DEMO", "19680517", "1968-05-17", clinical_study.patient_id):
        assert phi not in text, phi
    # Nor the examination: study and series UIDs, study dates, accession numbers, series descriptions.
    studies = clinical_study.converted.studies
    examination = [s.study_instance_uid for s in studies] + [s.accession_number for s in studies]
    examination += [f"{s.study_date:%Y%m%d}" for s in studies] + [s.study_date.isoformat() for s in studies]
    for series in clinical_study.converted.series:
        examination += [series.series_instance_uid, series.series_description]
    leaked = sorted({value for value in examination if value and value in text})
    assert not leaked, f"the service log names {leaked}"


def test_orthanc_down_at_start_up_degrades_then_recovers(random_model: Path, tmp_path: Path) -> None:
    orthanc = LocalOrthanc(tmp_path / "late-orthanc")  # configured, not started
    env = service_env(orthanc.url, orthanc.auth, random_model, tmp_path / "results")
    with running_service(env, tmp_path / "service.log", tmp_path) as url:
        down = httpx.get(f"{url}/health", timeout=10).json()
        assert down["status"] == "degraded" and down["orthanc"]["reachable"] is False
        assert down["model"]["loaded"] is True
        unavailable = httpx.post(f"{url}/segment/ANYONE", timeout=30)
        assert unavailable.status_code == 503 and unavailable.json()["code"] == "pacs_unavailable"
        with orthanc:
            up = httpx.get(f"{url}/health", timeout=10).json()
            assert up["status"] == "ok" and up["orthanc"]["reachable"] is True


# -- concurrency and faults in the middle of a request (service in-process over ASGI, real Orthanc) ---------


def app_for(url: str, auth: tuple[str, str], model: Path, results: Path, **extra: object) -> FastAPI:
    return create_app(service_settings(url, auth, model_path=model, results_dir=results, **extra))


def test_simultaneous_requests_all_complete(
    clinical_study: UploadedStudy, orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    with TestClient(app_for(orthanc.url, orthanc.auth, random_model, tmp_path, queue_size=4)) as client:
        with ThreadPoolExecutor(max_workers=3) as pool:
            responses = list(
                pool.map(
                    lambda _: client.post(
                        f"/segment/{clinical_study.patient_id}", params={"reference": "t1ce"}
                    ),
                    range(3),
                )
            )
        assert [r.status_code for r in responses] == [200, 200, 200]
        ids = {r.json()["result_id"] for r in responses}
        assert len(ids) == 3  # identical requests are done safely twice: separate, complete results
        masks = {client.get(f"/results/{rid}/mask.nii.gz").content for rid in ids}
        assert len(masks) == 1


def test_a_full_queue_answers_503_with_retry_after(
    clinical_study: UploadedStudy, orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    app = app_for(orthanc.url, orthanc.auth, random_model, tmp_path, queue_size=0)
    with TestClient(app) as client:
        predictor = app.state.tumorseg.predictor
        inside, release = threading.Event(), threading.Event()
        original = predictor.predict

        def slow_predict(model_input: object) -> object:
            inside.set()
            release.wait(60)
            return original(model_input)

        predictor.predict = slow_predict
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(client.post, f"/segment/{clinical_study.patient_id}")
            assert inside.wait(120)
            busy = client.post(f"/segment/{clinical_study.patient_id}")
            release.set()
            assert first.result().status_code == 200
    assert busy.status_code == 503 and busy.json()["code"] == "busy"
    assert int(busy.headers["Retry-After"]) > 0


@pytest.fixture
def private_study(own_orthanc: LocalOrthanc, plain_study: ConvertedStudy, tmp_path: Path) -> str:
    """A clone of the plain study in a private Orthanc that a test may stop."""
    patient_id = clone_study(plain_study, tmp_path / "clone")
    with OrthancClient(own_orthanc.url, own_orthanc.auth) as pacs:
        assert not upload_directory(pacs, tmp_path / "clone", stable_timeout=60.0).failed
    return patient_id


def segment_with_fault(app: FastAPI, patient_id: str, fault: Callable[[SeriesInfo], None]) -> httpx.Response:
    """POST /segment with ``fault(series)`` happening just before each series download, i.e. after the
    study was found and mapped."""
    with TestClient(app) as client:
        pacs = app.state.tumorseg.pacs
        download = pacs.download_series

        def faulty_download(series: SeriesInfo, progress: object = None) -> list[bytes]:
            fault(series)
            return download(series)

        pacs.download_series = faulty_download
        return client.post(f"/segment/{patient_id}")


def test_orthanc_stopped_mid_request_is_503(
    own_orthanc: LocalOrthanc, private_study: str, random_model: Path, tmp_path: Path
) -> None:
    app = app_for(own_orthanc.url, own_orthanc.auth, random_model, tmp_path / "results")
    response = segment_with_fault(app, private_study, lambda series: own_orthanc.stop())
    assert response.status_code == 503 and response.json()["code"] == "pacs_unavailable"
    assert not list((tmp_path / "results").glob("[0-9a-f]*"))  # no half result


def test_series_deleted_while_fetched_is_422_naming_it(
    own_orthanc: LocalOrthanc, private_study: str, random_model: Path, tmp_path: Path
) -> None:
    app = app_for(own_orthanc.url, own_orthanc.auth, random_model, tmp_path / "results")
    deleted: list[str] = []
    lock = threading.Lock()

    def delete_first(series: SeriesInfo) -> None:
        with lock:
            if not deleted:  # the first series fetched vanishes from Orthanc just before
                with OrthancClient(own_orthanc.url, own_orthanc.auth) as pacs:
                    pacs.delete("series", series.key)
                deleted.append(series.series_instance_uid)

    response = segment_with_fault(app, private_study, delete_first)
    assert response.status_code == 422 and response.json()["code"] == "broken_series"
    assert deleted[0] in response.json()["detail"] and "changed in the PACS" in response.json()["detail"]


def test_corrupt_instance_is_422_naming_the_series(
    plain_study: ConvertedStudy, orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    def truncate(modality: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        if (modality, n) == ("t2", 7):
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
        return ds

    patient_id = clone_study(plain_study, tmp_path / "clone", edit=truncate)
    with orthanc.client() as pacs:
        assert not upload_directory(pacs, tmp_path / "clone", stable_timeout=60.0).failed
    with TestClient(app_for(orthanc.url, orthanc.auth, random_model, tmp_path / "results")) as client:
        response = client.post(f"/segment/{patient_id}")
    body = response.json()
    assert response.status_code == 422 and body["code"] == "broken_series"
    assert "t2" in body["detail"] and "cannot be decoded" in body["detail"]
