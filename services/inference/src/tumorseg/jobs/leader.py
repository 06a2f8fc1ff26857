"""Which process runs the auto-trigger: exactly one at a time, however many API replicas there are.

``Leadership`` is what the trigger asks before each action (``holding``). Two kinds:

- ``SoleLeader``: the embedded SQLite mode, one API process, which is always the leader.
- ``PostgresLeader``: API replicas sharing a PostgreSQL database (``TUMORSEG_DATABASE_URL``). The
  database chooses: the leader is the process whose own connection holds a session-level advisory lock
  (``pg_try_advisory_lock(TRIGGER_LOCK)``); the others ask again every ``retry_s``.

A session lock alone outlives a frozen holder (SIGSTOP) and, with default TCP keepalives, a dead host for
hours. So the lock's session is bounded: it is opened with ``idle_session_timeout`` = ``lease_s``, and the
holder renews it with one query every ``lease_s / 3``. When the holder dies, freezes or is cut off, the
server ends its idle session within ``lease_s`` of its last query, which frees the lock for the next
replica.

The holder stops the moment it cannot renew, without asking anyone: ``holding()`` is true only until
``lease_s - MARGIN_S`` after the start of its last successful renewal, on the monotonic clock (which runs
on while a process is stopped). The server's idle clock starts after that moment, so the holder's own
verdict always ends before the server can free the lock to another replica: a holder resumed after a
freeze, or cut off from the database, knows at its next check that it no longer leads.

The verdict can outlast the lock the other way round: a server restart or a terminated backend frees the
lock at once, while ``holding()`` stands until the next renewal. So the trigger's writes (its cursor, a
job's insert) are fenced: inside ``fenced()`` the PostgreSQL job store writes over the lock's own
session, and a write there takes effect only while that session, and with it the lock, lives; one that
finds the session gone raises ``NotLeading`` and ends the verdict at once. A trigger action already past
its check when the process froze fails the same way after it resumes.

The lock is held for the trigger, not for the keeper thread: the trigger's thread is ``watch``ed and says
``alive`` at each pass. The keeper gives up the lead (closes its session) when that thread has ended or has
not said ``alive`` for ``stall_s``, and asks for the lock again only once it does: a dead or hung trigger
thread leaves the auto-trigger to another replica instead of holding the lock forever.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import DictRow, dict_row

from tumorseg import metrics
from tumorseg.db import jobs as pg_jobs

log = logging.getLogger(__name__)

TRIGGER_LOCK = int.from_bytes(b"tsg-trig", "big")  # the advisory lock's key (the migrations use "tumorseg")
LEASE_S = 6.0  # the lock's session ends this long after its holder's last renewal
RETRY_S = 1.0  # how often a replica that does not lead asks for the lock
MARGIN_S = 1.0  # the holder's verdict ends this long before the server could free the lock
CONNECT_TIMEOUT_S = 3


class NotLeading(Exception):
    """This process does not lead (any more): the trigger's action is not taken."""


