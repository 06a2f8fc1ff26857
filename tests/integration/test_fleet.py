"""One service across many machines (issue 40), with real engines: Orthanc, Redis and PostgreSQL, two
``tumorseg serve`` replicas and two ``tumorseg worker`` processes, each with its own empty results
directory (they share nothing but the three servers).

Studies that arrive are segmented once each (one job done, one SEG) and every result is served
byte-identically by both replicas; the auto-trigger's replica frozen (SIGSTOP) and then killed
(SIGKILL): another takes over, a resumed holder does not trigger again, and new studies are still
segmented once; PostgreSQL restarted while jobs run, and Redis restarted empty: each job ends done
once, with one SEG and the result id it was given. The election alone (a frozen holder against a plain
session lock) is in test_trigger_leader.py; a worker killed mid-job in test_workers.py.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.jobs import FAST_ENV, seg_series
from tests.orthanc import TEST_ORTHANC, OrthancEndpoint, service_env, upload_folder
from tests.studies import clone_study
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
class Fleet:
    apis: list[LocalService]
    workers: list[LocalWorker]


@contextmanager
def _fleet(
    orthanc: OrthancEndpoint,
    model: Path,
    queue: LocalRedis,
    database: str,
    tmp_path: Path,
    *,
    apis: int = 2,
    workers: int = 2,
    auto: bool = True,
) -> Iterator[Fleet]:
    """``apis`` replicas (with the auto-trigger, unless not ``auto``) and ``workers`` workers, every
    process with its own results directory, started together (replicas first: they migrate the schema)."""

    def env(name: str) -> dict[str, str]:
        return service_env(
            orthanc.url,
            orthanc.auth,
            model,
            tmp_path / name / "results",
            queue_url=queue.url,
            queue_heartbeat_s=str(HEARTBEAT_S),
            database_url=database,
            auto_segment=str(auto).lower(),
            auto_segment_poll_s="1",
            **FAST_ENV,
        )

    fleet = Fleet(
        [
            LocalService(env(f"api{i}"), tmp_path / f"api{i}.log", cwd=tmp_path, timeout=240)
            for i in range(apis)
        ],
        [
            LocalWorker(env(f"w{i}"), tmp_path / f"w{i}.log", cwd=tmp_path, timeout=240)
            for i in range(workers)
        ],
    )
    with ExitStack() as stack:
        for process in [*fleet.apis, *fleet.workers]:
            stack.callback(process.stop)  # safe before, or after a failed, start
        for group in (fleet.apis, fleet.workers):
            with ThreadPoolExecutor(len(group)) as pool:
                list(pool.map(lambda p: p.start(), group))
        yield fleet


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


def _leader(apis: list[LocalService]) -> LocalService | None:
    leading = [api for api in apis if _leading(api)]
    assert len(leading) <= 1, "two replicas run the auto-trigger"
    return leading[0] if leading else None


def _queued_by(api: LocalService, job: dict[str, object]) -> bool:
    return f"job {job['job_id']} queued" in api.log_path.read_text()


def _same_everywhere(apis: list[LocalService], result_id: object) -> None:
    for path in ("", "/mask.nii.gz", "/preview.png", "/reference.nii.gz"):
        answers = [httpx.get(f"{api.url}/results/{result_id}{path}", timeout=30) for api in apis]
        assert {a.status_code for a in answers} == {200}, [a.text[:200] for a in answers]
        assert len({a.content for a in answers}) == 1, f"/results/{result_id}{path} differs between replicas"


def _done_runs(workers: list[LocalWorker], job: dict[str, object]) -> int:
    """How many times a worker recorded the job done (its log line), over all workers."""
    return sum(w.log_path.read_text().count(f"job {job['job_id']} done") for w in workers)


def test_replicas_segment_each_study_once_through_a_frozen_and_a_killed_trigger_holder(
    plain_study: ConvertedStudy, random_model: Path, redis_server: LocalRedis, postgres: str, tmp_path: Path
) -> None:
    # A private Orthanc: the trigger reconciles every stable study of its PACS when it takes the lead.
    with LocalOrthanc(tmp_path / "orthanc", overrides=TEST_ORTHANC) as server:
        orthanc = OrthancEndpoint(server.url, *server.auth)
        patients = [clone_study(plain_study, tmp_path / f"study{i}") for i in range(5)]
        with _fleet(orthanc, random_model, redis_server, postgres, tmp_path) as fleet:
            first = _until(lambda: _leader(fleet.apis), 60, "a trigger leader")
            second = next(api for api in fleet.apis if api is not first)
            for i in (0, 1):
                upload_folder(orthanc, tmp_path / f"study{i}")
            arrived = [_done(first, p) for p in patients[:2]]
            for job in arrived:
                _same_everywhere(fleet.apis, job["result_id"])

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
            assert _queued_by(second, after_resume) and _leader(fleet.apis) is second
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
            assert all(_done_runs(fleet.workers, job) == 1 for job in jobs)
        assert [seg_series(orthanc, p) for p in patients] == [1] * 5
    assert failover_s < 30, failover_s


def test_postgres_restarted_and_redis_restarted_empty_while_jobs_run(
    plain_study: ConvertedStudy,
    random_model: Path,
    redis_server: LocalRedis,
    own_postgres: LocalPostgres,
    tmp_path: Path,
) -> None:
    # Orthanc marks a study stable 10 s after its last instance; jobs asked for before that wait for it,
    # running (in the fetch stage), and the fault happens meanwhile.
    database = own_postgres.create_database()
    with LocalOrthanc(tmp_path / "orthanc", overrides={**TEST_ORTHANC, "StableAge": 10}) as server:
        orthanc = OrthancEndpoint(server.url, *server.auth)
        patients = [clone_study(plain_study, tmp_path / f"study{i}") for i in range(4)]
        with _fleet(orthanc, random_model, redis_server, database, tmp_path, apis=1, auto=False) as fleet:
            (api,) = fleet.apis
            ended: list[dict[str, object]] = []
            for pair, fault in (((0, 1), "postgres"), ((2, 3), "redis")):
                with orthanc.client() as pacs:
                    for i in pair:
                        assert not upload_directory(pacs, tmp_path / f"study{i}").failed
                given = [_post_job(api, patients[i]) for i in pair]
                _until(lambda given=given: _running(api, given[0]), 60, "a running job")
                if fault == "postgres":
                    own_postgres.stop()
                    down = httpx.get(f"{api.url}/jobs", timeout=30)
                    assert down.status_code == 503 and down.headers.get("Retry-After"), down.text
                    time.sleep(3)
                    own_postgres.start()
                else:
                    redis_server.stop()
                    redis_server.start()  # same port, no data: every message is gone
                for job, i in zip(given, pair, strict=True):
                    done = _done(api, patients[i])
                    assert (done["job_id"], done["result_id"]) == (job["job_id"], job["result_id"])
                    ended.append(done)
                    _same_everywhere([api], done["result_id"])
            assert all(_done_runs(fleet.workers, job) == 1 for job in ended), "a job ended done twice"
        assert [seg_series(orthanc, p) for p in patients] == [1] * 4


def _post_job(api: LocalService, patient_id: str) -> dict[str, object]:
    answer = httpx.post(f"{api.url}/jobs", json={"patient_id": patient_id, "store_seg": True}, timeout=30)
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def _running(api: LocalService, job: dict[str, object]) -> bool | None:
    state = httpx.get(f"{api.url}/jobs/{job['job_id']}", timeout=30).json()["state"]
    return True if state == "running" else None
