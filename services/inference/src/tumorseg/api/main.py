"""Wiring only: settings → state in ``lifespan``, routers, error handlers, request ids."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles

from tumorseg import __version__, metrics
from tumorseg.api.deps import AppState, ModelState, StateDep, require_api_key
from tumorseg.api.errors import error_response, install_error_handlers
from tumorseg.api.routes import health, jobs, pages, results, segment, timeline
from tumorseg.config import Settings, get_settings
from tumorseg.errors import ModelError
from tumorseg.export.dicom_seg import algorithm_tag
from tumorseg.jobs.queue import redacted
from tumorseg.logs import request_id_var
from tumorseg.memory import keep_freed_memory
from tumorseg.model.device import resolve_device
from tumorseg.model.package import read_manifest
from tumorseg.wiring import (
    load_predictor,
    open_jobs,
    open_pacs,
    open_queue,
    open_runner,
    open_store,
    open_trigger,
)

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Methods a browser may send cross-site without consequence: they change no state here.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` header names the host:port of the request's ``Host`` header.

    Default ports count as given (``https://a.example`` matches ``a.example:443``). ``null`` (a
    sandboxed frame, a local file) and anything unparsable are never the same origin.
    """
    scheme, sep, authority = origin.strip().lower().partition("://")
    default = _DEFAULT_PORTS.get(scheme)
    if not sep or default is None:
        return False
    theirs = _host_port(authority, default)
    return theirs is not None and theirs == _host_port(host.strip().lower(), default)


def _host_port(authority: str, default_port: int) -> tuple[str, int] | None:
    """``("a.example", 8000)`` from ``a.example:8000``; IPv6 literals keep their brackets."""
    if authority.startswith("["):
        name, bracket, rest = authority.partition("]")
        name, port = name + bracket, rest.removeprefix(":")
        if not bracket or (rest and not rest.startswith(":")):
            return None
    else:
        name, _, port = authority.partition(":")
    if not name or any(c in name for c in "/@?#"):
        return None
    if not port:
        return name, default_port
    return (name, int(port)) if port.isdigit() else None


def route_template(request: Request) -> str | None:
    """The template of the route that answered (``/jobs/{job_id}``; ``/static/{path}`` for a mount), never
    the path itself, which may hold a PatientID; ``None`` when nothing matched."""
    route = request.scope.get("route")
    if route is not None:
        return getattr(route, "path", None)
    mounted = request.scope.get("root_path", "")  # a mount (StaticFiles) sets its prefix and endpoint
    return f"{mounted}/{{path}}" if mounted and request.scope.get("endpoint") is not None else None


def metrics_key(state: StateDep, request: Request) -> None:
    """With ``TUMORSEG_METRICS_NEED_KEY``, the API key as X-API-Key or as a bearer token: Prometheus can
    send the latter (``authorization``), not a header of another name."""
    if not state.settings.metrics_need_key:
        return
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    require_api_key(state, request.headers.get("X-API-Key") or bearer)


def serve_metrics() -> Response:
    """``GET /metrics``: this process's Prometheus metrics (text format)."""
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Before the server starts its threads: a thread keeps the allocator arena it had (tumorseg.memory),
    # and the model is loaded, and requests run, in the server's worker threads.
    keep_freed_memory()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pacs = open_pacs(settings)
        device = resolve_device(settings.device)
        job_store = open_jobs(settings)
        queue = open_queue(settings)
        state = AppState(
            settings=settings,
            pacs=pacs,
            model=ModelState(name=settings.model_path.name),
            device=device,
            store=open_store(settings, job_store),
        )
        manifest = None
        try:
            if queue is None:
                state.predictor = await run_in_threadpool(load_predictor, settings, device)
                manifest = state.predictor.manifest
                metrics.model_loaded(state.predictor)
            else:  # the workers load the weights; the API needs the package's name and version
                manifest = read_manifest(settings.model_path)
            state.model = ModelState(**manifest.describe(), loaded=True)
        except ModelError as exc:
            # The service still starts: /health says degraded and /segment answers 503 with the reason.
            log.error("model not loaded: %s", exc.detail)
            state.model_error = exc.detail
        state.jobs = open_runner(settings, job_store, state.segmenter, state.store, queue)
        state.jobs.start()
        trigger = None
        if settings.auto_segment and manifest is not None:
            tag = algorithm_tag(manifest.name, manifest.version)
            trigger = open_trigger(settings, pacs, state.jobs, tag)
            trigger.start()
        app.state.tumorseg = state
        mode = "embedded jobs" if queue is None else f"jobs through {redacted(queue.url)}"
        log.info(
            "tumorseg %s started; %s at %s; %s", __version__, pacs.protocol, pacs.url, mode
        )  # no credentials
        try:
            yield
        finally:
            if trigger is not None:
                trigger.stop()
            if state.jobs.stop():  # else the runner still writes to it until the process exits
                job_store.close()
            if queue is not None:
                queue.close()
            pacs.close()

    app = FastAPI(
        title="tumorseg",
        version=__version__,
        description="Brain-tumour segmentation (BraTS 2021 labels) of MRI studies stored in Orthanc.",
        lifespan=lifespan,
        # /docs is served by pages.router from vendored files (FastAPI's loads a CDN); no ReDoc, no OAuth2.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    install_error_handlers(app)

    # Registered before ``request_id`` so that it runs inside it: a refusal carries X-Request-ID and is
    # logged like every other answer.
    @app.middleware("http")
    async def refuse_cross_site(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # A page on another site can make the user's browser POST here (no preflight for a form), and
        # in open mode nothing else would stop it. Scripts and curl send no Origin and pass.
        origin = request.headers.get("Origin")
        if (
            request.method not in _SAFE_METHODS
            and origin is not None
            and not same_origin(origin, request.headers.get("Host", ""))
        ):
            log.warning("refused a cross-site %s request", request.method)
            metrics.error_ended("cross_site_request")
            return error_response(
                403,
                "cross-site request refused: the Origin header does not match this service's host; "
                "send state-changing requests from the same origin, or without a browser",
                "cross_site_request",
            )
        return await call_next(request)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:
            # Answered here rather than by Starlette's outermost handler so that it carries the id too.
            log.exception("unexpected error")
            metrics.error_ended("internal_error", exc)
            response = error_response(
                500, "internal error; the service log has the details", "internal_error"
            )
        route = request.scope.get("route")
        log.info(
            "%s %s → %d",
            request.method,
            getattr(route, "path", "(no route)"),  # the template: never the raw path with a PatientID
            response.status_code,
            extra={
                "fields": {
                    "method": request.method,
                    "route": getattr(route, "path", None),
                    "status": response.status_code,
                    "duration_s": round(time.perf_counter() - started, 4),
                }
            },
        )
        metrics.request_answered(route_template(request), response.status_code)
        request_id_var.reset(token)
        response.headers["X-Request-ID"] = rid
        return response

    app.include_router(health.router)
    # Open like /health (counts and durations, no patient data: tumorseg.metrics) unless
    # TUMORSEG_METRICS_NEED_KEY; not in the OpenAPI.
    app.add_api_route(
        "/metrics",
        serve_metrics,
        methods=["GET"],
        dependencies=[Depends(metrics_key)],
        include_in_schema=False,
    )
    app.include_router(segment.router, dependencies=[Depends(require_api_key)])
    app.include_router(jobs.router, dependencies=[Depends(require_api_key)])
    app.include_router(results.router, dependencies=[Depends(require_api_key)])
    app.include_router(timeline.router, dependencies=[Depends(require_api_key)])
    # The HTML shells and their scripts: no data in them, so no key (the scripts send it for the data).
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
    return app
