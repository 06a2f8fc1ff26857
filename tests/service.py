"""`tumorseg serve` as a real process, for tests that need the service as users run it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tumorseg.pacs.local import free_port


@contextmanager
def running_service(env: dict[str, str], log_path: Path, cwd: Path, timeout: float = 90.0) -> Iterator[str]:
    """Start the service with ``env`` added to this process's environment; yield its base URL; stop it.
    Its stdout and stderr (the JSON log lines) go to ``log_path``."""
    port = free_port()
    exe = Path(sys.executable).with_name("tumorseg")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(exe), "serve", "--port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert process.poll() is None, log_path.read_text()
                try:
                    httpx.get(f"{url}/health", timeout=5)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "service did not start"
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)
