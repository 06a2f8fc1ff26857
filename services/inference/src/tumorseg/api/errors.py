"""The one place where tumorseg's errors become HTTP answers: ``{"detail": str, "code": str}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tumorseg import errors, metrics

log = logging.getLogger(__name__)

# Most specific class first; the first isinstance match wins.
STATUS_BY_ERROR: list[tuple[type[errors.TumorsegError], int]] = [
    (errors.PacsUnavailable, 503),
    (errors.PacsTimeout, 504),
    (errors.PacsRejected, 502),
    (errors.PacsNotFound, 404),
    (errors.PacsError, 502),
    (errors.PatientNotFound, 404),
    (errors.StudyNotFound, 404),
    (errors.StudyIncomplete, 409),
    (errors.StudyError, 422),
    (errors.ResultNotFound, 404),
    (errors.ResultPending, 409),
    (errors.ResultFailed, 422),
    (errors.InvalidInput, 422),
    (errors.ModelError, 503),
    (errors.Busy, 503),
    (errors.QueueUnavailable, 503),
    (errors.DatabaseUnavailable, 503),  # PostgreSQL down or restarting: Retry-After, never a 500
    (errors.TumorsegError, 500),
]

_CODE_BY_STATUS = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    501: "not_implemented",
    503: "unavailable",
}


def status_for(exc: errors.TumorsegError) -> int:
    return next(status for cls, status in STATUS_BY_ERROR if isinstance(exc, cls))


def error_response(
    status: int, detail: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, "code": code}, headers=headers)


async def _tumorseg_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.TumorsegError)
    status = status_for(exc)
    # Study and input errors quote PatientIDs and series descriptions back to the caller; the log keeps
    # only their code. PACS and model errors carry no patient data and help the operator.
    detail = (
        exc.detail if isinstance(exc, errors.PacsError | errors.ModelError) else "(detail sent to the client)"
    )
    log.warning(
        "request failed: %s → %d: %s",
        exc.code,
        status,
        detail,
        extra={"fields": {"code": exc.code, "status": status}},
    )
    metrics.error_ended(exc.code, exc)  # not again for a job's error: the job's end counted it
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return error_response(status, exc.detail, exc.code, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_BY_STATUS.get(exc.status_code, f"http_{exc.status_code}")
    metrics.error_ended(code)
    return error_response(exc.status_code, str(exc.detail), code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for item in exc.errors():
        where = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    metrics.error_ended("invalid_input")
    return error_response(422, "; ".join(parts) or "invalid request", "invalid_input")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.TumorsegError, _tumorseg_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
