"""Prometheus metrics: one registry per process, what the API serves at ``GET /metrics`` and a worker on
``TUMORSEG_METRICS_PORT``.

Each process counts only what happens in it, so that a ``sum()`` over the scraped processes is the
fleet's figure: the stages and outcome of a segmentation where it ran (the API's job runner, or a
worker), a request where it was answered, an error once where it ended (``error_ended``). The one
exception is ``tumorseg_jobs``: it is read from the job store that every API process shares, at scrape
time, by the processes that run the job sweep or runner (``Jobs.start``: the API, not the workers), so
several API replicas export the same figures and dashboards take ``max by (state)`` of it, never a sum.

    tumorseg_stage_seconds{stage}                  histogram: each stage of a segmentation (timings_s)
    tumorseg_segmentations_total{network,outcome}  counter: segmentations that ended (done/failed/skipped)
    tumorseg_segmentations_running                 gauge: segmentations running in this process now
    tumorseg_requests_total{route,status}          counter: HTTP answers (route template, or "unmatched")
    tumorseg_errors_total{code}                    counter: errors by contract code, once where each ends
    tumorseg_jobs{state}                           gauge: the job store's jobs by state (API processes)
    tumorseg_trigger_leader                        gauge: 1 in the process running the auto-trigger
    tumorseg_model_info{name,version,device,cpu_path}  gauge 1: the model this process loaded

No label carries a patient identifier, a UID or a name: routes are templates, codes and stages are the
service's own words, and the model's name and version come from its package.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tumorseg.model.predictor import Predictor

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED = "unmatched"  # the route label of a request no route matched (a raw path could hold a PatientID)
NO_NETWORK = "none"  # the network label of a segmentation that ended before a network was chosen
OUTCOMES = ("done", "failed", "skipped")
NETWORKS = ("main", "fallback")
# Seconds: a stage takes milliseconds (load from the cache) to minutes (fetch of a large study).
STAGE_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
_COUNTED = "_tumorseg_error_counted"  # set on an exception once errors_total has it (or another process)

disable_created_metrics()  # no *_created series: a restart is visible in process_start_time_seconds
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_* (memory, CPU, open files, start time)
PlatformCollector(registry=REGISTRY)

STAGE_SECONDS = Histogram(
    "tumorseg_stage_seconds",
    "Seconds each stage of a segmentation took (the stages of timings_s, not their total), where it ran.",
    ["stage"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
SEGMENTATIONS = Counter(
    "tumorseg_segmentations",
    "Segmentations (jobs, including POST /segment) that ended, by network (main, fallback, or none when "
    "it ended before one was chosen) and outcome (done, failed, skipped).",
    ["network", "outcome"],
    registry=REGISTRY,
)
RUNNING = Gauge(
    "tumorseg_segmentations_running",
    "Segmentations this process runs now (0 or 1 on a worker).",
    registry=REGISTRY,
)
REQUESTS = Counter(
    "tumorseg_requests",
    "HTTP requests answered, by route template (unmatched for unknown paths) and status.",
    ["route", "status"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "tumorseg_errors",
    "Errors by contract code, counted once where each ends: the answer of a request, or the end of a job.",
    ["code"],
    registry=REGISTRY,
)
TRIGGER_LEADER = Gauge(
    "tumorseg_trigger_leader",
    "1 in the process that runs the auto-trigger (TUMORSEG_AUTO_SEGMENT), 0 elsewhere.",
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "tumorseg_model_info",
    "1, labelled with the model package this process loaded, its device and the CPU path (fused, plain; "
    "none off the CPU).",
    ["name", "version", "device", "cpu_path"],
    registry=REGISTRY,
)
for _network in NETWORKS:  # series exist from the start, so a rate() sees the first one
    for _outcome in OUTCOMES:
        SEGMENTATIONS.labels(_network, _outcome)


class _JobsCollector(Collector):
    """``tumorseg_jobs{state}``, read at scrape time from the source ``watch_jobs`` gave (none: absent)."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, int]] | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # registered without a collect() (the store may not be open yet)

    def collect(self) -> Iterator[Metric]:
        source = self.source
        if source is None:
            return
        try:
            counts = source()
        except Exception as exc:  # the store busy or gone: this scrape lacks the series, the next has it
            log.warning("metrics: job counts not read: %s", type(exc).__name__)
            return
        family = GaugeMetricFamily(
            "tumorseg_jobs",
            "Jobs in the shared job store by state; every API process exports the same figures: take "
            "max by (state), never sum.",
            labels=["state"],
        )
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family


