"""Issue 41's acceptance: a real Prometheus (the Debian package) scrapes a real ``tumorseg serve`` and a
real ``tumorseg worker`` (distributed mode over a real Redis, against the session's Orthanc) while a study
is segmented through the queue, and what it stored is read back through its HTTP query API."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.jobs import FAST_ENV, until_finished
from tests.orthanc import OrthancEndpoint, service_env, upload_folder
from tests.studies import clone_study
from tumorseg_devkit.launcher import LocalService, LocalWorker
from tumorseg_devkit.local import LocalPrometheus, LocalRedis, free_port
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration

SCRAPE_S = 1.0


def _identifiers(folder: Path) -> set[str]:
    """The PatientID and every UID of the study written under ``folder``."""
    found: set[str] = set()
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found |= {ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    return found


def _until(prometheus: LocalPrometheus, expr: str, timeout: float = 30.0) -> list[dict[str, object]]:
    """The non-empty result of ``expr`` once Prometheus has scraped what makes it so."""
    deadline = time.monotonic() + timeout
    while not (result := prometheus.query(expr)):
        assert time.monotonic() < deadline, f"Prometheus has no {expr} after {timeout:g} s"
        time.sleep(SCRAPE_S / 2)
    return result


def _by_job(result: list[dict[str, object]]) -> dict[str, float]:
    return {str(s["metric"]["job"]): float(s["value"][1]) for s in result}  # type: ignore[index]


def test_prometheus_scrapes_the_api_and_a_worker_through_a_queued_segmentation(
    orthanc: OrthancEndpoint,
    plain_study: ConvertedStudy,
    random_model: Path,
    redis_server: LocalRedis,
    tmp_path: Path,
) -> None:
    patient = clone_study(plain_study, tmp_path / "study")
    partial = clone_study(plain_study, tmp_path / "partial", modalities=("t1", "t2"))
    for folder in ("study", "partial"):
        upload_folder(orthanc, tmp_path / folder)
    identifiers = _identifiers(tmp_path / "study") | _identifiers(tmp_path / "partial")
    assert {patient, partial} <= identifiers
    env = service_env(
        orthanc.url, orthanc.auth, random_model, tmp_path / "results", queue_url=redis_server.url, **FAST_ENV
    )
    api_port, worker_port = free_port(), free_port()
    targets = {"tumorseg-api": [f"127.0.0.1:{api_port}"], "tumorseg-worker": [f"127.0.0.1:{worker_port}"]}
    with (
        LocalPrometheus(tmp_path / "prometheus", targets, interval_s=SCRAPE_S) as prometheus,
        LocalWorker(
            {**env, "TUMORSEG_METRICS_PORT": str(worker_port)},
            tmp_path / "worker.log",
            cwd=tmp_path,
            timeout=180,
        ),
        LocalService(env, tmp_path / "api.log", cwd=tmp_path, port=api_port) as api,
        httpx.Client(base_url=api.url, timeout=60) as client,
    ):
        job = client.post("/jobs", json={"patient_id": patient}).json()
        assert until_finished(client, str(job["job_id"]))["state"] == "done"  # type: ignore[arg-type]
        refused = client.post(f"/segment/{partial}")  # the worker skips the job, the API answers 422
        assert refused.status_code == 422 and refused.json()["code"] == "modality_missing"

        # the stages ran in the worker, and only there
        inference = _until(prometheus, 'tumorseg_stage_seconds_count{stage="inference"} >= 1')
        assert set(_by_job(inference)) == {"tumorseg-worker"}
        stages = {s["metric"]["stage"] for s in prometheus.query("tumorseg_stage_seconds_count > 0")}  # type: ignore[index]
        assert {"fetch", "load", "preprocess", "inference", "postprocess", "export"} <= stages
        assert "total" not in stages
        # the API reads the job store: the done job, whatever the worker did
        assert _by_job(_until(prometheus, 'tumorseg_jobs{state="done"} >= 1')) == {"tumorseg-api": 1.0}
        # (the skipped job ended just before the 422: wait for a scrape that saw it, as for the done one)
        assert _by_job(_until(prometheus, 'tumorseg_jobs{state="skipped"} >= 1')) == {"tumorseg-api": 1.0}
        (model,) = _until(prometheus, "tumorseg_model_info == 1")
        labels = model["metric"]
        assert labels["job"] == "tumorseg-worker" and labels["device"] == "cpu"  # type: ignore[index]
        assert labels["cpu_path"] in ("fused", "plain")  # type: ignore[index]
        done = prometheus.query('tumorseg_segmentations_total{outcome="done"} > 0')
        assert _by_job(done) == {"tumorseg-worker": 1.0}
        # the skipped job's error: counted once, by the worker that ended it, not again by the API's 422
        skipped = 'sum(tumorseg_errors_total{code="modality_missing"})'
        _until(prometheus, f"{skipped} >= 1")
        time.sleep(3 * SCRAPE_S)
        assert float(prometheus.query(skipped)[0]["value"][1]) == 1.0  # type: ignore[index]
        # no auto-trigger anywhere; both processes up
        assert _by_job(prometheus.query("tumorseg_trigger_leader")) == {
            "tumorseg-api": 0.0,
            "tumorseg-worker": 0.0,
        }
        assert _by_job(prometheus.query("up")) == {"tumorseg-api": 1.0, "tumorseg-worker": 1.0}
        requests = prometheus.query('tumorseg_requests_total{route="/segment/{patient_id}",status="422"}')
        assert _by_job(requests) == {"tumorseg-api": 1.0}

        # no patient identifier or UID in any series Prometheus holds, nor in what either process serves
        series = prometheus.series()
        assert {s["__name__"] for s in series} >= {"tumorseg_requests_total", "tumorseg_jobs"}
        leaked = [s for s in series if any(i in v for v in s.values() for i in identifiers)]
        assert not leaked, leaked
        for url in (f"{api.url}/metrics", f"http://127.0.0.1:{worker_port}/metrics"):
            text = httpx.get(url, timeout=10).text
            assert "tumorseg_stage_seconds" in text
            assert not [i for i in identifiers if i in text]
