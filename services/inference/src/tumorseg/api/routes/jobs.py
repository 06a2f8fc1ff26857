"""``POST /jobs``, ``GET /jobs/{job_id}``, ``GET /jobs``: segmentations queued and run in order."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from tumorseg.api.deps import StateDep
from tumorseg.api.schemas import ERROR_RESPONSES
from tumorseg.api.urls import linked_job
from tumorseg.errors import ResultNotFound
from tumorseg.jobstore import MAX_OFFSET
from tumorseg.schema import Job, JobPage, JobRequest, JobState

router = APIRouter(tags=["jobs"])

JobId = Annotated[
    str, Path(pattern=r"^[0-9a-f]{32}$", description="32 hexadecimal digits, as returned by POST /jobs")
]


@router.post("/jobs", status_code=202, response_model=Job, responses=ERROR_RESPONSES)
def submit_job(state: StateDep, request: JobRequest, response: Response) -> Job:
    """Queue a segmentation; the answer names the job (``Location``) and the result id it will have."""
    job = state.job_runner().submit(request)
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return linked_job(job)


@router.get("/jobs/{job_id}", response_model=Job, responses=ERROR_RESPONSES)
def get_job(state: StateDep, job_id: JobId) -> Job:
    job = state.job_runner().store.get(job_id)
    if job is None:
        raise ResultNotFound(f"no job {job_id}")
    return linked_job(job)


@router.get("/jobs", response_model=JobPage, responses=ERROR_RESPONSES)
def list_jobs(
    state: StateDep,
    job_state: Annotated[JobState | None, Query(alias="state", description="only jobs in this state")] = None,
    patient_id: Annotated[str | None, Query(description="only this patient's jobs")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobPage:
    """Jobs, newest first, a page at a time."""
    jobs, total = state.job_runner().store.list(
        state=job_state, patient_id=patient_id, limit=limit, offset=offset
    )
    return JobPage(jobs=[linked_job(j) for j in jobs], total=total, limit=limit, offset=offset)
