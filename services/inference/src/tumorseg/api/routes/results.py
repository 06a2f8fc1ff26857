"""``GET /results/{result_id}`` and its files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from tumorseg.api.deps import StateDep
from tumorseg.api.schemas import ERROR_RESPONSES
from tumorseg.results import FILES
from tumorseg.schema import SegmentResult

router = APIRouter(tags=["results"])

ResultId = Annotated[str, Path(description="32 hexadecimal digits, as returned by POST /segment")]


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


def _file(state: StateDep, result_id: str, name: str) -> Response:
    return Response(
        state.store.read_file(result_id, name),
        media_type=FILES[name],
        headers={"Content-Disposition": f'attachment; filename="{result_id}_{name}"'},
    )
