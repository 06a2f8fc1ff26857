"""Headless Chromium for the browser tests: Debian's ``chromium`` and ``chromium-driver``, driven by
Selenium (no browser download), and what a test reads back from it (console, network requests)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Every host name but 127.0.0.1 fails to resolve: the browser cannot reach another origin, as on a
# hospital network without internet.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
# WebGL2 without a GPU: ANGLE's software rasteriser (SwiftShader), which NiiVue needs.
WEBGL = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")


@contextmanager
def chromium(*arguments: str, network_log: bool = False) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with ``arguments`` added; its console log kept (:func:`console`) and, with
    ``network_log``, the requests it sends (:func:`requests_sent`)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Chromium and its driver are missing: `make setup` installs chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        *arguments,
    ):
        options.add_argument(argument)
    logging = {"browser": "ALL"}
    if network_log:
        logging["performance"] = "ALL"
    options.set_capability("goog:loggingPrefs", logging)
    driver = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console(driver: webdriver.Chrome) -> list[str]:
    """The console messages since the last call (the driver hands each out once)."""
    return [entry["message"] for entry in driver.get_log("browser")]


def requests_sent(driver: webdriver.Chrome) -> list[str]:
    """The URLs of the requests the pages sent since the last call (the DevTools ``Network`` events of a
    driver started with ``network_log``), in order."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
