"""The Orthanc the tests talk to, and the service's settings pointing at it (plain helpers, no fixtures:
the session fixtures that build these live in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tumorseg.config import Settings, get_settings
from tumorseg.pacs import OrthancClient
from tumorseg.pacs.upload import upload_directory
from tumorseg_devkit.local import LocalOrthanc

# Orthanc marks a study stable StableAge seconds after its last instance; the service answers 409 before
# that, so uploads in the tests wait for it (``upload_directory(stable_timeout=...)``): 1 s keeps it short.
TEST_ORTHANC = {"StableAge": 1}


@dataclass(frozen=True)
class OrthancEndpoint:
    url: str
    username: str
    password: str
    local: LocalOrthanc | None = None

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def client(self, **kwargs: object) -> OrthancClient:
        return OrthancClient(self.url, self.auth, **kwargs)  # type: ignore[arg-type]

    def env(self) -> dict[str, str]:
        """The service's settings pointing at this Orthanc, as environment variables."""
        return {
            "TUMORSEG_ORTHANC_URL": self.url,
            "TUMORSEG_ORTHANC_USERNAME": self.username,
            "TUMORSEG_ORTHANC_PASSWORD": self.password,
        }


def service_settings(url: str, auth: tuple[str, str] | None, **extra: object) -> Settings:
    """The service's settings for tests: this Orthanc, CPU, no .env file; ``extra`` sets the rest."""
    user, password = auth if auth else (None, None)
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        orthanc_url=url,
        orthanc_username=user,
        orthanc_password=password,
        device="cpu",
        **extra,
    )


def segment_settings(
    url: str, auth: tuple[str, str] | None, model: Path, results: Path, **extra: object
) -> Settings:
    """``service_settings`` with a model package and a results directory: what POST /segment needs."""
    return service_settings(url, auth, model_path=model, results_dir=results, **extra)


def upload_folder(orthanc: OrthancEndpoint, folder: Path) -> None:
    """Upload every DICOM file under ``folder``; fails the test if Orthanc refuses any."""
    with orthanc.client() as pacs:
        report = upload_directory(pacs, folder, stable_timeout=60.0)
    assert not report.failed


def service_env(
    url: str, auth: tuple[str, str], model: Path, results: Path, **settings: str
) -> dict[str, str]:
    """The environment of a served ``tumorseg serve`` for tests: this Orthanc, a model, a results folder,
    the CPU, and ``settings`` as ``TUMORSEG_<NAME>``."""
    return {
        "TUMORSEG_ORTHANC_URL": url,
        "TUMORSEG_ORTHANC_USERNAME": auth[0],
        "TUMORSEG_ORTHANC_PASSWORD": auth[1],
        "TUMORSEG_MODEL_PATH": str(model),
        "TUMORSEG_RESULTS_DIR": str(results),
        "TUMORSEG_DEVICE": "cpu",
        **{f"TUMORSEG_{name.upper()}": value for name, value in settings.items()},
    }


@contextmanager
def cli_with_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[CliRunner]:
    """A CLI runner whose commands read ``env`` as their settings (the cached settings cleared before
    and after, so no other test sees them)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        yield CliRunner()
    finally:
        get_settings.cache_clear()
