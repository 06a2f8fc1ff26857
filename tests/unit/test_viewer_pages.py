"""The viewer's server side without a browser: the HTML shells are public and carry no data, every data
route still needs the key, the results listing pages newest first, the reference volume keeps the
series' values, and the vendored NiiVue is the file its notes describe. The browser itself is driven
in ``tests/integration/test_viewer.py``."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from tests.orthanc import service_settings
from tests.results import result
from tumorseg.api.main import create_app
from tumorseg.api.routes.pages import STATIC_DIR
from tumorseg.export.nifti import write_reference
from tumorseg.results import ResultStore, new_result_id

KEY = "unit-test-key"


def _commit(store: ResultStore, mtime: float) -> str:
    rid = new_result_id()
    staging = store.staging(rid)
    (staging / "reference.nii.gz").write_bytes(b"ref")
    store.commit(staging, result(rid))
    os.utime(store.root / rid, (mtime, mtime))
    return rid


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, list[str]]]:
    store = ResultStore(tmp_path / "results")
    now = time.time()
    ids = [_commit(store, now - 100 * n) for n in range(5)]  # newest first
    settings = service_settings(
        "http://127.0.0.1:9",
        None,
        model_path=tmp_path / "no-model",
        results_dir=tmp_path / "results",
        api_key=KEY,
    )
    with TestClient(create_app(settings)) as api:
        yield api, ids


def test_the_pages_are_public_shells_with_a_strict_policy(client: tuple[TestClient, list[str]]) -> None:
    api, ids = client
    for path in ("/", f"/results/{ids[0]}/viewer"):
        page = api.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert ids[0] not in page.text and "P1" not in page.text  # the same bytes for every caller
        for src in re.findall(r'(?:src|href)="([^"]+)"', page.text):
            assert src.startswith("/"), f"{path} loads {src} from elsewhere"
            if src.startswith("/static/"):
                assert api.get(src).status_code == 200, src
    assert api.get("/results/not-an-id/viewer").status_code == 404


def test_data_needs_the_key(client: tuple[TestClient, list[str]]) -> None:
    api, ids = client
    for path in ("/results", f"/results/{ids[0]}", f"/results/{ids[0]}/reference.nii.gz"):
        assert api.get(path).status_code == 401, path
        assert api.get(path, headers={"X-API-Key": KEY}).status_code == 200, path


def test_results_are_listed_newest_first_in_pages(client: tuple[TestClient, list[str]]) -> None:
    api, ids = client
    key = {"X-API-Key": KEY}
    first = api.get("/results", params={"limit": 2}, headers=key).json()
    assert first["total"] == 5 and first["limit"] == 2 and first["offset"] == 0
    assert [r["result_id"] for r in first["results"]] == ids[:2]
    assert first["results"][0]["result_url"] == f"/results/{ids[0]}"
    rest = api.get("/results", params={"limit": 2, "offset": 4}, headers=key).json()
    assert [r["result_id"] for r in rest["results"]] == ids[4:]
    assert api.get("/results", params={"limit": 0}, headers=key).status_code == 422


def test_a_result_deleted_during_the_listing_is_skipped(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    ids = [_commit(store, time.time() - n) for n in range(3)]
    (store.root / ids[1] / "result.json").unlink()  # as retention would, between the scan and the read
    total, page = store.recent(10)
    assert total == 3 and [r.result_id for r in page] == [ids[0], ids[2]]


@pytest.mark.parametrize(
    ("values", "stored"),
    [
        (np.array([-1024, 0, 3000], dtype=np.float32), sitk.sitkInt16),
        (np.array([0, 40000, 65535], dtype=np.float32), sitk.sitkUInt16),
        (np.array([0.5, 1.25, 900.0], dtype=np.float32), sitk.sitkFloat32),
    ],
)
def test_the_reference_volume_keeps_the_series_values_and_lattice(
    tmp_path: Path, values: np.ndarray, stored: int
) -> None:
    array = np.resize(values, (4, 5, 6)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 0.9, 4.0))
    image.SetOrigin((-10.0, 20.0, 5.0))
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))  # oblique: 15° about x
    image.SetDirection((1, 0, 0, 0, c, -s, 0, s, c))
    back = sitk.ReadImage(str(write_reference(image, tmp_path / "reference.nii.gz")))
    assert back.GetPixelID() == stored
    assert np.array_equal(sitk.GetArrayFromImage(back).astype(np.float32), array)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-4)


def test_the_vendored_niivue_is_the_file_its_notes_describe() -> None:
    notes = (STATIC_DIR / "vendor" / "NIIVUE.md").read_text()
    digest = hashlib.sha256((STATIC_DIR / "vendor" / "niivue.umd.js").read_bytes()).hexdigest()
    assert f"sha256 of the file: `{digest}`" in notes
    assert "BSD 2-Clause License" in notes
