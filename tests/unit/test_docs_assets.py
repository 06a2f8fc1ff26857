"""``/docs`` without a browser: the vendored Swagger UI is exactly the files its notes list, the page loads
nothing but them and its own start-up script under a strict Content-Security-Policy, and FastAPI's CDN
pages (Swagger UI, ReDoc, the OAuth2 redirect) are gone. The browser is driven in
``tests/integration/test_docs_offline.py``."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.orthanc import service_settings
from tumorseg.api.main import create_app
from tumorseg.api.routes.pages import STATIC_DIR

VENDOR = STATIC_DIR / "vendor" / "swagger-ui"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = service_settings(
        "http://127.0.0.1:9",
        None,
        model_path=tmp_path / "no-model",
        results_dir=tmp_path / "results",
        api_key="unit-test-key",
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_vendored_swagger_ui_is_the_files_its_notes_describe() -> None:
    notes = (VENDOR / "SWAGGER.md").read_text()
    listed = dict(re.findall(r"^- `([^`]+)`: `([0-9a-f]{64})`$", notes, flags=re.MULTILINE))
    on_disk = {path.name for path in VENDOR.iterdir()} - {"SWAGGER.md"}
    assert set(listed) == on_disk and "swagger-ui-bundle.js" in listed and "swagger-ui.css" in listed
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert re.search(r"^# Vendored: Swagger UI \d+\.\d+\.\d+$", notes, flags=re.MULTILINE)
    assert re.search(r"\(sha512-[A-Za-z0-9+/=]+\)", notes), "the npm tarball's integrity"
    assert "Licence: Apache-2.0" in notes and "Apache License" in (VENDOR / "LICENSE").read_text()


def test_docs_is_a_page_of_this_origin_only_under_a_strict_policy(api: TestClient) -> None:
    page = api.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"].split("; ")
    directives = {words[0]: words[1:] for words in (directive.split() for directive in policy)}
    assert directives["default-src"] == ["'none'"] and directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"] and directives["style-src-attr"] == ["'unsafe-inline'"]
    assert directives["connect-src"][0] == "'self'" and directives["frame-ancestors"] == ["'none'"]
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text), "an inline script"
    assert not re.search(r"\son\w+=", page.text), "an inline event handler"
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in sources and "/static/docs.js" in sources
    for source in sources:
        assert source.startswith("/") or source == "data:,", f"/docs loads {source} from elsewhere"
        if source.startswith("/"):
            assert api.get(source).status_code == 200, source


def test_swagger_ui_starts_on_this_api_without_validator_nor_stored_key() -> None:
    script = (STATIC_DIR / "docs.js").read_text()
    assert 'url: "/openapi.json"' in script
    assert "validatorUrl: null," in script and "persistAuthorization: false," in script
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))
    assert "//" not in code, "a URL of another origin"


def test_fastapi_cdn_pages_are_gone_and_docs_stays_out_of_the_schema(api: TestClient) -> None:
    for path in ("/redoc", "/docs/oauth2-redirect"):
        assert api.get(path).status_code == 404, path
    schema = api.get("/openapi.json").json()
    assert "/docs" not in schema["paths"] and "APIKeyHeader" in schema["components"]["securitySchemes"]
