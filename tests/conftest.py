"""Session fixtures: one real Orthanc for the whole run.

By default the Debian ``/usr/sbin/Orthanc`` is started with the project's ``services/orthanc/orthanc.json``
(free ports, temp storage, auth on) and stopped at the end. With ``TUMORSEG_TEST_ORTHANC_URL`` (and
``TUMORSEG_TEST_ORTHANC_USERNAME``/``_PASSWORD``) the tests use that Orthanc instead, e.g. the official
image as a CI service container. Tests create their own patients with unique PatientIDs, so a shared
Orthanc is fine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tumorseg.config import Settings
from tumorseg.pacs import OrthancClient
from tumorseg.pacs.local import LocalOrthanc


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


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancEndpoint]:
    url = os.environ.get("TUMORSEG_TEST_ORTHANC_URL")
    if url:
        yield OrthancEndpoint(
            url.rstrip("/"),
            os.environ.get("TUMORSEG_TEST_ORTHANC_USERNAME", "orthanc"),
            os.environ.get("TUMORSEG_TEST_ORTHANC_PASSWORD", "orthanc"),
        )
        return
    with LocalOrthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield OrthancEndpoint(server.url, server.username, server.password, local=server)


@pytest.fixture
def orthanc_client(orthanc: OrthancEndpoint) -> Iterator[OrthancClient]:
    with orthanc.client() as client:
        yield client


@pytest.fixture
def own_orthanc(tmp_path: Path) -> Iterator[LocalOrthanc]:
    """A private Orthanc that a test may stop and restart (fault tests). Needs the Debian binary."""
    server = LocalOrthanc(tmp_path / "own-orthanc")
    try:
        yield server.start()
    finally:
        server.stop()
