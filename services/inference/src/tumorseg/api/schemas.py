"""Response bodies of the HTTP API that are not the result JSON (``tumorseg.schema``): errors and health,
exactly the shapes of docs/contract.md, and the error responses the routes declare in the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str
    code: str


class OrthancHealth(BaseModel):
    reachable: bool
    version: str | None


class ModelHealth(BaseModel):
    name: str
    version: str | None = None
    backend: str | None = Field(None, description="monai-unet, monai-bundle or nnunet-v2")
    provenance: dict[str, Any] = Field(default_factory=dict, description="where an imported model came from")
    loaded: bool = Field(
        description="the package is loaded (distributed mode: readable; the workers load the weights)"
    )
    fast_path: str | None = Field(
        None,
        description='the fused CPU path: "fused", "plain (why)" where it disagreed with the plain network '
        'when the model loaded (the plain one runs), "off" where unused; null where no model runs here',
    )


class QueueHealth(BaseModel):
    reachable: bool = Field(description="Redis answers (distributed mode, TUMORSEG_QUEUE_URL)")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    orthanc: OrthancHealth
    queue: QueueHealth | None = Field(default=None, description="distributed mode only")
    model: ModelHealth
    device: Literal["cpu", "cuda"]


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        401: "missing or wrong API key",
        404: "unknown patient, study or result",
        409: "the study is still receiving instances (code study_incomplete, Retry-After; or use ?wait=true); "
        "or the result's job has not finished (code result_pending, Retry-After)",
        422: "the request or the study cannot be used (missing/ambiguous modality, broken series, a series "
        "over a size limit, series that do not overlap); or the result's job failed (code result_failed)",
        502: "Orthanc answered wrongly (e.g. rejected credentials)",
        503: "Orthanc or Redis unreachable, model not loaded, or the queue is full (Retry-After)",
        504: "Orthanc too slow",
    }.items()
}
