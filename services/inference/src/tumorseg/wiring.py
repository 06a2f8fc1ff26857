"""What the API and ``tumorseg segment`` build from the settings, written once: the process-wide settings
their entry points make (allocator, CPU threads), the PACS client, the predictor (model package, warm-up,
and the brain extractor the settings call for, warmed up too) and the ``Segmenter`` with every pipeline
setting (mapping rules, SEG, series cache, queue, registration, brain extraction). Both faces therefore
run the same pipeline the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tumorseg.config import Settings
from tumorseg.db import migrate
from tumorseg.db.jobs import PgJobStore
from tumorseg.db.pool import Database, redacted
from tumorseg.db.results import PgResultStore
from tumorseg.errors import DatabaseUnavailable
from tumorseg.imaging.brain import get_extractor
from tumorseg.jobs import EmbeddedRunner, Jobs, QueuedRunner
from tumorseg.jobs.leader import Leadership, PostgresLeader, SoleLeader
from tumorseg.jobs.queue import JobQueue
from tumorseg.jobs.trigger import AutoTrigger
from tumorseg.jobstore import JobStore, SqliteJobStore
from tumorseg.memory import keep_freed_memory, reserve_heap
from tumorseg.model.device import configure_threads
from tumorseg.model.predictor import Predictor
from tumorseg.pacs import OrthancClient, Pacs
from tumorseg.pacs.dicomweb import DicomwebClient
from tumorseg.pipeline import ResultLinks, Segmenter
from tumorseg.results import DirResultStore, ResultStore

log = logging.getLogger(__name__)

# A request's working set beyond the network's (downloaded files, volumes, model input): with the
# allocator set, kept mapped from the start (``memory.reserve_heap``)
HEAP_RESERVE_BYTES = 2**30
DATABASE_START_WAIT_S = 30.0  # a process starting with its database (compose, a restart of both)


def open_pacs(settings: Settings) -> Pacs:
    """The DICOMweb client when ``TUMORSEG_DICOMWEB_URL`` is set (then nothing uses Orthanc REST), else
    Orthanc's REST client."""
    if settings.dicomweb_url is not None:
        token = settings.dicomweb_token.get_secret_value() if settings.dicomweb_token is not None else None
        return DicomwebClient(
            settings.dicomweb_url,
            settings.orthanc_auth,
            settings.orthanc_timeout,
            token=token,
            recent_days=settings.auto_segment_days,
            stable_s=settings.auto_segment_poll_s,
        )
    return OrthancClient(settings.orthanc_url, settings.orthanc_auth, settings.orthanc_timeout)


def open_trigger(settings: Settings, pacs: Pacs, jobs: Jobs, model_tag: str) -> AutoTrigger:
    """The auto-trigger, following the change feed of the PACS in use, in the process that leads."""
    return AutoTrigger(
        pacs,
        jobs,
        model_tag,
        settings.auto_segment_poll_s,
        open_leadership(settings),
        pacs_timeout_s=settings.orthanc_timeout,  # a PACS call may take this long before the loop is hung
    )


def open_leadership(settings: Settings) -> Leadership:
    """Who runs the auto-trigger: with PostgreSQL, the replica holding its lock; else this process."""
    if settings.database_url is None:
        return SoleLeader()
    return PostgresLeader(settings.database_url.get_secret_value())


def open_database(settings: Settings) -> Database:
    """The pool of ``TUMORSEG_DATABASE_URL``'s PostgreSQL, its schema first migrated to this code's (once
    across replicas starting together: ``migrate.upgrade`` holds a lock). A database that is still starting
    is waited for up to ``DATABASE_START_WAIT_S``; one newer than this code refuses (``DatabaseSchemaError``)."""
    assert settings.database_url is not None
    url = settings.database_url.get_secret_value()
    deadline = time.monotonic() + DATABASE_START_WAIT_S
    while True:
        try:
            before, after = migrate.upgrade(url)
            break
        except DatabaseUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    log.info(
        "state in PostgreSQL %s (schema %s%s)",
        redacted(url),
        after,
        "" if before == after else f", from {before}",
    )
    return Database(url)


