"""The timeline's server side without a browser: the page is a public shell under the viewer's policy,
its scripts and styles come from this origin, the data routes need the key like every other, and a PACS
that cannot be reached is a 503. The browser is driven in ``tests/integration/test_timeline.py``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.models import tiny_package
from tests.orthanc import service_settings
from tumorseg.api.main import create_app
from tumorseg.api.routes.pages import SECURITY_HEADERS

KEY = "unit-test-key"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = service_settings(
        "http://127.0.0.1:9",  # nothing listens: the PACS is down
        None,
        model_path=tiny_package(tmp_path / "tiny"),
        results_dir=tmp_path / "results",
        api_key=KEY,
        brain_extractor="none",  # no segmentation runs here: no extractor to load and warm up
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_timeline_page_is_a_public_shell_with_the_viewers_policy(api: TestClient) -> None:
    page = api.get("/patients/P%201/timeline/view")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert "P 1" not in page.text  # the same bytes for every patient
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/timeline.js" in sources
    for src in sources:
        assert src.startswith("/"), f"the page loads {src} from elsewhere"
        if src.startswith("/static/"):
            assert api.get(src).status_code == 200, src
    assert "innerHTML" not in api.get("/static/timeline.js").text  # values from DICOM stay text


def test_timeline_data_needs_the_key_and_a_pacs_down_is_a_503(api: TestClient) -> None:
    key = {"X-API-Key": KEY}
    assert api.get("/patients/P1/timeline").status_code == 401
    assert api.post("/patients/P1/timeline/segment").status_code == 401
    down = api.get("/patients/P1/timeline", headers=key)
    assert down.status_code == 503, down.text
    assert api.post("/patients/P1/timeline/segment", headers=key).status_code == 503
    schema = api.get("/openapi.json").json()["paths"]
    assert "/patients/{patient_id}/timeline" in schema and "/patients/{patient_id}/timeline/segment" in schema
