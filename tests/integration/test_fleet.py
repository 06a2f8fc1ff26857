"""One service across many machines (issue 40), with real engines: Orthanc, Redis and PostgreSQL, two
``tumorseg serve`` replicas and two ``tumorseg worker`` processes, each with its own empty results
directory (they share nothing but the three servers).

Studies that arrive are segmented once each (one job done, one SEG) and every result is served
byte-identically by both replicas; the auto-trigger's replica frozen (SIGSTOP) and then killed
(SIGKILL): another takes over, a resumed holder does not trigger again, and new studies are still
segmented once; PostgreSQL restarted while jobs run, and Redis restarted empty: each job ends done
once, with one SEG and the result id it was given. The election alone (a frozen holder against a plain
session lock) is in test_trigger_leader.py; a worker killed mid-job in test_workers.py.

The two scenarios share one start of the servers and the workers (the module's ``engines``); each starts
the replicas it needs, and the restart scenario's Orthanc is the same one restarted with a longer
StableAge.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.jobs import FAST_ENV, seg_series
from tests.orthanc import TEST_ORTHANC, OrthancEndpoint, service_env, upload_folder
from tests.processes import started
from tests.studies import clone_study
from tumorseg.db import migrate
from tumorseg.pacs.upload import upload_directory
from tumorseg_devkit.launcher import LocalService, LocalWorker
from tumorseg_devkit.local import LocalOrthanc, LocalRedis
from tumorseg_devkit.postgres import LocalPostgres
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration

HEARTBEAT_S = 10.0  # TUMORSEG_QUEUE_HEARTBEAT_S (its least): a lost job is sent again after half of it
TIMEOUT_S = 300.0
T = TypeVar("T")
LEADER = re.compile(r"^tumorseg_trigger_leader (\S+)$", re.MULTILINE)


@dataclass
class Engines:
    """What the scenarios share, started once for the module: a private Orthanc, PostgreSQL (its schema
    migrated) and Redis, and two ``tumorseg worker`` processes. Each scenario starts its own API replicas."""

    workdir: Path
    model: Path
    orthanc: LocalOrthanc
    postgres: LocalPostgres
    database: str
    redis: LocalRedis
    workers: list[LocalWorker]

    def env(self, name: str, auto: bool = False) -> dict[str, str]:
        """The environment of process ``name``: its own results directory, the three servers."""
        return service_env(
            self.orthanc.url,
            self.orthanc.auth,
            self.model,
            self.workdir / name / "results",
            queue_url=self.redis.url,
            queue_heartbeat_s=str(HEARTBEAT_S),
            database_url=self.database,
            auto_segment=str(auto).lower(),
            auto_segment_poll_s="1",
            **FAST_ENV,
        )

    def pacs(self, stable_age: int) -> OrthancEndpoint:
        """The Orthanc, marking a study stable ``stable_age`` seconds after its last instance: restarted
        with that setting where it had another, on the same port and data."""
        if json.loads(self.orthanc.config_path.read_text())["StableAge"] != stable_age:
            self.orthanc.stop()
            self.orthanc = LocalOrthanc(
                self.orthanc.workdir,
                username=self.orthanc.username,
                password=self.orthanc.password,
                http_port=self.orthanc.http_port,
                overrides={**TEST_ORTHANC, "StableAge": stable_age},
            ).start()
        return OrthancEndpoint(self.orthanc.url, *self.orthanc.auth)


@pytest.fixture(scope="module")
def engines(random_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    workdir = tmp_path_factory.mktemp("fleet")
    with ExitStack() as stack:
        postgres = stack.enter_context(LocalPostgres())
        database = postgres.create_database()
        redis = stack.enter_context(LocalRedis(workdir / "redis"))
        orthanc = LocalOrthanc(workdir / "orthanc", overrides=TEST_ORTHANC).start()
        found = Engines(workdir, random_model, orthanc, postgres, database, redis, [])
        stack.callback(lambda: found.orthanc.stop())  # the one running then (``pacs`` may restart it)
        migrate.upgrade(found.database)  # what the replicas would do, before the workers read the schema
        found.workers = [
            LocalWorker(found.env(f"w{i}"), workdir / f"w{i}.log", cwd=workdir, timeout=240) for i in (0, 1)
        ]
        stack.enter_context(started(found.workers))
        yield found


def _replicas(engines: Engines, tmp_path: Path, count: int, auto: bool) -> list[LocalService]:
    """``count`` ``tumorseg serve`` replicas (with the auto-trigger if ``auto``), each with its own results
    directory."""
    return [
        LocalService(engines.env(f"api{i}", auto), tmp_path / f"api{i}.log", cwd=tmp_path, timeout=240)
        for i in range(count)
    ]


def _until(value: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while (found := value()) is None:
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.3)
    return found


def _jobs(api: LocalService, patient_id: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{api.url}/jobs", params={"patient_id": patient_id}, timeout=30)
    answer.raise_for_status()
    return list(answer.json()["jobs"])


def _done(api: LocalService, patient_id: str) -> dict[str, object]:
    """The patient's one job, once it has ended; it must be done, on its first attempt or a later one."""

    def ended() -> dict[str, object] | None:
        jobs = _jobs(api, patient_id)
        return jobs[0] if jobs and jobs[0]["state"] not in ("queued", "running") else None

    job = _until(ended, TIMEOUT_S, f"a finished job for {patient_id}")
    assert job["state"] == "done", job
    assert len(_jobs(api, patient_id)) == 1
    return job