def open_store(settings: Settings, jobs: JobStore | None = None) -> ResultStore:
    """The result store: in PostgreSQL with ``TUMORSEG_DATABASE_URL`` (sharing ``jobs``' pool when it is
    there too), else the results directory; with ``jobs``, it tells a pending or failed job's result from an
    unknown one."""
    max_bytes = None if settings.results_max_gb is None else int(settings.results_max_gb * 2**30)
    if settings.database_url is not None:
        db = jobs.db if isinstance(jobs, PgJobStore) else open_database(settings)
        return PgResultStore(db, max_age_days=settings.results_max_age_days, max_bytes=max_bytes, jobs=jobs)
    return DirResultStore(
        settings.results_dir, max_age_days=settings.results_max_age_days, max_bytes=max_bytes, jobs=jobs
    )


def open_jobs(settings: Settings) -> JobStore:
    """The job store: PostgreSQL with ``TUMORSEG_DATABASE_URL``, else ``<results_dir>/jobs.sqlite3``."""
    if settings.database_url is not None:
        return PgJobStore(open_database(settings))
    return SqliteJobStore(settings.results_dir)


def open_queue(settings: Settings) -> JobQueue | None:
    """Distributed mode's Redis queue; ``None`` in the embedded default."""
    if settings.queue_url is None:
        return None
    return JobQueue(settings.queue_url, settings.queue_heartbeat_s)


def open_runner(
    settings: Settings,
    store: JobStore,
    segmenter: Callable[[], Segmenter],
    results: ResultStore,
    queue: JobQueue | None,
) -> Jobs:
    """The job runner of the mode in use: jobs run in this process, or through ``queue`` by workers."""
    if queue is None:
        return EmbeddedRunner(store, segmenter)
    return QueuedRunner(store, segmenter, queue, results, settings.queue_size)


@dataclass(frozen=True)
class ProcessSetup:
    """What ``configure_process`` set for the whole process."""

    allocator: bool  # glibc keeps freed blocks for the next request (memory.keep_freed_memory)
    threads: int  # torch's and SimpleITK's intra-op threads


def configure_process() -> ProcessSetup:
    """The process-wide settings of a service process, made where it starts (``tumorseg serve``,
    ``worker`` and ``segment``) before its threads allocate: glibc's allocator keeps freed blocks
    (``memory.keep_freed_memory``; a thread keeps the arena it had, and the model is loaded, and requests
    run, in the server's worker threads), and one CPU thread per usable CPU for torch and SimpleITK
    (their defaults count the host's cores). Importing, creating or starting the app sets none of them."""
    allocator = keep_freed_memory()
    if allocator:
        log.info("allocator: freed blocks kept for the next request (glibc, one arena)")
    threads = configure_threads()
    log.info("%d CPU thread(s) for torch and SimpleITK", threads)
    return ProcessSetup(allocator=allocator, threads=threads)


def load_predictor(settings: Settings, device: str, process: ProcessSetup | None = None) -> Predictor:
    """The model package on ``device``, warmed up; and the brain extractor that
    ``TUMORSEG_BRAIN_EXTRACTOR`` can call for, loaded and warmed up too. ``ModelError`` when the package
    cannot be used. With the allocator set (``process``), a request's working set is then kept mapped
    (``memory.reserve_heap``)."""
    predictor = Predictor.from_package(settings.model_path, device)
    predictor.warm_up()
    if process is not None and process.allocator:
        reserve_heap(HEAP_RESERVE_BYTES)
    if settings.brain_extractor != "none":
        get_extractor("deepbet").warm_up()
    return predictor


def build_segmenter(
    settings: Settings,
    pacs: Pacs,
    predictor: Predictor,
    store: ResultStore,
    links: Callable[[str], ResultLinks],
) -> Segmenter:
    """The pipeline with every setting; ``links``: where the API serves a result (``tumorseg.api.urls``),
    given by the face that builds it."""
    return Segmenter(
        pacs,
        predictor,
        store,
        links=links,
        rules=settings.mapping_rules,
        store_seg=settings.store_seg,
        cache_bytes=settings.series_cache_mb * 2**20,
        max_waiting=settings.queue_size,
        registration=settings.registration,
        brain_extractor=settings.brain_extractor,
        limits=settings.limits,
        stable_wait_s=settings.stable_wait_s,
    )
