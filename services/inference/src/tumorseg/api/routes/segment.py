"""``POST /segment/{patient_id}``: one segmentation, synchronously: a job the request waits for, whose
result JSON it returns (and whose error it answers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from tumorseg.api.deps import StateDep
from tumorseg.api.schemas import ERROR_RESPONSES
from tumorseg.schema import JobRequest, SegmentResult
from tumorseg.sequences import SequenceName

router = APIRouter(tags=["segmentation"])

_EXPLICIT = "SeriesInstanceUID to use as {} instead of the automatic mapping"


@router.post("/segment/{patient_id}", response_model=SegmentResult, responses=ERROR_RESPONSES)
def segment(
    state: StateDep,
    patient_id: Annotated[str, Path(description="DICOM PatientID (0010,0020)")],
    study: Annotated[
        str | None, Query(description="StudyInstanceUID; default: newest complete study")
    ] = None,
    reference: Annotated[
        SequenceName, Query(description="the series whose lattice the mask lies on")
    ] = "flair",
    store_seg: Annotated[bool, Query(description="also store a DICOM SEG in the study")] = False,
    registration: Annotated[
        bool | None,
        Query(
            description="co-register the series to the reference (on/off; default TUMORSEG_REGISTRATION): "
            "off for studies known to be pre-registered"
        ),
    ] = None,
    wait: Annotated[
        bool,
        Query(
            description="a study Orthanc has not marked stable yet (instances still arriving): wait for it, "
            "up to TUMORSEG_STABLE_WAIT_S, instead of answering 409 study_incomplete with Retry-After"
        ),
    ] = False,
    flair_series: Annotated[str | None, Query(description=_EXPLICIT.format("FLAIR"))] = None,
    t1_series: Annotated[str | None, Query(description=_EXPLICIT.format("T1"))] = None,
    t1ce_series: Annotated[str | None, Query(description=_EXPLICIT.format("T1ce"))] = None,
    t2_series: Annotated[str | None, Query(description=_EXPLICIT.format("T2"))] = None,
) -> SegmentResult:
    given: dict[SequenceName, str | None] = {
        "flair": flair_series,
        "t1": t1_series,
        "t1ce": t1ce_series,
        "t2": t2_series,
    }
    request = JobRequest(
        patient_id=patient_id,
        study=study,
        reference=reference,
        store_seg=store_seg,
        registration=registration,
        wait=wait,
        series={m: uid for m, uid in given.items() if uid} or None,
    )
    return state.job_runner().segment(request)
