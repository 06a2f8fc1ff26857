"""Helpers of the job tests (embedded and distributed): waiting for a job to end, counting SEG series."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from tests.orthanc import OrthancEndpoint

# Jobs in these tests skip the slow optional stages: plumbing, not accuracy, is under test.
FAST = {"registration": False, "brain_extractor": "none"}
FAST_ENV = {name: str(value).lower() for name, value in FAST.items()}


def until_finished(client: TestClient, job_id: str, timeout: float = 300.0) -> dict[str, object]:
    """The job once it has ended (done, failed or skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def job_of(client: TestClient, patient_id: str, timeout: float = 300.0) -> dict[str, object]:
    """The one job of a patient, once it has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = client.get("/jobs", params={"patient_id": patient_id}).json()["jobs"]
        if jobs and jobs[0]["state"] not in ("queued", "running"):
            assert len(jobs) == 1, jobs
            return dict(jobs[0])
        time.sleep(0.3)
    raise AssertionError(f"no finished job for {patient_id} in {timeout} s")


def seg_series(orthanc: OrthancEndpoint, patient_id: str) -> int:
    """How many SEG series the patient's one study has in Orthanc."""
    with orthanc.client() as pacs:
        (study,) = pacs.find_studies(patient_id)
        return sum(modality == "SEG" for modality, _ in pacs.series_versions(study.key))
