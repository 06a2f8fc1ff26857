"""POST /segment end to end against a real Orthanc: the mask's lattice, volumes, persistence, errors.

The model here has random weights (plumbing and geometry only); accuracy is tested with the shipped model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.geometry import dcm2niix, index_map
from tests.orthanc import OrthancEndpoint, segment_settings, upload_folder
from tests.results import mask_array
from tests.studies import UploadedStudy, clone_study, drop_instance
from tumorseg.api.main import create_app
from tumorseg_devkit.local import free_port
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture
def api(orthanc: OrthancEndpoint, random_model: Path, results_dir: Path) -> Iterator[TestClient]:
    with TestClient(
        create_app(segment_settings(orthanc.url, orthanc.auth, random_model, results_dir))
    ) as client:
        yield client


@pytest.fixture(scope="module")
def segmented(
    orthanc: OrthancEndpoint, random_model: Path, results_dir: Path, clinical_study: UploadedStudy
) -> dict[str, dict[str, object]]:
    """One POST per reference, shared by the tests below (inference is the slow part)."""
    answers = {}
    with TestClient(
        create_app(segment_settings(orthanc.url, orthanc.auth, random_model, results_dir))
    ) as client:
        for reference in ("flair", "t1ce"):
            response = client.post(f"/segment/{clinical_study.patient_id}", params={"reference": reference})
            assert response.status_code == 200, response.text
            answers[reference] = response.json()
    return answers


@pytest.mark.parametrize("reference", ["flair", "t1ce"])
def test_mask_lies_on_the_reference_lattice_as_dcm2niix_converts_it(
    reference: str,
    segmented: dict[str, dict[str, object]],
    api: TestClient,
    clinical_study: UploadedStudy,
    tmp_path: Path,
) -> None:
    result = segmented[reference]
    assert result["reference"] == {
        "modality": reference,
        "series_instance_uid": clinical_study.converted.get(reference).series_instance_uid,
    }
    assert result["study_instance_uid"] == clinical_study.converted.study_instance_uid
    download = api.get(str(result["mask_url"]))
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/gzip"
    assert "mask.nii.gz" in download.headers["content-disposition"]
    (tmp_path / "mask.nii.gz").write_bytes(download.content)
    mask = nib.load(tmp_path / "mask.nii.gz")
    assert isinstance(mask, nib.Nifti1Image)
    assert mask.get_data_dtype() == np.uint8
    assert int(mask.header["qform_code"]) > 0 and int(mask.header["sform_code"]) > 0
    labels = np.asarray(mask.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    # The phantom has a tumour and the random model marks plenty of voxels: an empty mask is a failure
    # (it would also make the lattice check below say nothing about where the labels land).
    assert np.count_nonzero(labels) > 0, "empty mask"
    volumes = result["volumes_ml"]
    assert isinstance(volumes, dict) and volumes["wt"] > 0
    referee = dcm2niix(clinical_study.folder(reference), tmp_path / "referee")
    index_map(
        referee.affine, referee.shape, mask.affine, mask.shape
    )  # a signed permutation, integral offsets
    assert sorted(mask.shape) == sorted(referee.shape[:3])


def test_volumes_agree_with_the_mask(
    segmented: dict[str, dict[str, object]], api: TestClient, tmp_path: Path
) -> None:
    result = segmented["flair"]
    (tmp_path / "mask.nii.gz").write_bytes(api.get(str(result["mask_url"])).content)
    mask = nib.load(tmp_path / "mask.nii.gz")
    labels = np.asarray(mask.dataobj)
    voxel_ml = float(np.prod(mask.header.get_zooms()[:3])) / 1000.0
    expected = {
        "et": np.count_nonzero(labels == 4) * voxel_ml,
        "tc": np.count_nonzero((labels == 1) | (labels == 4)) * voxel_ml,
        "wt": np.count_nonzero(labels > 0) * voxel_ml,
    }
    volumes = result["volumes_ml"]
    assert isinstance(volumes, dict)
    assert expected["wt"] > 0, "empty mask: the comparison below would be 0 == 0"
    for region, value in expected.items():
        assert volumes[region] == pytest.approx(value, rel=0.01, abs=1e-3)
    assert set(result["timings_s"]) == {
        "fetch",
        "load",
        "registration",
        "brain_extraction",
        "bias_correction",
        "preprocess",
        "inference",
        "postprocess",
        "export",
        "total",
    }  # type: ignore[arg-type]


def test_results_survive_a_restart(
    segmented: dict[str, dict[str, object]], orthanc: OrthancEndpoint, random_model: Path, results_dir: Path
) -> None:
    result = segmented["t1ce"]
    with TestClient(
        create_app(segment_settings(orthanc.url, orthanc.auth, random_model, results_dir))
    ) as fresh:
        again = fresh.get(f"/results/{result['result_id']}")
        assert again.status_code == 200
        assert again.json() == result
        assert fresh.get(str(result["mask_url"])).status_code == 200


def test_unknown_and_malformed_result_ids_are_404(api: TestClient) -> None:
    for rid in ("0" * 32, "../../etc/passwd", "not-an-id"):
        response = api.get(f"/results/{rid}")
        assert response.status_code == 404 and response.json()["code"] in {"result_not_found", "not_found"}
    assert api.get(f"/results/{'0' * 32}/mask.nii.gz").status_code == 404


def test_unknown_patient_is_404(api: TestClient) -> None:
    response = api.post("/segment/NO-SUCH-PATIENT-4711")
    assert response.status_code == 404
    assert response.json()["code"] == "patient_not_found"


def test_unusable_study_is_422_naming_the_modality(
    api: TestClient, plain_study: ConvertedStudy, orthanc: OrthancEndpoint, tmp_path: Path
) -> None:
    patient_id = clone_study(plain_study, tmp_path, modalities=("flair", "t1", "t2"))
    upload_folder(orthanc, tmp_path)
    response = api.post(f"/segment/{patient_id}")
    assert response.status_code == 422
    assert response.json()["code"] == "modality_missing" and "t1ce" in response.json()["detail"]


def test_broken_series_is_422_naming_the_series(
    api: TestClient, plain_study: ConvertedStudy, orthanc: OrthancEndpoint, tmp_path: Path
) -> None:
    middle = plain_study.get("flair").n_files // 2
    patient_id = clone_study(plain_study, tmp_path, edit=drop_instance("flair", middle))
    upload_folder(orthanc, tmp_path)
    response = api.post(f"/segment/{patient_id}")
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "broken_series" and "flair" in body["detail"] and "missing slice" in body["detail"]


def test_rejected_credentials_are_502(orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path) -> None:
    app = create_app(segment_settings(orthanc.url, (orthanc.username, "wrong"), random_model, tmp_path))
    with TestClient(app) as client:
        response = client.post("/segment/ANYONE")
    assert response.status_code == 502 and response.json()["code"] == "pacs_rejected"


def test_unreachable_orthanc_is_503(random_model: Path, tmp_path: Path) -> None:
    app = create_app(segment_settings(f"http://127.0.0.1:{free_port()}", None, random_model, tmp_path))
    with TestClient(app) as client:
        response = client.post("/segment/ANYONE")
    assert response.status_code == 503 and response.json()["code"] == "pacs_unavailable"


def test_slow_orthanc_is_504(silent_server: str, random_model: Path, tmp_path: Path) -> None:
    app = create_app(segment_settings(silent_server, None, random_model, tmp_path, orthanc_timeout=0.5))
    with TestClient(app) as client:
        response = client.post("/segment/ANYONE")
    assert response.status_code == 504 and response.json()["code"] == "pacs_timeout"


def test_missing_model_is_503_and_health_says_degraded(orthanc: OrthancEndpoint, tmp_path: Path) -> None:
    app = create_app(segment_settings(orthanc.url, orthanc.auth, tmp_path / "no-model", tmp_path / "results"))
    with TestClient(app) as client:
        health = client.get("/health").json()
        response = client.post("/segment/ANYONE")
    assert health["status"] == "degraded" and health["model"]["loaded"] is False
    assert response.status_code == 503 and "TUMORSEG_MODEL_PATH" in response.json()["detail"]


def test_series_cache_gives_the_same_mask_as_a_cold_run(
    orthanc: OrthancEndpoint, random_model: Path, clinical_study: UploadedStudy, tmp_path: Path
) -> None:
    """Optimisations must not change results: warm (cached series) == cold == cache disabled."""
    arrays = []
    for cache_mb, requests in ((512, 2), (0, 1)):
        app = create_app(
            segment_settings(
                orthanc.url, orthanc.auth, random_model, tmp_path / f"r{cache_mb}", series_cache_mb=cache_mb
            )
        )
        with TestClient(app) as client:
            for n in range(requests):
                response = client.post(f"/segment/{clinical_study.patient_id}", params={"reference": "t2"})
                assert response.status_code == 200
                arrays.append(mask_array(client, response.json(), tmp_path / f"{cache_mb}-{n}.nii.gz"))
            if cache_mb:
                assert len(app.state.tumorseg.segmenter().cache) == 4
    assert np.count_nonzero(arrays[0]) > 0
    assert all(np.array_equal(arrays[0], other) for other in arrays[1:])
