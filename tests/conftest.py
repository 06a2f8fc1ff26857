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
from pathlib import Path

import pytest

from tests.orthanc import TEST_ORTHANC, OrthancEndpoint
from tumorseg.pacs import OrthancClient
from tumorseg_devkit.local import LocalOrthanc, LocalRedis
from tumorseg_devkit.postgres import LocalPostgres


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
    with LocalOrthanc(tmp_path_factory.mktemp("orthanc"), overrides=TEST_ORTHANC) as server:
        yield OrthancEndpoint(server.url, server.username, server.password, local=server)


@pytest.fixture
def orthanc_client(orthanc: OrthancEndpoint) -> Iterator[OrthancClient]:
    with orthanc.client() as client:
        yield client


@pytest.fixture
def own_orthanc(tmp_path: Path) -> Iterator[LocalOrthanc]:
    """A private Orthanc that a test may stop and restart (fault tests). Needs the Debian binary."""
    server = LocalOrthanc(tmp_path / "own-orthanc", overrides=TEST_ORTHANC)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalRedis]:
    """A private Redis (the Debian ``redis-server``, installed by ``make setup``) for one test."""
    with LocalRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One PostgreSQL server (Debian's ``postgresql``) for the whole run; tests take databases from it."""
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def postgres(postgres_server: LocalPostgres) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture
def own_postgres() -> Iterator[LocalPostgres]:
    """A private PostgreSQL server that a test may stop and restart (fault tests)."""
    with LocalPostgres() as server:
        yield server
