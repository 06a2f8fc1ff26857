"""Local server processes for tests, ``make demo`` and ``make bench``: an Orthanc (the Debian
``/usr/sbin/Orthanc``), a Redis (the Debian ``redis-server``, for distributed mode's queue) and a
Prometheus (the Debian ``prometheus``, scraping the service's metrics).

It runs with the project's ``services/orthanc/orthanc.json``, changing only what must differ per run:
free HTTP/DICOM ports, storage in a private folder, the plugin folder of the Debian package, and one
registered user with a random password. It never touches the system service or its database.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx
import redis

from tumorseg_devkit.paths import ORTHANC_CONFIG

DEBIAN_ORTHANC = "/usr/sbin/Orthanc"
DEBIAN_PLUGINS = Path("/usr/share/orthanc/plugins")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def terminate(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``timeout`` seconds; waits for it."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_ready(
    process: subprocess.Popen[bytes],
    answers: Callable[[], bool],
    timeout: float,
    name: str,
    log_path: Path,
    stop: Callable[[], None],
) -> None:
    """Poll ``answers`` every 0.1 s until it is true; ``RuntimeError`` if the process exits first,
    ``TimeoutError`` (after ``stop()``) if ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}; see {log_path}")
        if answers():
            return
        time.sleep(0.1)
    stop()
    raise TimeoutError(f"{name} did not answer within {timeout} s; see {log_path}")


class LocalOrthanc:
    """Start/stop one Orthanc on 127.0.0.1. ``stop()`` then ``start()`` keeps ports and data (a restart)."""

    def __init__(
        self,
        workdir: Path,
        *,
        base_config: Path = ORTHANC_CONFIG,
        username: str = "tumorseg",
        password: str | None = None,
        http_port: int | None = None,
        executable: str = DEBIAN_ORTHANC,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        resolved = shutil.which(executable) or executable
        if not Path(resolved).exists():
            raise FileNotFoundError(
                f"Orthanc executable {executable} not found; run `make setup` (installs the Debian package)"
            )
        self.executable = resolved
        self.workdir = Path(workdir).resolve()
        self.username = username
        self.password = password or secrets.token_urlsafe(16)
        self.http_port = http_port or free_port()
        self.dicom_port = free_port()
        self.log_path = self.workdir / "orthanc.log"
        self.config_path = self.workdir / "orthanc.json"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._write_config(base_config, overrides or {})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self, base_config: Path, overrides: dict[str, Any]) -> None:
        storage = self.workdir / "db"
        storage.mkdir(parents=True, exist_ok=True)
        config = json.loads(base_config.read_text())
        config.update(
            HttpPort=self.http_port,
            DicomPort=self.dicom_port,
            StorageDirectory=str(storage),
            IndexDirectory=str(storage),
            AuthenticationEnabled=True,
            RegisteredUsers={self.username: self.password},
            Plugins=[str(DEBIAN_PLUGINS)] if DEBIAN_PLUGINS.is_dir() else [],
        )
        config.update(overrides)
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self, timeout: float = 30.0) -> LocalOrthanc:
        if self.running:
            return self
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [self.executable, str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        wait_until_ready(self._process, self._answers, timeout, "Orthanc", self.log_path, self.stop)
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/system", auth=self.auth, timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        terminate(self._process, timeout)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


DEBIAN_REDIS = "/usr/bin/redis-server"


class LocalRedis:
    """One ``redis-server`` on 127.0.0.1: a free port, a random password, nothing saved to disk."""

    def __init__(self, workdir: Path, *, executable: str = DEBIAN_REDIS) -> None:
        resolved = shutil.which(executable) or executable
        if not Path(resolved).exists():
            raise FileNotFoundError(
                f"redis-server ({executable}) not found; run `make setup` (installs the Debian package)"
            )
        self.executable = resolved
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        self.log_path = self.workdir / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> LocalRedis:
        if self._process is not None and self._process.poll() is None:
            return self
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass"]
        args += [self.password, "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        args += ["--logfile", str(self.log_path)]
        self._process = subprocess.Popen(args, cwd=self.workdir, stdout=subprocess.DEVNULL)
        wait_until_ready(self._process, self._answers, timeout, "redis-server", self.log_path, self.stop)
        return self

    def _answers(self) -> bool:
        client = redis.Redis(port=self.port, password=self.password, socket_timeout=1.0)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        terminate(self._process, 10.0)
        self._process = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


DEBIAN_PROMETHEUS = "/usr/bin/prometheus"


class LocalPrometheus:
    """One Prometheus server (the Debian ``prometheus``) on 127.0.0.1 and a free port, scraping
    ``targets`` (job name → ``host:port`` list) every ``interval_s``; its data in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        targets: dict[str, list[str]],
        *,
        interval_s: float = 1.0,
        executable: str = DEBIAN_PROMETHEUS,
    ) -> None:
        resolved = shutil.which(executable) or executable
        if not Path(resolved).exists():
            raise FileNotFoundError(
                f"prometheus ({executable}) not found; run `make setup` (installs the Debian package)"
            )
        self.executable = resolved
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.workdir / "prometheus.log"
        self.config_path = self.workdir / "prometheus.yml"
        interval = f"{max(1, round(interval_s * 1000))}ms"
        config = {  # JSON is YAML: no YAML writer needed
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(hosts)}]}
                for job, hosts in targets.items()
            ],
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> LocalPrometheus:
        if self._process is not None and self._process.poll() is None:
            return self
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                self.executable,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        wait_until_ready(self._process, self._answers, timeout, "prometheus", self.log_path, self.stop)
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of PromQL ``expr`` now: ``[{"metric": {labels}, "value": [t, "v"]}]``."""
        return self._get("/api/v1/query", {"query": expr})

    def series(self, match: str = '{__name__=~".+"}') -> list[dict[str, str]]:
        """The label sets of every series ``match`` selects that Prometheus holds."""
        return self._get("/api/v1/series", {"match[]": match})

    def _get(self, path: str, params: dict[str, str]) -> Any:
        answer = httpx.get(f"{self.url}{path}", params=params, timeout=10.0)
        answer.raise_for_status()
        body = answer.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {body}")
        data = body["data"]
        return data["result"] if isinstance(data, dict) else data

    def stop(self) -> None:
        terminate(self._process, 15.0)
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
