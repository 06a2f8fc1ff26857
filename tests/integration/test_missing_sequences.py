"""Missing sequences (issue 19), through POST /segment against a real Orthanc: a model package that does
without some sequences (``inputs``) segments a study that lacks them with its fallback network, says so, and
still refuses a study without a required one; a complete study gets the main network's mask, exactly the
one of the package without the fallback; a package without ``inputs`` needs all four, as before."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.jobs import FAST
from tests.models import SHIPPED_INPUTS, tiny_package, with_fallback
from tests.orthanc import OrthancEndpoint, segment_settings, upload_folder
from tests.studies import clone_study
from tumorseg.api.main import create_app
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def optional_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights (plumbing, not accuracy) with the shipped model's input policy and a fallback
    network; the main network's weights are ``random_model``'s."""
    folder = tmp_path_factory.mktemp("model") / "optional"
    return with_fallback(tiny_package(folder, roi_size=(64, 64, 64)), SHIPPED_INPUTS)


def _uploaded(orthanc: OrthancEndpoint, plain_study: ConvertedStudy, folder: Path, *modalities: str) -> str:
    patient_id = clone_study(plain_study, folder, modalities=modalities)
    upload_folder(orthanc, folder)
    return patient_id


def test_a_study_without_an_optional_sequence_is_segmented_and_says_what_it_lacked(
    orthanc: OrthancEndpoint,
    plain_study: ConvertedStudy,
    optional_model: Path,
    random_model: Path,
    tmp_path: Path,
) -> None:
    no_t2 = _uploaded(orthanc, plain_study, tmp_path / "no-t2", "flair", "t1", "t1ce")
    no_t1 = _uploaded(orthanc, plain_study, tmp_path / "no-t1", "flair", "t1ce", "t2")
    no_t1ce = _uploaded(orthanc, plain_study, tmp_path / "no-t1ce", "flair", "t1", "t2")
    full = _uploaded(orthanc, plain_study, tmp_path / "full", "flair", "t1", "t1ce", "t2")
    settings = segment_settings(orthanc.url, orthanc.auth, optional_model, tmp_path / "results", **FAST)
    with TestClient(create_app(settings)) as client:
        for patient_id, lacking in ((no_t2, "t2"), (no_t1, "t1")):
            # without T1 the co-registration's hub is T1ce: run it there
            params = {"store_seg": True, "registration": lacking == "t1"}
            answer = client.post(f"/segment/{patient_id}", params=params)
            assert answer.status_code == 200, answer.text
            result = answer.json()
            assert result["missing_sequences"] == [lacking] and result["model"]["network"] == "fallback"
            assert set(result["series"]) == {"flair", "t1", "t1ce", "t2"} - {lacking}
            assert any(lacking in w and "without" in w for w in result["warnings"]), result["warnings"]
            assert any(lacking in note for note in result["mapping_notes"])
            assert result["mask"]["shape"][2] == plain_study.get("flair").n_files  # the FLAIR lattice
            assert client.get(result["preview_url"]).status_code == 200
            with orthanc.client() as pacs:
                seg = pacs.instance_tags(result["dicom_seg"]["orthanc_id"])
            assert f"without {lacking}" in str(seg["ContentDescription"])

        refused = client.post(f"/segment/{no_t1ce}")
        assert refused.status_code == 422 and refused.json()["code"] == "modality_missing"
        assert "t1ce" in refused.json()["detail"]

        wrong_reference = client.post(f"/segment/{no_t2}", params={"reference": "t2"})
        assert wrong_reference.status_code == 422 and wrong_reference.json()["code"] == "invalid_input"
        assert "reference t2" in wrong_reference.json()["detail"]

        whole = client.post(f"/segment/{full}").json()
        assert whole["missing_sequences"] == [] and len(whole["series"]) == 4
        assert whole["model"]["network"] == "main"
        assert not any("without" in w for w in whole["warnings"])
        whole_mask = client.get(whole["mask_url"]).content

    # a package without ``inputs`` needs all four sequences, as before; its mask of the complete study is
    # the one the package with the fallback gave
    settings = segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path / "results-all", **FAST)
    with TestClient(create_app(settings)) as client:
        alone = client.post(f"/segment/{full}").json()
        assert alone["model"]["network"] == "main" and alone["volumes_ml"] == whole["volumes_ml"]
        assert whole["volumes_ml"]["wt"] > 0  # random weights, but a mask to compare
        assert _voxels(client.get(alone["mask_url"]).content) == _voxels(whole_mask)
        refused = client.post(f"/segment/{no_t2}")
        assert refused.status_code == 422 and refused.json()["code"] == "modality_missing"
        assert "t2" in refused.json()["detail"]


def _voxels(nifti: bytes) -> bytes:
    """A NIfTI download without its gzip header (which holds a time stamp)."""
    return gzip.decompress(nifti)
