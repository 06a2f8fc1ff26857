"""The timeline against a real Orthanc: one patient with three studies (clones of the phantom study on
three dates), segmented through the history route with the random-weight tiny model; the timeline's
volumes are the results', its changes are computed from them, a second history request queues nothing,
an unknown patient is a 404, and `tumorseg timeline` prints the same."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from tests.dicom_factory import unique_patient_id
from tests.orthanc import OrthancEndpoint, cli_with_env, segment_settings, service_env, upload_folder
from tests.studies import clone_study
from tumorseg.api.main import create_app
from tumorseg.cli import app as cli_app
from tumorseg.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration

DATES = ("20240110", "20240415", "20240720")


def _wait_done(api: TestClient, job_ids: list[str], timeout: float = 400.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [api.get(f"/jobs/{j}").json()["state"] for j in job_ids]
        if all(s not in ("queued", "running") for s in states):
            assert states == ["done"] * len(job_ids), states
            return
        time.sleep(1.0)
    pytest.fail("the history's jobs did not finish")


def test_history_segmented_and_compared(
    orthanc: OrthancEndpoint,
    plain_study: ConvertedStudy,
    random_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    patient_id = unique_patient_id("TIME")
    for n, date in enumerate(DATES):

        def edit(m: str, k: int, ds: pydicom.Dataset, date: str = date) -> pydicom.Dataset:
            ds.PatientID, ds.StudyDate = patient_id, date
            return ds

        clone_study(plain_study, tmp_path / f"study{n}", edit=edit)
        upload_folder(orthanc, tmp_path / f"study{n}")
    app = create_app(segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path / "results"))
    with TestClient(app) as api:
        assert api.get(f"/patients/{unique_patient_id('NOBODY')}/timeline").status_code == 404
        before = api.get(f"/patients/{patient_id}/timeline")
        assert before.status_code == 200, before.text
        assert [e["status"] for e in before.json()["studies"]] == ["not_segmented"] * 3

        queued = api.post(f"/patients/{patient_id}/timeline/segment")
        assert queued.status_code == 202, queued.text
        actions = queued.json()["studies"]
        assert [a["action"] for a in actions] == ["queued"] * 3
        again = api.post(f"/patients/{patient_id}/timeline/segment").json()["studies"]
        assert [a["action"] for a in again] == ["has_job"] * 3  # the same keys: no duplicate
        _wait_done(api, [a["job_id"] for a in actions])
        assert [
            a["action"] for a in api.post(f"/patients/{patient_id}/timeline/segment").json()["studies"]
        ] == ["has_result"] * 3

        timeline = api.get(f"/patients/{patient_id}/timeline").json()
        entries = timeline["studies"]
        assert [e["study_date"] for e in entries] == ["2024-01-10", "2024-04-15", "2024-07-20"]
        assert timeline["baseline_study_instance_uid"] == entries[0]["study_instance_uid"]
        for entry in entries:
            result = api.get(f"/results/{entry['result_id']}").json()
            assert entry["status"] == "segmented" and entry["current_model"]
            assert entry["volumes_ml"] == result["volumes_ml"]
            assert result["dicom_sr"] is not None  # the history's jobs store SEG and SR
            assert entry["viewer_url"] == f"/results/{entry['result_id']}/viewer"
        base = entries[0]["volumes_ml"]
        for entry in entries[1:]:
            for region, c in entry["change_from_baseline"].items():
                assert c["absolute_ml"] == pytest.approx(entry["volumes_ml"][region] - base[region], abs=1e-3)
                if base[region] >= 1.0:
                    assert c["relative"] == pytest.approx(c["absolute_ml"] / base[region], abs=1e-3)
                else:
                    assert c["relative"] is None
        assert entries[0]["change_from_baseline"] is None

    env = service_env(orthanc.url, orthanc.auth, random_model, tmp_path / "results")
    with cli_with_env(monkeypatch, env) as runner:
        printed = runner.invoke(cli_app, ["timeline", patient_id, "--json"])
        assert printed.exit_code == 0, printed.output
        assert '"baseline_study_instance_uid"' in printed.output
        table = runner.invoke(cli_app, ["timeline", patient_id])
        assert table.exit_code == 0 and "tiny 0.0.1" in table.output and "Research use only" in table.output
