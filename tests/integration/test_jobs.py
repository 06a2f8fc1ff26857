"""Jobs in the embedded default (issue 17): POST /jobs, their states, results known before they exist,
skipped studies, and a job list that survives a restart, against a real Orthanc."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.jobs import FAST, job_of, seg_series, until_finished
from tests.orthanc import OrthancEndpoint, segment_settings, upload_folder
from tests.studies import clone_study
from tumorseg.api.main import create_app
from tumorseg.jobs.embedded import STALE_S
from tumorseg.jobstore import JOBS_DB, JobStore
from tumorseg.results import new_result_id
from tumorseg.schema import JobRequest
from tumorseg_devkit.local import LocalOrthanc
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration

AGE_S = STALE_S - 3  # a cut-off job's heartbeat: stale a few seconds after the service starts


def _client(orthanc: OrthancEndpoint, model: Path, results: Path) -> TestClient:
    return TestClient(create_app(segment_settings(orthanc.url, orthanc.auth, model, results, **FAST)))


def test_a_job_runs_later_and_its_result_id_is_known_from_the_start(
    plain_study: ConvertedStudy, orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    patient_id = clone_study(plain_study, tmp_path / "full")
    partial_id = clone_study(plain_study, tmp_path / "partial", modalities=("t1", "t2"))
    upload_folder(orthanc, tmp_path / "full")
    upload_folder(orthanc, tmp_path / "partial")
    with _client(orthanc, random_model, tmp_path / "results") as client:
        answer = client.post("/jobs", json={"patient_id": patient_id, "reference": "t1"})
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert answer.headers["Location"] == f"/jobs/{job['job_id']}"
        assert job["state"] in ("queued", "running") and job["origin"] == "api"
        pending = client.get(f"/results/{job['result_id']}")
        assert pending.status_code == 409 and pending.json()["code"] == "result_pending"
        assert job["job_id"] in pending.json()["detail"] and int(pending.headers["Retry-After"]) > 0

        skipped = client.post("/jobs", json={"patient_id": partial_id}).json()
        done = until_finished(client, str(job["job_id"]))
        assert done["state"] == "done" and done["result_url"] == f"/results/{job['result_id']}"
        assert done["study_instance_uid"] and done["attempts"] == 1 and done["finished_at"]
        result = client.get(f"/results/{job['result_id']}")
        assert result.status_code == 200 and result.json()["reference"]["modality"] == "t1"
        assert client.get(f"/results/{job['result_id']}/mask.nii.gz").status_code == 200

        # A study without the four sequences has nothing to segment: skipped, with the reason.
        finished = until_finished(client, str(skipped["job_id"]))
        assert finished["state"] == "skipped" and finished["code"] == "modality_missing"
        assert "flair" in str(finished["reason"]).lower()
        failed = client.get(f"/results/{skipped['result_id']}")
        assert failed.status_code == 422 and failed.json()["code"] == "result_failed"

        listed = client.get("/jobs").json()
        assert [j["job_id"] for j in listed["jobs"]] == [skipped["job_id"], job["job_id"]]  # newest first
        assert listed["total"] == 2
        only = client.get("/jobs", params={"state": "skipped"}).json()
        assert [j["job_id"] for j in only["jobs"]] == [skipped["job_id"]]
        mine = client.get("/jobs", params={"patient_id": patient_id, "limit": 1}).json()
        assert [j["job_id"] for j in mine["jobs"]] == [job["job_id"]] and mine["limit"] == 1
        assert client.get(f"/jobs/{new_result_id()}").status_code == 404


def test_the_job_list_survives_a_restart_and_a_job_cut_off_runs_again(
    plain_study: ConvertedStudy, orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    patient_id = clone_study(plain_study, tmp_path / "study")
    upload_folder(orthanc, tmp_path / "study")
    results = tmp_path / "results"
    # A process died while running this job: the store says running, no result exists. Its last heartbeat
    # is AGE_S old (it died that long ago), so the restarted service takes the job over as soon as that is
    # stale (STALE_S), seconds after it starts rather than a minute.
    store = JobStore(results)
    cut_off = store.create(JobRequest(patient_id=patient_id), "api", new_result_id())
    assert store.claim_next() is not None
    store.close()
    with closing(sqlite3.connect(results / JOBS_DB)) as db, db:
        db.execute(
            "UPDATE jobs SET started_at = started_at - ?, heartbeat_at = heartbeat_at - ?", (AGE_S, AGE_S)
        )

    with _client(orthanc, random_model, results) as client:
        rerun = until_finished(client, cut_off.job_id)
        assert rerun["state"] == "done" and rerun["attempts"] == 2
        assert client.get(f"/results/{cut_off.result_id}").status_code == 200
    with _client(orthanc, random_model, results) as client:  # a restart: the list is still there
        again = client.get(f"/jobs/{cut_off.job_id}").json()
        assert again["state"] == "done" and again["attempts"] == 2  # not run a third time
        assert client.get("/jobs").json()["total"] == 1


MALFORMED = [
    {},
    {"patient_id": ""},
    {"patient_id": "P", "reference": "dwi"},
    {"patient_id": "P", "color": 1},
    {"patient_id": "P", "study": "not a uid"},
]


def test_a_malformed_job_is_refused_before_it_is_queued(
    orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    with _client(orthanc, random_model, tmp_path / "results") as client:
        for body in MALFORMED:
            answer = client.post("/jobs", json=body)
            assert answer.status_code == 422 and answer.json()["code"] == "invalid_input", body
        assert client.get("/jobs").json()["total"] == 0


def test_auto_segment_makes_one_job_per_study_content_across_restarts(
    own_orthanc: LocalOrthanc, plain_study: ConvertedStudy, random_model: Path, tmp_path: Path
) -> None:
    orthanc = OrthancEndpoint(own_orthanc.url, *own_orthanc.auth)
    settings = segment_settings(
        orthanc.url,
        orthanc.auth,
        random_model,
        tmp_path / "results",
        auto_segment=True,
        auto_segment_poll_s=0.3,
        **FAST,
    )
    before = clone_study(plain_study, tmp_path / "before")
    upload_folder(orthanc, tmp_path / "before")  # stable before the first start: found by reconciling
    with TestClient(create_app(settings)) as client:
        first = job_of(client, before)
        assert (first["state"], first["origin"]) == ("done", "auto"), first
        assert first["request"]["store_seg"] is True  # type: ignore[index]
        partial = clone_study(plain_study, tmp_path / "partial", modalities=("t1", "t2"))
        upload_folder(orthanc, tmp_path / "partial")  # arrives while running: found in /changes
        skipped = job_of(client, partial)
        assert skipped["state"] == "skipped" and skipped["code"] == "modality_missing"
        time.sleep(4)  # our SEG made the first study stable again (StableAge 1 s): no job for that
        assert client.get("/jobs").json()["total"] == 2
    while_down = clone_study(plain_study, tmp_path / "down")
    upload_folder(orthanc, tmp_path / "down")  # arrives while the service is down
    with TestClient(create_app(settings)) as client:
        late = job_of(client, while_down)
        assert late["state"] == "done"
        time.sleep(2)
        jobs = client.get("/jobs").json()
        assert jobs["total"] == 3, jobs  # none repeated, none lost
    assert seg_series(orthanc, before) == 1 and seg_series(orthanc, while_down) == 1
    assert seg_series(orthanc, partial) == 0
