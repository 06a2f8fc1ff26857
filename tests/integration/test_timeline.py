"""The timeline with known truth, served by ``tumorseg serve`` with an API key against a real Orthanc: one
patient's three follow-up phantom studies (``tumorseg_devkit.synth.followup``: the same head, the tumour x1.0 at
baseline, x1.8 three months later, x0.2 three months after that; positioned differently each time, new
UIDs) segmented by the shipped model through the history route.

The API: the timeline's volumes are the masks' volumes, its changes are computed from them, the threshold
fields are right for each study (+80 % from the nadir: progression; -80 % from the baseline: response), a
second history request queues nothing, each study has its SR, an unknown patient is a 404, and
`tumorseg timeline` prints the same. The page, in headless Chromium with every other host unresolvable:
the key is asked for, the chart has one point per study and region, each linking to that study's viewer,
the table one row per study, the research-only sentence is shown, no request leaves the origin; the
viewer of a follow-up shows the change against the prior study. The page's screenshot is kept under
``out/test-artifacts/`` (or ``$TUMORSEG_TEST_ARTIFACTS``): the README's docs/timeline.png is one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import OFFLINE, WEBGL, chromium, console, requests_sent
from tests.dicom_factory import unique_patient_id
from tests.orthanc import OrthancEndpoint, cli_with_env, service_env, upload_folder
from tests.service import running_service
from tumorseg.cli import app as cli_app
from tumorseg.config import DEFAULT_MODEL_PATH
from tumorseg.imaging.postprocess import voxel_volume_mm3
from tumorseg.labels import volumes_ml
from tumorseg_devkit.synth.followup import TRUTH_JSON, write_followups

pytestmark = pytest.mark.integration

FACTORS = (1.0, 1.8, 0.2)
SEED = 424243  # not a training seed
API_KEY = "timeline-test-key-0123456789"
KEY = {"X-API-Key": API_KEY}
ARTIFACTS = Path(
    os.environ.get("TUMORSEG_TEST_ARTIFACTS", Path(__file__).parents[2] / "out" / "test-artifacts")
)


@dataclass(frozen=True)
class Served:
    url: str
    env: dict[str, str]
    patient_id: str
    truths: list[dict[str, Any]]
    history: list[list[dict[str, Any]]]  # the answers of three history requests: before, again, after


def _wait_done(api: httpx.Client, job_ids: list[str], timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [api.get(f"/jobs/{j}").json() for j in job_ids]
        if all(j["state"] not in ("queued", "running") for j in jobs):
            assert [j["state"] for j in jobs] == ["done"] * len(job_ids), jobs
            return
        time.sleep(1.0)
    pytest.fail("the history's jobs did not finish")


@pytest.fixture(scope="module")
def served(orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The three visits uploaded under one new PatientID, the service serving them, and the history
    segmented through POST /patients/{id}/timeline/segment (asked twice before the jobs end, once after)."""
    work = tmp_path_factory.mktemp("timeline")
    patient_id = unique_patient_id("FOLLOW")
    folders = write_followups(work / "visits", SEED, FACTORS, patient_id=patient_id)
    upload_folder(orthanc, work / "visits" / "dicom")
    env = service_env(orthanc.url, orthanc.auth, DEFAULT_MODEL_PATH, work / "results", api_key=API_KEY)
    with (
        running_service(env, work / "service.log", work, timeout=180.0) as url,
        httpx.Client(base_url=url, headers=KEY, timeout=600.0) as api,
    ):
        before = api.get(f"/patients/{patient_id}/timeline")
        assert before.status_code == 200, before.text
        assert [e["status"] for e in before.json()["studies"]] == ["not_segmented"] * 3
        history = []
        for _ in range(2):
            answer = api.post(f"/patients/{patient_id}/timeline/segment")
            assert answer.status_code == 202, answer.text
            history.append(answer.json()["studies"])
        _wait_done(api, [a["job_id"] for a in history[0]])
        history.append(api.post(f"/patients/{patient_id}/timeline/segment").json()["studies"])
        truths = [json.loads((f / TRUTH_JSON).read_text()) for f in folders]
        yield Served(url, env, patient_id, truths, history)


