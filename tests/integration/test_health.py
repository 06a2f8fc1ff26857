"""/health, /docs and /openapi.json with the service pointed at a real Orthanc and the shipped model.

The model is expected to load everywhere here (``models/default``), so /health must say so; a degraded
status then comes from Orthanc alone. A missing model is tested in ``test_segment_api.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.orthanc import OrthancEndpoint, service_settings
from tests.service import running_service
from tumorseg.api.main import create_app
from tumorseg.config import DEFAULT_MODEL_PATH
from tumorseg.model import fused
from tumorseg.model.package import read_manifest
from tumorseg_devkit.local import LocalOrthanc

pytestmark = pytest.mark.integration

MODEL_LOADED = {
    **read_manifest(DEFAULT_MODEL_PATH).describe(),
    "loaded": True,
    # the shipped model's fused CPU path agrees with its plain network on this torch
    "fast_path": "fused" if fused._mkldnn_ops() is not None else "off",
}  # name, version, backend, provenance


def test_health_reports_orthanc_version(orthanc: OrthancEndpoint) -> None:
    with orthanc.client() as pacs:
        version = pacs.system()["Version"]
    app = create_app(service_settings(orthanc.url, orthanc.auth, model_path=DEFAULT_MODEL_PATH))
    with TestClient(app) as client:
        response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["orthanc"] == {"reachable": True, "version": version}
    assert body["device"] == "cpu"
    assert body["model"] == MODEL_LOADED, "models/default must load"
    assert body["status"] == "ok"
    assert response.headers["X-Request-ID"]


def test_health_with_rejected_credentials_is_degraded(orthanc: OrthancEndpoint) -> None:
    settings = service_settings(orthanc.url, (orthanc.username, "nope"), model_path=DEFAULT_MODEL_PATH)
    with TestClient(create_app(settings)) as client:
        body = client.get("/health").json()
    assert body["status"] == "degraded"
    assert body["orthanc"] == {"reachable": False, "version": None}
    assert body["model"] == MODEL_LOADED  # degraded by Orthanc alone


def test_request_id_is_echoed_or_made(orthanc: OrthancEndpoint) -> None:
    with TestClient(create_app(service_settings(orthanc.url, orthanc.auth))) as client:
        assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
        made = client.get("/health", headers={"X-Request-ID": "bad id\n"}).headers["X-Request-ID"]
        assert made != "bad id\n" and len(made) == 32


def test_openapi_declares_the_contract_routes(orthanc: OrthancEndpoint) -> None:
    with TestClient(create_app(service_settings(orthanc.url, orthanc.auth))) as client:
        spec = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert "/health" in spec["paths"]
    segment = spec["paths"]["/segment/{patient_id}"]["post"]
    assert {p["name"] for p in segment["parameters"]} >= {"patient_id", "study", "reference", "store_seg"}
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_errors_are_json_with_a_code(orthanc: OrthancEndpoint) -> None:
    with TestClient(create_app(service_settings(orthanc.url, orthanc.auth))) as client:
        missing = client.get("/no-such-route")
        bad = client.post("/segment/P1", params={"reference": "dwi"})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"
    assert "reference" in bad.json()["detail"]


def test_api_key_guards_every_route_but_health(orthanc: OrthancEndpoint) -> None:
    app = create_app(service_settings(orthanc.url, orthanc.auth, api_key="k" * 32))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        denied = client.post("/segment/P1")
        assert denied.status_code == 401 and denied.json()["code"] == "unauthorized"
        assert client.post("/segment/P1", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/segment/P1", headers={"X-API-Key": "k" * 32}).status_code != 401


@pytest.fixture
def served(own_orthanc: LocalOrthanc, tmp_path: Path) -> Iterator[tuple[str, LocalOrthanc]]:
    """`tumorseg serve` as a real process, pointed at a private Orthanc the test may stop."""
    env = {
        "TUMORSEG_ORTHANC_URL": own_orthanc.url,
        "TUMORSEG_ORTHANC_USERNAME": own_orthanc.username,
        "TUMORSEG_ORTHANC_PASSWORD": own_orthanc.password,
        "TUMORSEG_DEVICE": "cpu",
        "TUMORSEG_MODEL_PATH": str(DEFAULT_MODEL_PATH),
        "TUMORSEG_RESULTS_DIR": str(tmp_path / "results"),
    }
    with running_service(env, tmp_path / "serve.log", tmp_path) as url:
        yield url, own_orthanc


def test_served_health_follows_orthanc_down_and_up(served: tuple[str, LocalOrthanc]) -> None:
    url, server = served
    up = httpx.get(f"{url}/health", timeout=10).json()
    assert up["orthanc"]["reachable"] is True and up["orthanc"]["version"]
    assert up["model"] == MODEL_LOADED and up["status"] == "ok"
    assert httpx.get(f"{url}/docs", timeout=10).status_code == 200
    assert httpx.get(f"{url}/openapi.json", timeout=10).json()["info"]["title"] == "tumorseg"

    server.stop()
    down = httpx.get(f"{url}/health", timeout=10)
    assert down.status_code == 200
    assert down.json()["status"] == "degraded"
    assert down.json()["orthanc"] == {"reachable": False, "version": None}
    assert down.json()["model"] == MODEL_LOADED  # degraded by Orthanc alone

    server.start()
    again = httpx.get(f"{url}/health", timeout=10).json()
    assert again["orthanc"]["reachable"] is True and again["status"] == "ok"
