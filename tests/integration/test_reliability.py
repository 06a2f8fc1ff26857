"""Reliability and security against real processes: logs without PHI, faults, recovery."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import OrthancEndpoint
from tests.integration.conftest import UploadedStudy
from tests.service import running_service
from tumorseg.pacs.local import LocalOrthanc

pytestmark = pytest.mark.integration


def service_env(url: str, auth: tuple[str, str], model: Path, results: Path) -> dict[str, str]:
    return {
        "TUMORSEG_ORTHANC_URL": url,
        "TUMORSEG_ORTHANC_USERNAME": auth[0],
        "TUMORSEG_ORTHANC_PASSWORD": auth[1],
        "TUMORSEG_MODEL_PATH": str(model),
        "TUMORSEG_RESULTS_DIR": str(results),
        "TUMORSEG_DEVICE": "cpu",
    }


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
