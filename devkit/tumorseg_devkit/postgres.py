"""A real PostgreSQL for tests (and ``make bench``): Debian's ``postgresql`` package, one server in a
private temporary directory on a free port, removed on ``close``.

``initdb`` and ``postgres`` refuse to run as root, which CI is: as root both run as the ``postgres`` system
user the package creates (``runuser -u postgres -- ...``), in a directory under /tmp that this launcher
creates and gives to that user (pytest's temporary directories are root's, mode 0700, out of its reach).
Connections over TCP on 127.0.0.1 need the password (scram-sha-256), so the URL carries one as a
deployment's would; the socket in the data directory is trusted (the launcher's own ``psql`` calls).

Durability is off (``fsync=off``) unless ``durable=True`` (benchmarks): the data are a test's, and a
crash of the machine loses nothing that matters. ``stop``/``start`` restart the same cluster (fault tests: the database goes away under a
running service and comes back with its data).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

PG_BIN = Path("/usr/lib/postgresql")
SYSTEM_USER = "postgres"
SUPERUSER = "tumorseg"


def _bin_dir() -> Path:
    """The newest installed server's ``bin`` folder (Debian installs it per major version)."""
    versions = sorted(
        (p for p in PG_BIN.glob("*/bin") if (p / "postgres").exists()), key=lambda p: int(p.parent.name)
    )
    if not versions:
        raise FileNotFoundError(
            f"no PostgreSQL server under {PG_BIN}; run `make setup` (installs the Debian postgresql package)"
        )
    return versions[-1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    """One PostgreSQL server on 127.0.0.1 and a free port; ``url`` is its ``postgres`` database,
    ``create_database`` makes a fresh one. A context manager (start, then close)."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable  # fsync and synchronous commits on, as in production (benchmarks)
        self.bin = _bin_dir()
        self.as_root = os.geteuid() == 0
        self.workdir = Path(tempfile.mkdtemp(prefix="tumorseg-pg-"))
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self.port = _free_port()
        self.password = secrets.token_urlsafe(16)
        if self.as_root:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        self._process: subprocess.Popen[bytes] | None = None
        self._initdb()

    def _run_as(self, *args: str) -> list[str]:
        return ["runuser", "-u", SYSTEM_USER, "--", *args] if self.as_root else list(args)

    def _initdb(self) -> None:
        pwfile = self.workdir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        try:
            subprocess.run(
                self._run_as(
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ),
                check=True,
                capture_output=True,
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            self.close()
            raise RuntimeError(f"initdb failed: {exc.stderr.decode(errors='replace')}") from exc
        finally:
            pwfile.unlink(missing_ok=True)

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{name}"

    def start(self, timeout: float = 30.0) -> LocalPostgres:
        if self._process is not None and self._process.poll() is None:
            return self
        args = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        args += ["-k", str(self.workdir), "-h", "127.0.0.1", "-c", "max_connections=200"]
        if not self.durable:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._run_as(*args), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self._log_tail()}")
            if self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"postgres did not answer within {timeout} s: {self._log_tail()}")

    def _answers(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return "(no log)"

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast``: sessions are closed; ``immediate``: as a crash)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            subprocess.run(
                self._run_as(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w"),
                capture_output=True,
                timeout=60,
            )
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def create_database(self, name: str | None = None) -> str:
        """A fresh empty database; its URL."""
        name = name or f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
