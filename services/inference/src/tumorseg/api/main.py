"""Wiring only: settings → state in ``lifespan``, routers, error handlers, request ids."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

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
from tumorseg.jobs.queue import JobQueue, redacted
from tumorseg.jobs.trigger import AutoTrigger
from tumorseg.jobstore import JobStore
from tumorseg.logs import request_id_var
from tumorseg.model.device import resolve_device
from tumorseg.model.package import ModelManifest, read_manifest
from tumorseg.wiring import (
    ProcessSetup,
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


def create_app(settings: Settings | None = None, process: ProcessSetup | None = None) -> FastAPI:
    """The API on ``settings`` (default: the environment's). ``process``: what the entry point set for the
    whole process (``wiring.configure_process``, in ``tumorseg serve``); creating or starting the app
    changes nothing process-wide itself, so a test may build one in pytest's process."""
    settings = settings or get_settings()
    app = FastAPI(
        title="tumorseg",
        version=__version__,
        description="Brain-tumour segmentation (BraTS 2021 labels) of MRI studies stored in Orthanc.",
        lifespan=_lifespan(settings, process),
        # /docs is served by pages.router from vendored files (FastAPI's loads a CDN); no ReDoc, no OAuth2.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    install_error_handlers(app)
    # ``refuse_cross_site`` first, so that it runs inside ``request_id``: a refusal carries X-Request-ID
    # and is logged like every other answer.
    app.middleware("http")(refuse_cross_site)
    app.middleware("http")(request_id)
    _include_routes(app)
    return app


@dataclass
class _Running:
    """What the lifespan opened and started, in the order ``stop`` undoes it."""

    state: AppState
    job_store: JobStore
    queue: JobQueue | None
    trigger: AutoTrigger | None = None

    def stop(self) -> None:
        if self.trigger is not None:
            self.trigger.stop()
        if self.state.job_runner().stop():  # else the runner still writes to it until the process exits
            self.job_store.close()
        if self.queue is not None:
            self.queue.close()
        self.state.pacs.close()


def _lifespan(
    settings: Settings, process: ProcessSetup | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The application's state from ``settings`` for as long as it serves (``app.state.tumorseg``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = await _start(settings, process)
        app.state.tumorseg = running.state
        try:
            yield
        finally:
            running.stop()

    return lifespan


async def _start(settings: Settings, process: ProcessSetup | None) -> _Running:
    """The PACS client, the stores, the model, the job runner and (``TUMORSEG_AUTO_SEGMENT``) the
    auto-trigger, started."""
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
    manifest = await _load_model(state, queue is None, process)
    state.jobs = open_runner(settings, job_store, state.segmenter, state.store, queue)
    state.jobs.start()
    running = _Running(state, job_store, queue)
    if settings.auto_segment and manifest is not None:
        running.trigger = open_trigger(
            settings, pacs, state.jobs, algorithm_tag(manifest.name, manifest.version)
        )
        running.trigger.start()
    mode = "embedded jobs" if queue is None else f"jobs through {redacted(queue.url)}"
    log.info(
        "tumorseg %s started; %s at %s; %s", __version__, pacs.protocol, pacs.url, mode
    )  # no credentials
    return running


async def _load_model(state: AppState, embedded: bool, process: ProcessSetup | None) -> ModelManifest | None:
    """The model package: loaded and warmed up when jobs run in this process (``embedded``), else only
    its manifest (the workers load the weights; the API needs the package's name and version). None when
    it cannot be used: the service still starts, /health says degraded and /segment answers 503 with the
    reason."""
    settings = state.settings
    try:
        if embedded:
            state.predictor = await run_in_threadpool(load_predictor, settings, state.device, process)
            manifest = state.predictor.manifest
            metrics.model_loaded(state.predictor)
        else:
            manifest = read_manifest(settings.model_path)
    except ModelError as exc:
        log.error("model not loaded: %s", exc.detail)
        state.model_error = exc.detail
        return None
    state.model = ModelState(**manifest.describe(), loaded=True)
    return manifest


async def refuse_cross_site(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """A 403 for a state-changing request whose ``Origin`` is another site's. A page on another site can make
    the user's browser POST here (no preflight for a form), and in open mode nothing else would stop it.
    Scripts and curl send no Origin and pass."""
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


async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Every answer carries ``X-Request-ID`` (the caller's, if well-formed, else a new one, also in the log
    lines of the request) and is logged and counted; an unexpected error is a 500 that carries it too."""
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
        response = error_response(500, "internal error; the service log has the details", "internal_error")
    _log_answer(request, response, started)
    request_id_var.reset(token)
    response.headers["X-Request-ID"] = rid
    return response


def _log_answer(request: Request, response: Response, started: float) -> None:
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


def _include_routes(app: FastAPI) -> None:
    """The routers, each behind the API key but ``/health``, ``/metrics`` and the pages; the static files."""
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
    for router in (segment.router, jobs.router, results.router, timeline.router):
        app.include_router(router, dependencies=[Depends(require_api_key)])
    # The HTML shells and their scripts: no data in them, so no key (the scripts send it for the data).
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.STATIC_DIR), name="static")