def _leading(api: LocalService) -> bool:
    found = LEADER.search(httpx.get(f"{api.url}/metrics", timeout=30).text)
    return found is not None and float(found[1]) == 1


def _leader(apis: Sequence[LocalService]) -> LocalService | None:
    leading = [api for api in apis if _leading(api)]
    assert len(leading) <= 1, "two replicas run the auto-trigger"
    return leading[0] if leading else None


def _queued_by(api: LocalService, job: dict[str, object]) -> bool:
    return f"job {job['job_id']} queued" in api.log_path.read_text()


def _same_everywhere(apis: Sequence[LocalService], result_id: object) -> None:
    for path in ("", "/mask.nii.gz", "/preview.png", "/reference.nii.gz"):
        answers = [httpx.get(f"{api.url}/results/{result_id}{path}", timeout=30) for api in apis]
        assert {a.status_code for a in answers} == {200}, [a.text[:200] for a in answers]
        assert len({a.content for a in answers}) == 1, f"/results/{result_id}{path} differs between replicas"


def _done_runs(workers: list[LocalWorker], job: dict[str, object]) -> int:
    """How many times a worker recorded the job done (its log line), over all workers."""
    return sum(w.log_path.read_text().count(f"job {job['job_id']} done") for w in workers)


def test_replicas_segment_each_study_once_through_a_frozen_and_a_killed_trigger_holder(
    engines: Engines, plain_study: ConvertedStudy, tmp_path: Path
) -> None:
    # The module's own Orthanc: the trigger reconciles every stable study of its PACS when it takes the
    # lead (this scenario runs first; the other one's studies would only add jobs to wait for).
    orthanc = engines.pacs(TEST_ORTHANC["StableAge"])
    patients = [clone_study(plain_study, tmp_path / f"study{i}") for i in range(5)]
    with started(_replicas(engines, tmp_path, 2, auto=True)) as apis:
        first = _until(lambda: _leader(apis), 60, "a trigger leader")
        second = next(api for api in apis if api is not first)
        for i in (0, 1):
            upload_folder(orthanc, tmp_path / f"study{i}")
        arrived = [_done(first, p) for p in patients[:2]]
        for job in arrived:
            _same_everywhere(apis, job["result_id"])

        os.kill(first.pid, signal.SIGSTOP)  # frozen: its lock's session stays open until the lease ends
        try:
            upload_folder(orthanc, tmp_path / "study2")
            while_frozen = _done(second, patients[2])
            assert _queued_by(second, while_frozen)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        resumed_log = len(first.log_path.read_text())
        upload_folder(orthanc, tmp_path / "study3")
        after_resume = _done(second, patients[3])
        assert _queued_by(second, after_resume) and _leader(apis) is second
        assert " queued" not in first.log_path.read_text()[resumed_log:], "the resumed holder triggered"

        second.process.kill()  # SIGKILL: its lock goes with its connection
        killed = time.monotonic()
        upload_folder(orthanc, tmp_path / "study4")
        _until(lambda: _jobs(first, patients[4]) or None, 60, "a job after the leader was killed")
        failover_s = time.monotonic() - killed
        after_kill = _done(first, patients[4])
        assert _queued_by(first, after_kill)
        _same_everywhere([first], after_kill["result_id"])
        jobs = [*arrived, while_frozen, after_resume, after_kill]
        assert all(_done_runs(engines.workers, job) == 1 for job in jobs)
    assert [seg_series(orthanc, p) for p in patients] == [1] * 5
    assert failover_s < 30, failover_s


def test_postgres_restarted_and_redis_restarted_empty_while_jobs_run(
    engines: Engines, plain_study: ConvertedStudy, tmp_path: Path
) -> None:
    # Orthanc marks a study stable 10 s after its last instance; jobs asked for before that wait for it,
    # running (in the fetch stage), and the fault happens meanwhile. One replica, no auto-trigger.
    orthanc = engines.pacs(10)
    patients = [clone_study(plain_study, tmp_path / f"study{i}") for i in range(4)]
    with started(_replicas(engines, tmp_path, 1, auto=False)) as (api,):
        ended: list[dict[str, object]] = []
        for pair, fault in (((0, 1), "postgres"), ((2, 3), "redis")):
            with orthanc.client() as pacs:
                for i in pair:
                    assert not upload_directory(pacs, tmp_path / f"study{i}").failed
            given = [_post_job(api, patients[i]) for i in pair]
            _until(lambda given=given: _running(api, given[0]), 60, "a running job")
            if fault == "postgres":
                engines.postgres.stop()
                down = httpx.get(f"{api.url}/jobs", timeout=30)
                assert down.status_code == 503 and down.headers.get("Retry-After"), down.text
                time.sleep(3)
                engines.postgres.start()
            else:
                engines.redis.stop()
                engines.redis.start()  # same port, no data: every message is gone
            for job, i in zip(given, pair, strict=True):
                done = _done(api, patients[i])
                assert (done["job_id"], done["result_id"]) == (job["job_id"], job["result_id"])
                ended.append(done)
                _same_everywhere([api], done["result_id"])
        assert all(_done_runs(engines.workers, job) == 1 for job in ended), "a job ended done twice"
    assert [seg_series(orthanc, p) for p in patients] == [1] * 4


def _post_job(api: LocalService, patient_id: str) -> dict[str, object]:
    answer = httpx.post(f"{api.url}/jobs", json={"patient_id": patient_id, "store_seg": True}, timeout=30)
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def _running(api: LocalService, job: dict[str, object]) -> bool | None:
    state = httpx.get(f"{api.url}/jobs/{job['job_id']}", timeout=30).json()["state"]
    return True if state == "running" else None
