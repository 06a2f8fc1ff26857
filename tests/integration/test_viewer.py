"""The viewer page in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
Selenium; no browser download): a result of the shipped model on the clinical phantom study, served by
``tumorseg serve`` with an API key.

The screenshots are kept under ``out/test-artifacts/`` (or ``$TUMORSEG_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from numpy.typing import NDArray
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import WEBGL, chromium
from tests.orthanc import OrthancEndpoint
from tests.service import running_service
from tests.studies import UploadedStudy
from tumorseg.config import DEFAULT_MODEL_PATH
from tumorseg.labels import LABEL_STYLE

pytestmark = pytest.mark.integration

API_KEY = "viewer-test-key-0123456789"
KEY = {"X-API-Key": API_KEY}
ARTIFACTS = Path(
    os.environ.get("TUMORSEG_TEST_ARTIFACTS", Path(__file__).parents[2] / "out" / "test-artifacts")
)
# A label colour on the screenshot: each channel within this of the label's RGB (the overlay at opacity 1
# over the slices shows the colour itself; anti-aliased edges and the 3D view's shading do not count).
TOLERANCE = 6
MIN_PIXELS = 20


@dataclass(frozen=True)
class Served:
    url: str
    result: dict[str, object]
    mask: NDArray[np.uint8]  # (k, j, i), as SimpleITK reads the mask NIfTI
    voxel_ml: float


@pytest.fixture(scope="module")
def served(
    orthanc: OrthancEndpoint, clinical_study: UploadedStudy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("viewer")
    env = {
        **orthanc.env(),
        "TUMORSEG_MODEL_PATH": str(DEFAULT_MODEL_PATH),
        "TUMORSEG_RESULTS_DIR": str(work / "results"),
        "TUMORSEG_DEVICE": "cpu",
        "TUMORSEG_API_KEY": API_KEY,
    }
    with running_service(env, work / "service.log", work, timeout=180.0) as url:
        response = httpx.post(f"{url}/segment/{clinical_study.patient_id}", headers=KEY, timeout=600)
        assert response.status_code == 200, response.text
        result = response.json()
        download = httpx.get(url + result["mask_url"], headers=KEY, timeout=60)
        assert download.status_code == 200
        (work / "mask.nii.gz").write_bytes(download.content)
        mask = sitk.ReadImage(str(work / "mask.nii.gz"))
        voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
        yield Served(url, result, sitk.GetArrayFromImage(mask).astype(np.uint8), voxel_ml)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium(*WEBGL) as driver:
        yield driver


def _fresh_tab(driver: WebDriver, url: str) -> None:
    """Open ``url`` as a new visitor would: nothing in this origin's sessionStorage."""
    driver.get(url)
    driver.execute_script("window.sessionStorage.clear()")
    driver.get(url)


def _enter_key(driver: WebDriver, key: str) -> None:
    form = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "key-form"))
    WebDriverWait(driver, 30).until(lambda d: form.is_displayed())
    field = driver.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(key)
    form.submit()


def _wait_ready(driver: WebDriver, timeout: float = 120.0) -> None:
    def ready(d: WebDriver) -> bool:
        error = d.execute_script("return document.documentElement.dataset.viewerError || null")
        assert error is None, f"the viewer failed: {error}; console: {_console(d)}"
        return bool(d.execute_script("return document.documentElement.dataset.viewerReady === 'true'"))

    WebDriverWait(driver, timeout, poll_frequency=0.5).until(ready)


