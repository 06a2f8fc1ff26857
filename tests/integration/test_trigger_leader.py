"""The auto-trigger's leader election on a real PostgreSQL (issue 40): one holder at a time, a graceful
hand-over, and a frozen holder (SIGSTOP) that loses the lead within the lease and, resumed, does not
lead again. The replica-level faults (a killed or frozen API replica under real studies) are in
test_fleet.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tumorseg.jobs.leader import LEASE_S, RETRY_S, PostgresLeader

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
