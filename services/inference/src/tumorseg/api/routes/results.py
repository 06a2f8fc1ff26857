"""``GET /results`` (newest first, paged), ``GET /results/{result_id}`` and its files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from tumorseg.api.deps import StateDep
from tumorseg.api.schemas import ERROR_RESPONSES
from tumorseg.api.urls import result_url
from tumorseg.results import FILES
from tumorseg.schema import ResultPage, ResultSummary, SegmentResult

router = APIRouter(tags=["results"])

ResultId = Annotated[str, Path(description="32 hexadecimal digits, as returned by POST /segment")]


@router.get("/results", response_model=ResultPage, responses=ERROR_RESPONSES)
def list_results(
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ResultPage:
    """The stored results, newest first: what the results page (``GET /``) shows."""
    total, page = state.store.recent(limit, offset)
    summaries = [
        ResultSummary.model_validate(
            {**r.model_dump(include=set(ResultSummary.model_fields)), "result_url": result_url(r.result_id)}
        )
        for r in page
    ]
    return ResultPage(results=summaries, total=total, limit=limit, offset=offset)


@router.get("/results/{result_id}", response_model=SegmentResult, responses=ERROR_RESPONSES)
def get_result(state: StateDep, result_id: ResultId) -> SegmentResult:
    return state.store.read(result_id)


@router.get(
    "/results/{result_id}/mask.nii.gz",
    response_class=Response,
    responses={200: {"content": {FILES["mask.nii.gz"]: {}}}, **ERROR_RESPONSES},
)
def get_mask(state: StateDep, result_id: ResultId) -> Response:
    return _file(state, result_id, "mask.nii.gz")


@router.get(
    "/results/{result_id}/preview.png",
    response_class=Response,
    responses={200: {"content": {FILES["preview.png"]: {}}}, **ERROR_RESPONSES},
)
def get_preview(state: StateDep, result_id: ResultId) -> Response:
    """The reference image with the mask overlaid: axial, coronal and sagittal planes through the tumour."""
    return _file(state, result_id, "preview.png")


@router.get(
    "/results/{result_id}/reference.nii.gz",
    response_class=Response,
    responses={200: {"content": {FILES["reference.nii.gz"]: {}}}, **ERROR_RESPONSES},
)
def get_reference(state: StateDep, result_id: ResultId) -> Response:
    """The reference series as NIfTI on exactly the mask's lattice (the viewer's image), written at
    export; results made before the viewer existed have none (404)."""
    return _file(state, result_id, "reference.nii.gz")


def _file(state: StateDep, result_id: str, name: str) -> Response:
    return Response(
        state.store.read_file(result_id, name),
        media_type=FILES[name],
        headers={"Content-Disposition": f'attachment; filename="{result_id}_{name}"'},
    )
