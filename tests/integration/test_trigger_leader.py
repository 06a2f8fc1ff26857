"""The auto-trigger's leader election on a real PostgreSQL (issue 40): one holder at a time, a graceful
hand-over, and a frozen holder (SIGSTOP) that loses the lead within the lease and, resumed, does not
lead again. The replica-level faults (a killed or frozen API replica under real studies) are in
test_fleet.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tumorseg import metrics
from tumorseg.db import migrate
from tumorseg.db.jobs import PgJobStore
from tumorseg.db.pool import Database
from tumorseg.jobs.leader import LEASE_S, RETRY_S, NotLeading, PostgresLeader
from tumorseg.jobs.trigger import CURSOR_KEY, AutoTrigger
from tumorseg.pacs.base import ChangeBatch
from tumorseg.schema import JobRequest

pytestmark = pytest.mark.integration

# A process that only competes for the lead and writes "<wall time> <1|0>" ten times a second.
_CONTENDER = """
import sys, time
from tumorseg.jobs.leader import PostgresLeader
leader = PostgresLeader(sys.argv[1])
leader.start()
while True:
    print(f"{time.time():.3f} {int(leader.holding())}", flush=True)
    time.sleep(0.1)
"""


def _until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout:g} s"
        time.sleep(0.05)
    return time.monotonic() - started


def _states(log: Path) -> list[tuple[float, bool]]:
    rows = [line.split() for line in log.read_text().splitlines()]
    return [(float(row[0]), row[1] == "1") for row in rows if len(row) == 2]


def test_one_holder_at_a_time_and_a_stepping_down_holder_hands_over_at_once(postgres: str) -> None:
    first, second = PostgresLeader(postgres), PostgresLeader(postgres)
    first.start()
    try:
        _until(first.holding, 10, "the first contender leading")
        second.start()
        time.sleep(3 * RETRY_S)
        assert first.holding() and not second.holding()
        first.stop()
        assert not first.holding()
        handed_over_s = _until(second.holding, 3 * RETRY_S, "the hand-over")
    finally:
        first.stop()
        second.stop()
    assert handed_over_s < 3 * RETRY_S  # the session closed with the lock: no lease to wait out


def test_a_frozen_holder_loses_the_lead_and_does_not_take_it_back_when_resumed(
    postgres: str, tmp_path: Path
) -> None:
    log = tmp_path / "contender.log"
    here = PostgresLeader(postgres)
    with log.open("w") as out:
        contender = subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, postgres], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _until(lambda: any(state for _, state in _states(log)), 120, "the other process leading")
        here.start()
        time.sleep(3 * RETRY_S)
        assert not here.holding(), "two leaders"
        os.kill(contender.pid, signal.SIGSTOP)  # frozen: its session stays open, its lock with it
        taken_over_s = _until(here.holding, LEASE_S + 5 * RETRY_S, "a take-over from the frozen holder")
        resumed_at = time.time()
        os.kill(contender.pid, signal.SIGCONT)
        time.sleep(3)
        assert here.holding()
    finally:
        contender.kill()
        contender.wait()
        here.stop()
    after = [state for at, state in _states(log) if at > resumed_at]
    assert after, "the resumed process wrote nothing"
    assert not any(after), "the resumed holder believed it still led"
    # not before the lease ran out (the frozen holder's verdict may still have held until then)
    assert taken_over_s >= LEASE_S - 3


def test_a_holder_whose_trigger_thread_ended_or_hangs_gives_the_lead_up(postgres: str) -> None:
    """The lock is the trigger's: a dead or hung trigger thread must not keep it renewed (issue 40 review)."""
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=True)  # alive, and never says it is
    worker.start()
    first, second = PostgresLeader(postgres, lease_s=3), PostgresLeader(postgres, lease_s=3)
    first.watch(worker, stall_s=2)
    first.start()
    try:
        _until(first.holding, 10, "the first contender leading")
        second.start()
        lost_s = _until(lambda: not first.holding(), 6, "the hung trigger's holder giving up")
        _until(second.holding, 3 * RETRY_S, "the take-over from the hung trigger's holder")
        # and it does not ask again while its trigger still hangs: the second one keeps the lead
        time.sleep(2 * RETRY_S)
        assert second.holding() and not first.holding()
        second.stop()
        time.sleep(2 * RETRY_S)
        assert not first.holding(), "a hung trigger's holder took the lock again"
        # the same once the thread has ended, whatever it said last
        first.alive()
        release.set()
        worker.join(5)
        time.sleep(2 * RETRY_S)
        assert not first.holding(), "a dead trigger's holder took the lock"
    finally:
        release.set()
        first.stop()
        second.stop()
    assert lost_s < 2 + 3  # stall_s + one renewal period (lease_s / 3) + slack