def _console(driver: WebDriver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")]


def _canvas_rgb(driver: WebDriver, name: str) -> NDArray[np.uint8]:
    """The viewer's canvas as it is on screen (the panel, with its colour swatches, left out); saved."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"viewer-{name}-page.png"))
    png = driver.find_element(By.ID, "gl").screenshot_as_png
    (ARTIFACTS / f"viewer-{name}.png").write_bytes(png)
    return np.asarray(Image.open(BytesIO(png)).convert("RGB"))


def _colour_pixels(rgb: NDArray[np.uint8], label: int) -> int:
    colour = np.asarray(LABEL_STYLE[label][2], dtype=np.int16)
    return int(np.count_nonzero(np.all(np.abs(rgb.astype(np.int16) - colour) <= TOLERANCE, axis=-1)))


def _set_opacity(driver: WebDriver, value: float) -> None:
    driver.execute_script(
        "const s = document.getElementById('opacity'); s.value = arguments[0];"
        "s.dispatchEvent(new Event('input'));",
        value,
    )
    _redrawn(driver)


def _redrawn(driver: WebDriver) -> None:
    driver.execute_async_script(
        "const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(() => done()));"
    )


def _labels_on_planes(mask: NDArray[np.uint8], centre: list[int]) -> set[int]:
    """The labels on the three voxel planes through ``centre`` (i, j, k): the slices the viewer shows."""
    i, j, k = centre
    planes = np.concatenate([mask[k].ravel(), mask[:, j, :].ravel(), mask[:, :, i].ravel()])
    return {int(v) for v in np.unique(planes)} - {0}


def test_viewer_shows_the_mask_over_the_reference_in_the_label_colours(
    served: Served, browser: WebDriver
) -> None:
    result = served.result
    assert result["viewer_url"] == f"/results/{result['result_id']}/viewer"
    _fresh_tab(browser, served.url + str(result["viewer_url"]))
    _enter_key(browser, API_KEY)
    _wait_ready(browser)
    state = browser.execute_script(
        "const v = window.tumorsegViewer;"
        "return {counts: v.voxelCounts, centre: v.centreVoxel, cross: v.crosshairVoxel(), dims: v.dims}"
    )
    # The planes shown go through the tumour's centre of mass (file voxel i, j, k; the mask is k, j, i).
    tumour = np.argwhere(served.mask > 0)
    assert len(tumour), "empty mask"
    centre_of_mass = [int(np.floor(v + 0.5)) for v in tumour.mean(axis=0)[::-1]]  # as Math.round
    assert state["centre"] == centre_of_mass
    assert [int(np.floor(v + 0.5)) for v in state["cross"]] == centre_of_mass
    # Both volumes are the result's: the mask's and the reference's lattices as the JSON gives them.
    mask_geometry = result["mask"]
    assert isinstance(mask_geometry, dict)
    assert state["dims"]["mask"] == mask_geometry["shape"] == state["dims"]["reference"]
    counts = {int(label): int(n) for label, n in state["counts"].items()}
    expected_counts = {label: int(np.count_nonzero(served.mask == label)) for label in LABEL_STYLE}
    assert counts == expected_counts and sum(counts.values()) > 0

    # The volumes shown are the JSON's, and the JSON's are the loaded mask's.
    volumes = result["volumes_ml"]
    assert isinstance(volumes, dict)
    for region in ("wt", "tc", "et"):
        cell = browser.find_element(By.CSS_SELECTOR, f"#volumes td[data-region={region}]")
        assert cell.text == f"{volumes[region]:.3f}"
    from_counts = {
        "wt": sum(counts.values()) * served.voxel_ml,
        "tc": (counts[1] + counts[4]) * served.voxel_ml,
        "et": counts[4] * served.voxel_ml,
    }
    for region, value in from_counts.items():
        assert volumes[region] == pytest.approx(value, rel=1e-3, abs=1e-3)
    series = result["series"]
    assert isinstance(series, dict)
    shown = {
        row.get_attribute("data-modality") for row in browser.find_elements(By.CSS_SELECTOR, "#series tr")
    }
    assert shown == set(series)
    model = result["model"]
    assert isinstance(model, dict)
    assert f"{model['name']} {model['version']}" in browser.find_element(By.ID, "model").text
    assert "not for clinical use" in browser.find_element(By.TAG_NAME, "body").text.lower()

    # Every label on the three planes through the tumour appears on screen in its colour.
    _set_opacity(browser, 1.0)
    rgb = _canvas_rgb(browser, "opacity-1")
    on_planes = _labels_on_planes(served.mask, state["centre"])
    assert on_planes, "the planes through the tumour's centre of mass show no label"
    seen = {label: _colour_pixels(rgb, label) for label in LABEL_STYLE}
    for label in on_planes:
        assert seen[label] >= MIN_PIXELS, f"label {label} is on the planes but not on screen: {seen}"

    # A label's toggle hides it.
    shown_label = max(on_planes, key=lambda label: seen[label])
    browser.find_element(By.CSS_SELECTOR, f"#labels input[data-label='{shown_label}']").click()
    _redrawn(browser)
    hidden = _colour_pixels(_canvas_rgb(browser, f"without-{shown_label}"), shown_label)
    assert hidden <= seen[shown_label] * 0.05, (shown_label, hidden, seen[shown_label])
    browser.find_element(By.CSS_SELECTOR, f"#labels input[data-label='{shown_label}']").click()
    _set_opacity(browser, 0.6)
    _canvas_rgb(browser, "default")  # the artefact as a user first sees it
    assert not [m for m in _console(browser) if "Content Security Policy" in m]


def test_without_the_key_the_page_asks_for_it_and_no_image_data_is_served(
    served: Served, browser: WebDriver
) -> None:
    result = served.result
    _fresh_tab(browser, served.url + str(result["viewer_url"]))
    form = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "key-form"))
    WebDriverWait(browser, 30).until(lambda d: form.is_displayed())
    assert browser.execute_script("return document.documentElement.dataset.viewerReady || null") is None
    requested = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [name for name in requested if ".nii" in name or name.endswith(".png")], requested
    for path in (
        f"/results/{result['result_id']}",
        str(result["mask_url"]),
        str(result["reference_url"]),
        str(result["preview_url"]),
    ):
        assert httpx.get(served.url + path, timeout=30).status_code == 401, path
    # A wrong key is refused with a message and the prompt again; the right one opens the viewer.
    _enter_key(browser, "not-the-key")
    WebDriverWait(browser, 30).until(
        lambda d: "refused" in d.find_element(By.ID, "key-message").text and form.is_displayed()
    )
    _enter_key(browser, API_KEY)
    _wait_ready(browser)


def test_results_page_lists_the_result_with_its_thumbnail_and_viewer_link(
    served: Served, browser: WebDriver
) -> None:
    result = served.result
    _fresh_tab(browser, served.url + "/")
    _enter_key(browser, API_KEY)
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.documentElement.dataset.pageReady === 'true'")
    )
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-result-id='{result['result_id']}']")
    link = row.find_element(By.TAG_NAME, "a")
    assert link.get_attribute("href") == served.url + str(result["viewer_url"])
    image = row.find_element(By.TAG_NAME, "img")
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 0, "no thumbnail"
    browser.save_screenshot(str(ARTIFACTS / "results-page.png"))
    link.click()  # the key is kept for the tab: no prompt on the viewer
    _wait_ready(browser)
