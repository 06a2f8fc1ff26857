"""Swagger UI at ``/docs`` in a real headless Chromium that cannot reach any host but 127.0.0.1 (a
hospital network without internet): ``tumorseg serve`` with an API key, against the test Orthanc.

The page must show every operation of ``/openapi.json`` with every request it sends going to the service
itself and no Content-Security-Policy violation; "Authorize" with the key, then "Try it out" on
``GET /jobs``, must answer 200, and 401 without the key. Screenshots go to ``out/test-artifacts/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import OFFLINE, chromium, console, requests_sent
from tests.orthanc import OrthancEndpoint
from tests.service import running_service

pytestmark = pytest.mark.integration

API_KEY = "docs-test-key-0123456789"
ARTIFACTS = Path(
    os.environ.get("TUMORSEG_TEST_ARTIFACTS", Path(__file__).parents[2] / "out" / "test-artifacts")
)


@pytest.fixture(scope="module")
def service(orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service's base URL. No model: the docs and the job list need none (``/health`` is degraded)."""
    work = tmp_path_factory.mktemp("docs")
    env = {
        **orthanc.env(),
        "TUMORSEG_MODEL_PATH": str(work / "no-model"),
        "TUMORSEG_RESULTS_DIR": str(work / "results"),
        "TUMORSEG_DEVICE": "cpu",
        "TUMORSEG_API_KEY": API_KEY,
    }
    with running_service(env, work / "service.log", work) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Chrome]:
    with chromium(OFFLINE, network_log=True) as driver:
        yield driver


@pytest.fixture
def openapi(service: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{service}/openapi.json", timeout=30).json()
    return document


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def _shown_operations(driver: WebDriver) -> set[tuple[str, str]]:
    return {
        (
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text.strip(),
            str(block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path")),
        )
        for block in driver.find_elements(By.CSS_SELECTOR, ".opblock")
    }


def _open_docs(driver: WebDriver, service: str, expected: set[tuple[str, str]]) -> None:
    driver.get(f"{service}/docs")
    WebDriverWait(driver, 60, poll_frequency=0.5).until(lambda d: _shown_operations(d) == expected)


def _foreign(urls: list[str], service: str) -> list[str]:
    """The requests that went anywhere but the service (``data:`` URLs are the stylesheet's icons)."""
    return [url for url in urls if not url.startswith((f"{service}/", "data:"))]


def _csp_violations(messages: list[str]) -> list[str]:
    return [m for m in messages if "Content Security Policy" in m or "Content-Security-Policy" in m]


def test_docs_show_every_operation_from_the_service_alone(
    service: str, browser: Chrome, openapi: dict[str, Any]
) -> None:
    # The browser really is offline: another host does not resolve.
    with pytest.raises(WebDriverException, match="ERR_NAME_NOT_RESOLVED"):
        browser.get("http://example.com/")
    console(browser), requests_sent(browser)  # the logs from here on only

    expected = _operations(openapi)
    assert ("GET", "/jobs") in expected and len(expected) >= 8
    _open_docs(browser, service, expected)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "docs-offline.png"))
    sent = requests_sent(browser)
    assert f"{service}/openapi.json" in sent and f"{service}/static/docs.js" in sent, sent
    assert not _foreign(sent, service), sent
    messages = console(browser)
    assert not _csp_violations(messages), messages
    assert not [m for m in messages if "SEVERE" in m or "Failed to load" in m], messages
    # No validator badge, and the page's own title and version are the API's.
    assert not browser.find_elements(By.CSS_SELECTOR, ".errors-wrapper, img[src*='validator']")
    title = browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert title.startswith(openapi["info"]["title"]) and openapi["info"]["version"] in title


def _jobs_operation(driver: WebDriver, document: dict[str, Any]) -> WebElement:
    operation = document["paths"]["/jobs"]["get"]
    block = driver.find_element(By.ID, f"operations-{operation['tags'][0]}-{operation['operationId']}")
    if "is-open" not in str(block.get_attribute("class")):
        block.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    WebDriverWait(driver, 30).until(lambda d: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    return block


def _try_it_out(driver: WebDriver, block: WebElement) -> tuple[int, str]:
    """Execute the operation in ``block``; the status and body Swagger UI shows for the answer."""
    if not block.find_elements(By.CSS_SELECTOR, "button.execute"):
        block.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    for clear in block.find_elements(By.CSS_SELECTOR, "button.btn-clear"):
        clear.click()
    WebDriverWait(driver, 30).until(
        lambda d: not block.find_elements(By.CSS_SELECTOR, ".live-responses-table")
    )
    block.find_element(By.CSS_SELECTOR, "button.execute").click()
    cell = WebDriverWait(driver, 30).until(
        lambda d: block.find_element(
            By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status"
        )
    )
    status = int(cell.text.split()[0])
    body = block.find_element(
        By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_description"
    ).text
    return status, body


def _authorize(driver: WebDriver, key: str) -> None:
    driver.find_element(By.CSS_SELECTOR, ".auth-wrapper button.authorize").click()
    modal = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".modal-ux"))
    assert "X-API-Key" in modal.text
    modal.find_element(By.CSS_SELECTOR, ".auth-container input").send_keys(key)
    modal.find_element(By.CSS_SELECTOR, "button.modal-btn.authorize").click()
    WebDriverWait(driver, 30).until(
        lambda d: modal.find_elements(By.CSS_SELECTOR, "button[aria-label='Remove authorization']")
    )
    modal.find_element(By.CSS_SELECTOR, "button.btn-done").click()
    WebDriverWait(driver, 30).until(lambda d: not d.find_elements(By.CSS_SELECTOR, ".modal-ux"))


def test_try_it_out_answers_200_with_the_key_and_401_without(
    service: str, browser: Chrome, openapi: dict[str, Any]
) -> None:
    expected = _operations(openapi)
    _open_docs(browser, service, expected)
    console(browser), requests_sent(browser)
    block = _jobs_operation(browser, openapi)

    status, body = _try_it_out(browser, block)
    assert status == 401 and "X-API-Key" in body, body

    _authorize(browser, API_KEY)
    status, body = _try_it_out(browser, block)
    assert status == 200 and '"jobs"' in body and '"total"' in body, body
    browser.save_screenshot(str(ARTIFACTS / "docs-try-it-out.png"))
    # persistAuthorization is off: the key is in no storage, and a reload forgets it.
    stored = browser.execute_script("return JSON.stringify({...localStorage, ...sessionStorage})")
    assert API_KEY not in stored, stored
    _open_docs(browser, service, expected)
    status, _ = _try_it_out(browser, _jobs_operation(browser, openapi))
    assert status == 401

    assert not _foreign(requests_sent(browser), service)
    assert not _csp_violations(console(browser))