class _Feed:
    """A change feed with nothing new: the trigger's first action is to store its cursor."""

    def __init__(self) -> None:
        self.asked = 0

    def changes(self, cursor: str | None) -> ChangeBatch:
        self.asked += 1
        return ChangeBatch((), "1")


class _Jobs:
    def __init__(self, store: PgJobStore) -> None:
        self.store = store


def test_the_trigger_thread_survives_an_unexpected_error_and_keeps_its_lead(postgres: str) -> None:
    """A database that turned read-only (an HA fail-over to a standby): the cursor's write fails with
    ReadOnlySqlTransaction, which is not a TumorsegError; the thread must go on, not end with its lock
    still renewed."""
    migrate.upgrade(postgres)
    with psycopg.connect(postgres, autocommit=True) as admin:
        database = postgres.rsplit("/", 1)[1]
        admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    store = PgJobStore(Database(postgres, max_size=2))
    feed = _Feed()
    leader = PostgresLeader(postgres, lease_s=3)
    trigger = AutoTrigger(feed, _Jobs(store), "m", poll_s=0.2, leader=leader)  # type: ignore[arg-type]
    trigger.start()
    try:
        _until(lambda: feed.asked >= 3, 15, "the trigger asking the feed again after the error")
        assert trigger._thread is not None and trigger._thread.is_alive()
        assert leader.holding()
        assert store.get_meta(CURSOR_KEY) is None
    finally:
        trigger.stop()
        store.close()


def _leader_gauge() -> float:
    for line in metrics.exposition().decode().splitlines():
        if line.startswith("tumorseg_trigger_leader "):
            return float(line.split()[1])
    raise AssertionError("no tumorseg_trigger_leader sample")


def test_the_leader_gauge_reads_the_verdict_at_scrape_time(postgres: str) -> None:
    """A holder whose renewal hangs (its server backend frozen) stops leading when its verdict expires;
    the gauge says so then, not when the hung renewal at last fails."""
    leader = PostgresLeader(postgres, lease_s=3)
    leader.start()
    backend = 0
    try:
        _until(leader.holding, 10, "leading")
        assert _leader_gauge() == 1
        assert leader._conn is not None
        backend = leader._conn.info.backend_pid
        os.kill(backend, signal.SIGSTOP)  # the next renewal hangs
        _until(lambda: not leader.holding(), 5, "the verdict expiring")
        assert _leader_gauge() == 0
    finally:
        if backend:
            os.kill(backend, signal.SIGCONT)
        leader.stop()
    assert _leader_gauge() == 0


def test_the_trigger_s_writes_are_fenced_by_the_lock_s_own_session(postgres: str) -> None:
    """The lock freed under a holder whose verdict still stands (its backend terminated; a server restart
    does the same): its cursor write and job insert fail with NotLeading and leave nothing behind, as a
    new leader may already act (issue 40 review)."""
    migrate.upgrade(postgres)
    store = PgJobStore(Database(postgres, max_size=2))
    leader = PostgresLeader(postgres, lease_s=30)  # renewals 10 s apart: the verdict outlives the lock
    leader.start()
    request = JobRequest(patient_id="P", study="1.2.3", store_seg=True)
    try:
        _until(leader.holding, 10, "leading")
        with leader.fenced():
            store.set_meta(CURSOR_KEY, "1")
        assert store.get_meta(CURSOR_KEY) == "1"
        assert leader._conn is not None
        with psycopg.connect(postgres, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (leader._conn.info.backend_pid,))
            _until(
                lambda: (
                    admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
                    == (0,)
                ),
                5,
                "the lock freed",
            )
        assert leader.holding()  # its verdict still stands: only the fence stops the writes
        with pytest.raises(NotLeading):
            with leader.fenced():
                store.set_meta(CURSOR_KEY, "2")
        assert not leader.holding()  # and the failed write ended the verdict at once
        with pytest.raises(NotLeading):
            with leader.fenced():
                store.create(request, "auto", "r1", key="k1")
        assert store.get_meta(CURSOR_KEY) == "1"
        assert not store.has_key("k1")
    finally:
        leader.stop()
        store.close()