class Leadership(ABC):
    """Whether this process runs the auto-trigger now; ``start`` before asking, ``stop`` to step down."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def holding(self) -> bool:
        """Whether this process leads now; asked before every trigger action."""

    @contextmanager
    def fenced(self) -> Iterator[None]:
        """Around each trigger write: ``NotLeading`` unless this process leads now."""
        if not self.holding():
            raise NotLeading
        yield

    def watch(self, thread: threading.Thread, stall_s: float) -> None:
        """Lead only while ``thread`` runs and has said ``alive`` within the last ``stall_s``."""
        return None  # the sole leader leads whatever its threads do

    def alive(self) -> None:
        """The watched thread is making progress (at each pass of its loop)."""
        return None  # the sole leader leads whatever its threads do


class SoleLeader(Leadership):
    """The one API process of the embedded mode: always the leader."""

    def start(self) -> None:
        metrics.watch_leader(self.holding)

    def stop(self) -> None:
        metrics.unwatch_leader(self.holding)

    def holding(self) -> bool:
        return True


class PostgresLeader(Leadership):
    """The holder of the trigger's advisory lock in the database at ``url`` (see the module docstring).
    A keeper thread takes or renews the lock; ``holding`` reads its verdict."""

    def __init__(self, url: str, *, lease_s: float = LEASE_S, retry_s: float = RETRY_S) -> None:
        if lease_s <= 2 * MARGIN_S:
            raise ValueError(f"lease_s must exceed {2 * MARGIN_S:g} s")
        self.url = url
        self.lease_s = lease_s
        self.retry_s = retry_s
        self._conn: psycopg.Connection[DictRow] | None = None
        self._valid_until = 0.0  # monotonic; 0: not the leader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched: threading.Thread | None = None
        self._stall_s = 0.0
        self._stamp = 0.0  # monotonic: the watched thread's last ``alive``

    def watch(self, thread: threading.Thread, stall_s: float) -> None:
        self._stall_s = stall_s
        self._stamp = time.monotonic()
        self._watched = thread

    def alive(self) -> None:
        self._stamp = time.monotonic()

    def _stalled(self) -> str | None:
        """Why the watched thread should not lead, if it should not."""
        watched = self._watched
        if watched is None:
            return None
        if not watched.is_alive():
            return "the trigger thread has ended"
        if time.monotonic() - self._stamp > self._stall_s:
            return f"the trigger thread made no progress for {self._stall_s:g} s"
        return None

    def start(self) -> None:
        self._stop.clear()
        metrics.watch_leader(self.holding)
        self._thread = threading.Thread(target=self._keep, name="tumorseg-leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Step down: the lock is released with the session at once, for another replica to take."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CONNECT_TIMEOUT_S + self.lease_s)
        self._lose("stepped down")
        metrics.unwatch_leader(self.holding)

    def holding(self) -> bool:
        return time.monotonic() < self._valid_until

    @contextmanager
    def fenced(self) -> Iterator[None]:
        """The PostgreSQL job store's inserts and cursor writes inside go over the lock's own session
        (``tumorseg.db.jobs.fenced``), so they take effect only while this process holds the lock, even
        in the moments before its verdict learns that the lock is gone (a server restart, a terminated
        backend); ``NotLeading`` if it does not lead, or the session ended under the write."""
        conn = self._conn
        if conn is None or not self.holding():
            raise NotLeading
        try:
            with pg_jobs.fenced(conn):
                yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if conn.closed or conn.broken or not self.holding():
                if self._conn is conn:  # learnt here before the next renewal
                    self._lose(f"lock lost: {type(exc).__name__}")
                raise NotLeading from exc
            raise

    def _keep(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # never end the keeper with the lock held
                log.exception("trigger leader: renewal failed")
                self._lose("renewal failed")
            self._stop.wait(self.lease_s / 3 if self.holding() else self.retry_s)

    def _tick(self) -> None:
        """Renew the lock if this process holds it, else ask for it; any failure drops the lead."""
        started = time.monotonic()
        leading = self._valid_until > 0
        stalled = self._stalled()
        if stalled is not None:
            self._lose(stalled)  # and no new lock until the trigger is making progress again
            return
        try:
            conn = self._conn if self._conn is not None else self._connect()
            if leading:
                conn.execute("SELECT 1")  # any statement restarts the session's idle clock
            else:
                row = conn.execute("SELECT pg_try_advisory_lock(%s) AS taken", (TRIGGER_LOCK,)).fetchone()
                leading = row is not None and bool(row["taken"])
        except psycopg.Error as exc:
            self._lose(f"lock lost: {type(exc).__name__}")
            return
        if not leading:
            return
        if self._valid_until == 0:
            log.info("this replica runs the auto-trigger (database lock taken)")
        self._valid_until = started + self.lease_s - MARGIN_S
        if not self.holding():  # the renewal itself took too long: the server may free the lock now
            self._lose("renewal too slow")

    def _connect(self) -> psycopg.Connection[DictRow]:
        lease_ms = int(self.lease_s * 1000)
        self._conn = psycopg.connect(
            self.url,
            autocommit=True,  # never idle in a transaction, where idle_session_timeout does not apply
            row_factory=dict_row,  # the job store's rows, for the writes ``fenced`` runs over it
            connect_timeout=CONNECT_TIMEOUT_S,
            options=f"-c idle_session_timeout={lease_ms} -c statement_timeout={lease_ms}",
            keepalives=1,
            keepalives_idle=1,
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=lease_ms,
            application_name="tumorseg-trigger-leader",
        )
        return self._conn

    def _lose(self, reason: str) -> None:
        """No longer the leader (or never was); the connection, and with it any lock, is closed."""
        was_leading = self._valid_until > 0
        self._valid_until = 0.0
        if was_leading:
            log.warning("this replica no longer runs the auto-trigger (%s)", reason)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.exception("trigger leader: closing the lock's connection failed")
