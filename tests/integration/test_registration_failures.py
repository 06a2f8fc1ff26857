"""Issue 45, end to end through Orthanc and the API: a series the registration cannot vouch for (turned by
40 degrees, a field of view over less than half of the brain, blank) is never used as acquired. An optional
one is segmented without (the package's fallback network, as for a study that lacks it), listed in
``missing_sequences`` and named in ``warnings``; a required one is a 422 that names it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from tests.dicom_factory import unique_patient_id
from tests.orthanc import OrthancEndpoint, service_settings, upload_folder
from tests.studies import CLINICAL, Edit, UploadedStudy, clone_study
from tumorseg.api.main import create_app
from tumorseg.config import DEFAULT_MODEL_PATH
from tumorseg.model.package import read_manifest
from tumorseg.pacs.upload import upload_directory
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.phantom_head import generate_head_case, write_head_case
from tumorseg_devkit.synth.to_dicom import convert_case

pytestmark = pytest.mark.integration

HEAD_SEED = 44  # no stage was tuned on it


@pytest.fixture(scope="module")
def head_study(orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory) -> UploadedStudy:
    case_dir = write_head_case(generate_head_case(HEAD_SEED), tmp_path_factory.mktemp("head"), "HEAD_00044")
    patient_id = unique_patient_id("HEAD")
    converted = convert_case(case_dir, patient_id, tmp_path_factory.mktemp("head-dicom"), CLINICAL)
    with orthanc.client() as pacs:
        assert not upload_directory(pacs, converted.out, stable_timeout=60.0).failed
    return UploadedStudy(patient_id, case_dir, converted)


@pytest.fixture(scope="module")
def client(orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = service_settings(
        orthanc.url, orthanc.auth, model_path=DEFAULT_MODEL_PATH, results_dir=tmp_path_factory.mktemp("res")
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _positions(folder: Path) -> NDArray[np.float64]:
    return np.asarray(
        [
            pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient
            for p in sorted(folder.glob("*.dcm"))
        ],
        dtype=np.float64,
    )


def _turn(modality: str, degrees: float, centre: NDArray[np.float64]) -> Edit:
    """An edit for ``clone_study``: ``modality``'s patient turned by ``degrees`` about the left-right axis
    through ``centre`` (its orientation and positions rotated: the same pixels, exactly moved)."""
    angle = np.radians(degrees)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])

    def edit(m: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        if m == modality:
            orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64).reshape(2, 3)
            ds.ImageOrientationPatient = [round(float(v), 8) for v in (orientation @ rotation.T).ravel()]
            position = rotation @ (np.asarray(ds.ImagePositionPatient, dtype=np.float64) - centre) + centre
            ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        return ds

    return edit


def _blank(modality: str) -> Edit:
    def edit(m: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        if m == modality:
            ds.PixelData = bytes(len(ds.PixelData))
        return ds

    return edit


def _first_slices(modality: str, keep: int) -> Edit:
    """The series cut to its first ``keep`` slices (by file order, which is slice order here)."""

    def edit(m: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset | None:
        return None if m == modality and n >= keep else ds

    return edit


def _edit(kind: str, modality: str, head_study: UploadedStudy) -> Edit:
    folder = head_study.folder(modality)
    if kind == "turned 40 degrees":
        return _turn(modality, 40.0, _positions(folder).mean(axis=0))
    if kind == "less than half of the brain":
        # The coronal T2's first 30 % of slices: one end of the head, under a third of the brain's length
        return _first_slices(modality, int(0.3 * len(list(folder.glob("*.dcm")))))
    return _blank(modality)


@pytest.mark.parametrize("kind", ["turned 40 degrees", "less than half of the brain", "blank"])
def test_an_optional_series_that_fails_registration_is_treated_as_missing(
    kind: str, head_study: UploadedStudy, client: TestClient, orthanc: OrthancEndpoint, tmp_path: Path
) -> None:
    manifest = read_manifest(DEFAULT_MODEL_PATH)
    assert "t2" in manifest.inputs.optional
    patient_id = clone_study(head_study.converted, tmp_path / "study", edit=_edit(kind, "t2", head_study))
    upload_folder(orthanc, tmp_path / "study")
    response = client.post(f"/segment/{patient_id}", params={"reference": "flair"})
    assert response.status_code == 200, response.text
    result = response.json()
    entry = result["registration"]["series"]["t2"]
    assert entry["failed"] is True and entry["applied"] is False
    assert entry["matrix"] == np.eye(4).tolist()
    assert result["missing_sequences"] == ["t2"]
    assert result["model"]["network"] == manifest.network_for([m for m in SEQUENCES if m != "t2"])
    assert any("registration of t2" in w and "not used" in w for w in result["warnings"]), result["warnings"]
    # The other series are registered as ever
    assert not any(result["registration"]["series"][m]["failed"] for m in ("t1", "t1ce"))
    assert result["volumes_ml"]["wt"] > 0


def test_a_required_series_that_fails_registration_is_refused_naming_it(
    head_study: UploadedStudy, client: TestClient, orthanc: OrthancEndpoint, tmp_path: Path
) -> None:
    assert "t1ce" in read_manifest(DEFAULT_MODEL_PATH).inputs.required
    patient_id = clone_study(
        head_study.converted, tmp_path / "study", edit=_edit("turned 40 degrees", "t1ce", head_study)
    )
    upload_folder(orthanc, tmp_path / "study")
    response = client.post(f"/segment/{patient_id}", params={"reference": "flair"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "modality_missing"
    assert "registration of t1ce" in body["detail"] and "no usable series for t1ce" in body["detail"]