def test_history_segmented_and_compared(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued, again, after = served.history
    assert [a["action"] for a in queued] == ["queued"] * 3
    assert [a["action"] for a in again] == ["has_job"] * 3  # the auto-trigger's keys: no duplicate
    assert [a["action"] for a in after] == ["has_result"] * 3
    with httpx.Client(base_url=served.url, headers=KEY, timeout=60.0) as api:
        assert api.get(f"/patients/{unique_patient_id('NOBODY')}/timeline").status_code == 404
        timeline = api.get(f"/patients/{served.patient_id}/timeline").json()
        entries = timeline["studies"]
        assert [e["study_date"] for e in entries] == [t["study_date"] for t in served.truths]
        assert timeline["baseline_study_instance_uid"] == entries[0]["study_instance_uid"]
        masks = []
        for entry in entries:
            assert entry["status"] == "segmented" and entry["current_model"], entry
            result = api.get(f"/results/{entry['result_id']}").json()
            assert result["dicom_sr"] is not None  # the history's jobs store SEG and SR
            path = tmp_path / f"{entry['result_id']}.nii.gz"
            path.write_bytes(api.get(result["mask_url"]).content)
            mask = sitk.ReadImage(str(path))
            measured = volumes_ml(sitk.GetArrayFromImage(mask).astype(np.uint8), voxel_volume_mm3(mask))
            assert entry["volumes_ml"] == pytest.approx(measured, abs=0.01)  # the masks' volumes
            masks.append(measured)

    # The changes are those of the masks' volumes: baseline the first, nadir the smallest ET before.
    base, grown, shrunk = entries
    assert base["change_from_baseline"] is None and base["baseline"]
    for entry, nadir in ((grown, 0), (shrunk, 0 if masks[0]["et"] <= masks[1]["et"] else 1)):
        assert entry["nadir_study_instance_uid"] == entries[nadir]["study_instance_uid"]
        n = entries.index(entry)
        for changes, reference in (
            (entry["change_from_nadir"], masks[nadir]),
            (entry["change_from_baseline"], masks[0]),
        ):
            for region, c in changes.items():
                assert c["absolute_ml"] == pytest.approx(masks[n][region] - reference[region], abs=0.01)
                expected = c["absolute_ml"] / reference[region] if reference[region] >= 1.0 else None
                assert c["relative"] == (pytest.approx(expected, abs=1e-3) if expected is not None else None)
    # Known truth: ET x1.8 then x0.2 of the baseline, and the model's masks follow it.
    truth_et = [t["volumes_ml"]["et"] for t in served.truths]
    assert truth_et[1] / truth_et[0] == pytest.approx(1.8, rel=0.05)
    assert truth_et[2] / truth_et[0] == pytest.approx(0.2, rel=0.05)
    assert (grown["progression_threshold_crossed"], grown["response_threshold_crossed"]) == (True, False)
    assert (shrunk["progression_threshold_crossed"], shrunk["response_threshold_crossed"]) == (False, True)
    assert base["note"] is None and grown["note"].endswith(timeline["research_note"])
    assert "not a response assessment" in timeline["research_note"]
    for n in (1, 2):
        relative = entries[n]["change_from_baseline"]["et"]["relative"]
        assert relative == pytest.approx(served.truths[n]["factor"] - 1.0, abs=0.2)

    with cli_with_env(monkeypatch, served.env) as runner:
        printed = runner.invoke(cli_app, ["timeline", served.patient_id, "--json"])
        assert printed.exit_code == 0, printed.output
        assert json.loads(printed.output)["studies"] == entries
        table = runner.invoke(cli_app, ["timeline", served.patient_id])
        assert table.exit_code == 0 and "Research use only" in table.output


def _enter_key(driver: WebDriver) -> None:
    form = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "key-form"))
    WebDriverWait(driver, 30).until(lambda d: form.is_displayed())
    driver.find_element(By.ID, "key-input").send_keys(API_KEY)
    form.submit()


def test_timeline_page_in_a_browser(served: Served) -> None:
    with httpx.Client(base_url=served.url, headers=KEY, timeout=60.0) as api:
        entries = api.get(f"/patients/{served.patient_id}/timeline").json()["studies"]
    page = f"{served.url}/patients/{served.patient_id}/timeline/view"
    assert httpx.get(page).status_code == 200  # the shell is public; its data is not
    assert httpx.get(f"{served.url}/patients/{served.patient_id}/timeline").status_code == 401
    with chromium(OFFLINE, *WEBGL, network_log=True) as driver:
        driver.get(page)
        _enter_key(driver)
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script("return document.documentElement.dataset.pageReady === 'true'")
        )
        for region in ("et", "tc", "wt"):
            links = driver.find_elements(By.CSS_SELECTOR, f"#chart a[data-region={region}]")
            assert len(links) == 3 and all(a.find_elements(By.TAG_NAME, "circle") for a in links)
            assert [a.get_dom_attribute("href") for a in links] == [e["viewer_url"] for e in entries]
        rows = driver.find_elements(By.CSS_SELECTOR, "#studies tbody tr")
        assert [r.get_attribute("data-study") for r in rows] == [e["study_instance_uid"] for e in entries]
        assert "ET ≥ +40 % from nadir" in rows[1].text and "ET ≤ −65 % from baseline" in rows[2].text
        assert "not a response assessment" in driver.find_element(By.ID, "research-note").text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.set_window_size(1400, 1000)
        driver.save_screenshot(str(ARTIFACTS / "timeline-page.png"))

        # The follow-up's viewer shows the change against the prior study.
        driver.get(served.url + entries[1]["viewer_url"])
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script("return document.documentElement.dataset.priorReady || null")
        )
        assert driver.execute_script("return document.documentElement.dataset.priorReady") == "true"
        cell = driver.find_element(By.CSS_SELECTOR, "#prior td[data-region=et]")
        delta = entries[1]["volumes_ml"]["et"] - entries[0]["volumes_ml"]["et"]
        assert cell.text.startswith(f"+{delta:.2f} mL"), cell.text
        link = driver.find_element(By.ID, "timeline-link").get_attribute("href")
        assert link == page

        sent = requests_sent(driver)
        assert sent and all(u.startswith(served.url) or u.startswith(("blob:", "data:")) for u in sent), sent
        assert not [m for m in console(driver) if "Content Security Policy" in m]
