"""The timeline against a real Orthanc, with known truth: one patient's three follow-up phantom studies
(``tumorseg.synth.followup``: the same head, the tumour x1.0 at baseline, x1.8 three months later, x0.2
three months after that; positioned differently each time, new UIDs) segmented by the shipped model
through the history route. The timeline's volumes are the masks' volumes, its changes are computed from
them, the threshold fields are right for each study (+80 % from the nadir: progression; -80 % from the
baseline: response), a second history request queues nothing, each study has its SR, an unknown patient
is a 404, and `tumorseg timeline` prints the same."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from tests.dicom_factory import unique_patient_id
from tests.orthanc import OrthancEndpoint, cli_with_env, service_env, service_settings, upload_folder
from tumorseg.api.main import create_app
from tumorseg.cli import app as cli_app
from tumorseg.config import DEFAULT_MODEL_PATH
from tumorseg.imaging.postprocess import voxel_volume_mm3
from tumorseg.labels import volumes_ml
from tumorseg.synth.followup import TRUTH_JSON, write_followups

pytestmark = pytest.mark.integration

FACTORS = (1.0, 1.8, 0.2)
SEED = 424243  # not a training seed


@pytest.fixture(scope="module")
def followups(orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict]]:
    """The three visits uploaded under one new PatientID; their truth.json, baseline first."""
    patient_id = unique_patient_id("FOLLOW")
    out = tmp_path_factory.mktemp("followups")
    folders = write_followups(out, SEED, FACTORS, patient_id=patient_id)
    upload_folder(orthanc, out / "dicom")
    return patient_id, [json.loads((f / TRUTH_JSON).read_text()) for f in folders]


def _wait_done(api: TestClient, job_ids: list[str], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [api.get(f"/jobs/{j}").json()["state"] for j in job_ids]
        if all(s not in ("queued", "running") for s in states):
            assert states == ["done"] * len(job_ids), [api.get(f"/jobs/{j}").json() for j in job_ids]
            return
        time.sleep(1.0)
    pytest.fail("the history's jobs did not finish")


def test_history_segmented_and_compared(
    orthanc: OrthancEndpoint,
    followups: tuple[str, list[dict]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    patient_id, truths = followups
    results = tmp_path / "results"
    app = create_app(
        service_settings(orthanc.url, orthanc.auth, model_path=DEFAULT_MODEL_PATH, results_dir=results)
    )
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
        assert [a["action"] for a in again] == ["has_job"] * 3  # the auto-trigger's keys: no duplicate
        _wait_done(api, [a["job_id"] for a in actions])
        done = api.post(f"/patients/{patient_id}/timeline/segment").json()["studies"]
        assert [a["action"] for a in done] == ["has_result"] * 3

        timeline = api.get(f"/patients/{patient_id}/timeline").json()
        entries = timeline["studies"]
        assert [e["study_date"] for e in entries] == [t["study_date"] for t in truths]
        assert timeline["baseline_study_instance_uid"] == entries[0]["study_instance_uid"]
        masks = []
        for entry in entries:
            assert entry["status"] == "segmented" and entry["current_model"], entry
            result = api.get(f"/results/{entry['result_id']}").json()
            assert result["dicom_sr"] is not None  # the history's jobs store SEG and SR
            path = tmp_path / f"{entry['result_id']}.nii.gz"
            path.write_bytes(api.get(result["mask_url"]).content)
            mask = sitk.ReadImage(str(path))
            measured = volumes_ml(sitk.GetArrayFromImage(mask).astype(np.uint8), voxel_volume_mm3(mask))
            assert entry["volumes_ml"] == pytest.approx(measured, abs=0.01)  # the masks' volumes
            masks.append(measured)

    # The changes are those of the masks' volumes: baseline the first, nadir the smallest ET before.
    base, grown, shrunk = entries
    assert base["change_from_baseline"] is None and base["baseline"]
    for entry, nadir in ((grown, 0), (shrunk, 0 if masks[0]["et"] <= masks[1]["et"] else 1)):
        assert entry["nadir_study_instance_uid"] == entries[nadir]["study_instance_uid"]
        n = entries.index(entry)
        for region, c in entry["change_from_nadir"].items():
            assert c["absolute_ml"] == pytest.approx(masks[n][region] - masks[nadir][region], abs=0.01)
            reference = masks[nadir][region]
            expected = c["absolute_ml"] / reference if reference >= 1.0 else None  # no % of almost nothing
            assert c["relative"] == (pytest.approx(expected, abs=1e-3) if expected is not None else None)
        for region, c in entry["change_from_baseline"].items():
            assert c["absolute_ml"] == pytest.approx(masks[n][region] - masks[0][region], abs=0.01)
    # Known truth: ET x1.8 then x0.2 of the baseline.
    assert truths[1]["volumes_ml"]["et"] / truths[0]["volumes_ml"]["et"] == pytest.approx(1.8, rel=0.05)
    assert (grown["progression_threshold_crossed"], grown["response_threshold_crossed"]) == (True, False)
    assert (shrunk["progression_threshold_crossed"], shrunk["response_threshold_crossed"]) == (False, True)
    assert grown["note"].endswith(timeline["research_note"]) and "not a response assessment" in grown["note"]
    for n in (1, 2):
        assert entries[n]["change_from_baseline"]["et"]["relative"] == pytest.approx(
            truths[n]["factor"] - 1.0, abs=0.2
        )

    env = service_env(orthanc.url, orthanc.auth, DEFAULT_MODEL_PATH, results)
    with cli_with_env(monkeypatch, env) as runner:
        printed = runner.invoke(cli_app, ["timeline", patient_id, "--json"])
        assert printed.exit_code == 0, printed.output
        assert json.loads(printed.output)["studies"] == entries
        table = runner.invoke(cli_app, ["timeline", patient_id])
        assert table.exit_code == 0 and "Research use only" in table.output
