"""One psycopg 3 connection pool per process, and the boundary where the driver's errors become
tumorseg's.

Every store call takes a connection from the pool for one statement or one transaction. A connection is
checked before it is handed out (a server restart leaves dead ones in the pool; they are replaced, not
used), TCP keepalives notice a vanished host within about half a minute, and a caller waits at most
``WAIT_S`` for a connection. When the server cannot be reached, the call raises ``DatabaseUnavailable``
(503 with Retry-After); the pool reconnects in the background (``RECONNECT_S``), and calls succeed again
within seconds of the server's return.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from tumorseg.errors import DatabaseUnavailable, InvalidInput
from tumorseg.logs import redacted

log = logging.getLogger(__name__)

WAIT_S = 5.0  # a request waits this long for a connection before its 503
# The pool retries a lost server with growing delays, one attempt at a time; it gives up after this long,
# and the next request starts afresh (1 s, 2 s, 4 s...), so a server back after a long outage is used
# within seconds rather than after the last, long delay.
RECONNECT_S = 10.0
RETRY_AFTER_S = 5
# libpq options: fail a connection attempt after 5 s, drop a silent peer after ~25 s of TCP keepalive (an
# idle connection) or after 10 s of unacknowledged data (``tcp_user_timeout``, ms: a connection sending
# while the host vanished, which keepalives do not cover). The server ends a session left idle inside a
# transaction after 30 s (its locks are released) and a statement after 120 s (a result is a few MB of
# bytea; nothing here runs longer).
CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "options": "-c idle_in_transaction_session_timeout=30000 -c statement_timeout=120000",
    "application_name": "tumorseg",
}
# The oldest server accepted: the trigger's leader session relies on idle_session_timeout (14+).
MIN_SERVER_VERSION = 140000


class Database:
    """The pool of connections to one PostgreSQL database (``url``: ``postgresql://...``). Connections
    are in autocommit mode: a store opens ``transaction()`` where several statements must be atomic."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.url = url
        self.pool: ConnectionPool[psycopg.Connection[DictRow]] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=WAIT_S,
            reconnect_timeout=RECONNECT_S,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs={"autocommit": True, "row_factory": dict_row, **CONNECT_OPTIONS},
            name="tumorseg",
        )
        self.pool.open(wait=False)  # a database still starting is waited for call by call, not here

    def __repr__(self) -> str:
        return f"Database({redacted(self.url)!r})"

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[DictRow]]:
        """A pooled connection; ``DatabaseUnavailable`` when the server cannot be reached or drops the
        connection mid-call (a statement that had not committed has no effect); ``InvalidInput`` (422) for a value
        the server refuses (``psycopg.DataError``: a NUL byte in a text, say) rather than a 500."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise unavailable(self.url, exc) from exc
        except psycopg.DataError as exc:  # a value the server refuses (a NUL byte in a text): the caller's
            raise InvalidInput(
                f"a value the database cannot store: {exc.diag.message_primary or exc}"
            ) from exc

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[DictRow]]:
        """A pooled connection inside one transaction, committed when the block ends without error."""
        with self.connection() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        self.pool.close()


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    log.warning("database %s unavailable: %s", redacted(url), type(exc).__name__)
    return DatabaseUnavailable(
        f"the database ({urlsplit(url).hostname}) is not reachable; retry in a few seconds",
        retry_after_s=RETRY_AFTER_S,
    )