_JOBS = _JobsCollector()
REGISTRY.register(_JOBS)


def exposition() -> bytes:
    """This process's metrics in Prometheus's text format (``CONTENT_TYPE``)."""
    return generate_latest(REGISTRY)


def serve(port: int, host: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (a worker, which has no HTTP API); port 0
    picks a free one. Returns the port and logs it."""
    server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    bound = int(server.server_port)
    log.info("metrics at http://%s:%d/metrics", host, bound, extra={"fields": {"metrics_port": bound}})
    return bound


def request_answered(route: str | None, status: int) -> None:
    """One HTTP answer; ``route`` is the matched route's template (``/jobs/{job_id}``), never the path."""
    REQUESTS.labels(route or UNMATCHED, str(status)).inc()


def error_ended(code: str, exc: BaseException | None = None) -> None:
    """Count an error where it ends. With ``exc``: only if it was not counted yet (a job's error that a
    synchronous request answers too), and it is marked counted."""
    if exc is not None:
        if counted(exc):
            return
        setattr(exc, _COUNTED, True)
    ERRORS.labels(code).inc()


def counted(exc: BaseException) -> bool:
    return bool(getattr(exc, _COUNTED, False))


def counted_elsewhere(exc: BaseException) -> BaseException:
    """``exc`` marked as counted: another process (the worker that ran the job) counted it."""
    setattr(exc, _COUNTED, True)
    return exc


def segmentation_ended(outcome: str, network: str | None = None) -> None:
    SEGMENTATIONS.labels(network or NO_NETWORK, outcome).inc()


@contextmanager
def segmentation(timings: Mapping[str, float]) -> Iterator[None]:
    """Around one segmentation: it counts as running, and at its end, success or not, each stage in
    ``timings`` (the pipeline's timer, filled in while it runs) is observed."""
    RUNNING.inc()
    try:
        yield
    finally:
        RUNNING.dec()
        for stage, seconds in timings.items():
            STAGE_SECONDS.labels(stage).observe(max(0.0, seconds))


def watch_jobs(source: Callable[[], Mapping[str, int]]) -> None:
    """Export ``tumorseg_jobs`` from ``source`` (state → count), read at each scrape."""
    _JOBS.source = source


def unwatch_jobs(source: Callable[[], Mapping[str, int]]) -> None:
    if _JOBS.source == source:
        _JOBS.source = None


_leader_source: list[Callable[[], bool]] = []  # the leadership whose verdict the gauge reads


def watch_leader(holding: Callable[[], bool]) -> None:
    """Export ``tumorseg_trigger_leader`` from ``holding()``, read at each scrape: a verdict that has
    expired reads 0 at once, not at the holder's next renewal."""
    _leader_source[:] = [holding]
    TRIGGER_LEADER.set_function(lambda: 1.0 if holding() else 0.0)


def unwatch_leader(holding: Callable[[], bool]) -> None:
    if _leader_source == [holding]:
        _leader_source.clear()
        TRIGGER_LEADER.set_function(lambda: 0.0)


def model_loaded(predictor: Predictor) -> None:
    """``tumorseg_model_info`` for the model ``predictor`` runs (one series: a reload replaces it)."""
    manifest = predictor.manifest
    MODEL_INFO.clear()
    MODEL_INFO.labels(manifest.name, manifest.version, predictor.device, cpu_path(predictor)).set(1)


def cpu_path(predictor: Predictor) -> str:
    """Which CPU path runs the network: ``fused`` (oneDNN with the activations fused into the
    convolutions, ``tumorseg.model.fused``), ``plain``, or ``none`` off the CPU."""
    if predictor.device != "cpu":
        return "none"
    if predictor.manifest.foreign:
        return "plain"
    from tumorseg.model import fused

    modules = getattr(predictor.network, "modules", None)
    if modules is None:
        return "plain"
    return "fused" if any(type(m).__module__ == fused.__name__ for m in modules()) else "plain"
