"""`tumorseg serve` (and `tumorseg worker`) as real local processes, started the way a user would.

The integration tests (``tests/service.py``), ``make demo`` (``scripts/demo.py``) and ``make bench``
(``scripts/bench.py``) all need the HTTP service as a separate process: the console script next to
this interpreter, run as ``tumorseg serve --host 127.0.0.1 --port <free port>``, configured only through
``TUMORSEG_*`` environment variables, its output (the JSON log lines) in a log file. :class:`LocalService`
is that one definition: it starts the process, waits until ``GET /health`` answers and stops it again.

It deliberately imports nothing of the service itself (only the standard library, httpx and
``free_port`` and ``terminate`` from ``tumorseg_devkit.local``), so launching the service never loads its code into
the caller.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from tumorseg_devkit.local import free_port, terminate

HOST = "127.0.0.1"
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
_POLL_S = 0.3
_LOG_TAIL_LINES = 40


class ServiceStartError(RuntimeError):
    """The service exited, or did not answer ``GET /health`` in time. The message names the log file
    and quotes its last lines."""

    def __init__(self, reason: str, log_path: Path) -> None:
        self.reason = reason
        self.log_path = log_path
        self.log_tail = _tail(log_path)
        message = f"{reason}; see {log_path}"
        if self.log_tail:
            message += f"\n--- last lines of {log_path} ---\n{self.log_tail}"
        super().__init__(message)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def tumorseg_executable() -> Path:
    """The ``tumorseg`` console script of this interpreter's environment (next to ``sys.executable``)."""
    return Path(sys.executable).with_name("tumorseg")


class LocalService:
    """One ``tumorseg serve`` process on 127.0.0.1 and a free port.

    ``env`` (the ``TUMORSEG_*`` settings) is merged over ``os.environ``; stdout and stderr go to
    ``log_path`` (truncated). ``start()`` returns once ``GET /health`` answers with any HTTP response,
    within ``timeout`` seconds, or raises :class:`ServiceStartError`; ``stop()`` terminates the process
    (killing it if it has not exited after ``stop_timeout`` seconds) and closes the log. As a context
    manager it starts on entry and stops on exit::

        with LocalService({"TUMORSEG_ORTHANC_URL": url}, Path("service.log")) as service:
            httpx.post(f"{service.url}/segment/P1")
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        timeout: float = START_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        port: int | None = None,
    ) -> None:
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.port = port or free_port()
        self.health: dict[str, Any] = {}
        """The JSON body of the first ``GET /health`` that answered (empty before ``start()``)."""
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123`` (known before ``start()``)."""
        return f"http://{HOST}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [str(tumorseg_executable()), "serve", "--host", HOST, "--port", str(self.port)]

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The running ``tumorseg serve`` process; an error before ``start()``."""
        if self._process is None:
            raise RuntimeError("the service has not been started")
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> LocalService:
        """Start the process and wait until ``GET /health`` answers; on failure stop it and raise
        :class:`ServiceStartError`. Returns ``self``."""
        if self._process is not None:
            raise RuntimeError("the service was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        try:
            self._process = subprocess.Popen(
                self.command,
                env={**os.environ, **self.env},
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        self.health = self._wait_for_health()

    def _wait_for_health(self) -> dict[str, Any]:
        process = self.process
        deadline = time.monotonic() + self.timeout
        while True:
            if process.poll() is not None:
                raise ServiceStartError(
                    f"the service exited early (exit code {process.returncode})", self.log_path
                )
            try:
                response = httpx.get(f"{self.url}/health", timeout=5)
            except httpx.TransportError:
                if time.monotonic() >= deadline:
                    raise ServiceStartError(
                        f"the service did not start within {self.timeout:g} s", self.log_path
                    ) from None
                time.sleep(_POLL_S)
                continue
            try:
                body = response.json()
            except ValueError:
                return {}
            return body if isinstance(body, dict) else {}

    def stop(self) -> None:
        """Terminate the process (kill it after ``stop_timeout`` s), wait for it and close the log.
        Safe to call more than once, and before or after a failed ``start()``."""
        process = self._process
        try:
            terminate(process, self.stop_timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


WORKER_READY = "worker taking jobs"  # the log line ``tumorseg worker`` writes once it takes jobs


class LocalWorker(LocalService):
    """One ``tumorseg worker`` process (distributed mode: ``env`` has ``TUMORSEG_QUEUE_URL``); ``start()``
    returns once it takes jobs. ``kill()`` ends it as a power loss would (SIGKILL)."""

    @property
    def command(self) -> list[str]:
        return [str(tumorseg_executable()), "worker"]

    def _wait_ready(self) -> None:
        process = self.process
        deadline = time.monotonic() + self.timeout
        while WORKER_READY not in _tail(self.log_path):
            if process.poll() is not None:
                raise ServiceStartError(
                    f"the worker exited early (exit code {process.returncode})", self.log_path
                )
            if time.monotonic() >= deadline:
                raise ServiceStartError(f"the worker did not start within {self.timeout:g} s", self.log_path)
            time.sleep(_POLL_S)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.stop()
