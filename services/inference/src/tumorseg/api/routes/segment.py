"""``POST /segment/{patient_id}``: declared with its final shape; the pipeline lands with the segment issue."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query

from tumorseg.api.schemas import ErrorBody, SegmentResult

router = APIRouter(tags=["segmentation"])

_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        401: "missing or wrong API key",
        404: "unknown patient or study",
        422: "the study cannot be used (missing/ambiguous modality, broken series)",
        501: "not implemented yet",
        502: "Orthanc answered wrongly (e.g. rejected credentials)",
        503: "Orthanc unreachable",
        504: "Orthanc too slow",
    }.items()
}


@router.post("/segment/{patient_id}", response_model=SegmentResult, responses=_ERRORS)
def segment(
    patient_id: Annotated[str, Path(description="DICOM PatientID (0010,0020)")],
    study: Annotated[str | None, Query(description="StudyInstanceUID; default: newest complete")] = None,
    reference: Annotated[
        Literal["flair", "t1", "t1ce", "t2"], Query(description="series whose lattice the mask lies on")
    ] = "flair",
    store_seg: Annotated[bool, Query(description="also store a DICOM SEG in the study")] = False,
) -> SegmentResult:
    raise HTTPException(status_code=501, detail="segmentation is not implemented yet")
