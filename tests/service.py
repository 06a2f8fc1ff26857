"""`tumorseg serve` as a real process, for tests that need the service as users run it.

A thin wrapper over :class:`tumorseg_devkit.launcher.LocalService`, the one launcher that ``make demo`` and
``make bench`` use too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tumorseg_devkit.launcher import LocalService


@contextmanager
def running_service(env: dict[str, str], log_path: Path, cwd: Path, timeout: float = 90.0) -> Iterator[str]:
    """Start the service with ``env`` added to this process's environment; yield its base URL; stop it.
    Its stdout and stderr (the JSON log lines) go to ``log_path``; it runs in ``cwd``. If it exits or
    does not answer ``GET /health`` within ``timeout`` seconds, ``ServiceStartError`` names the log
    and quotes its last lines."""
    with LocalService(env, log_path, cwd=cwd, timeout=timeout) as service:
        yield service.url
