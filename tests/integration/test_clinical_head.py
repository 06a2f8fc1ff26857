"""A clinical head end to end through Orthanc and the API: whole head (skull, scalp, eyes, neck), patient
motion between the series, bias fields, Rician background, acquired obliquely and anisotropically. The
mask on the reference lattice agrees with the phantom's truth in that series' own frame, and lies in the
brain; the result JSON reports the new stages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from tests.dicom_factory import unique_patient_id
from tests.geometry import dice
from tests.orthanc import OrthancEndpoint, cli_with_env, service_settings, upload_folder
from tests.studies import CLINICAL, UploadedStudy, clone_study
from tumorseg.api.main import create_app
from tumorseg.cli import app
from tumorseg.config import DEFAULT_MODEL_PATH
from tumorseg.imaging import grid as g
from tumorseg.model.package import read_manifest
from tumorseg.pacs.upload import upload_directory
from tumorseg.schema import SegmentResult
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.phantom_head import generate_head_case, write_head_case
from tumorseg_devkit.synth.to_dicom import convert_case

pytestmark = pytest.mark.integration

# Profile "full" (necrosis, enhancing rim, oedema), one 141 mL lesion at the cortex: the brain extraction must
# keep it whole. No stage was tuned on this head.
HEAD_SEED = 42


@pytest.fixture(scope="session")
def head_study(orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory) -> UploadedStudy:
    case_dir = write_head_case(generate_head_case(HEAD_SEED), tmp_path_factory.mktemp("head"), "HEAD_00042")
    patient_id = unique_patient_id("HEAD")
    converted = convert_case(case_dir, patient_id, tmp_path_factory.mktemp("head-dicom"), CLINICAL)
    with orthanc.client() as pacs:
        report = upload_directory(pacs, converted.out, stable_timeout=60.0)
    assert not report.failed
    return UploadedStudy(patient_id, case_dir, converted)


@pytest.fixture(scope="module")
def client(orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = service_settings(
        orthanc.url, orthanc.auth, model_path=DEFAULT_MODEL_PATH, results_dir=tmp_path_factory.mktemp("res")
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("reference", ["flair", "t1ce"])
def test_clinical_head_is_segmented_in_the_brain(
    reference: str, head_study: UploadedStudy, client: TestClient, tmp_path: Path
) -> None:
    response = client.post(f"/segment/{head_study.patient_id}", params={"reference": reference})
    assert response.status_code == 200, response.text
    result = response.json()
    scores, outside = _scores(client, result, head_study, reference, tmp_path)
    assert scores["wt"] >= 0.85 and scores["tc"] >= 0.75 and scores["et"] >= 0.70, scores
    assert outside < 0.01

    registration = result["registration"]
    assert registration["enabled"] is True
    assert set(registration["series"]) == {"flair", "t1", "t1ce", "t2"} - {reference}
    assert any(entry["applied"] for entry in registration["series"].values())  # the phantom moved
    for entry in registration["series"].values():
        assert entry["rotation_deg"] <= 5.5 and entry["metric"] <= entry["metric_initial"]
    hub = {m: registration["series"][m]["via"] for m in registration["series"]}
    assert hub == ({"t1ce": None, "t1": "t1ce", "t2": "t1ce"} if reference == "flair" else dict.fromkeys(hub))
    assert result["brain_extraction"]["method"] == "deepbet"
    assert 1000 < result["brain_extraction"]["volume_ml"] < 2500
    assert result["warnings"] == []
    timings = result["timings_s"]
    assert timings["registration"] > 0 and timings["brain_extraction"] > 0
    # A result stored before these stages existed still reads back through the schema.
    old = {k: v for k, v in result.items() if k not in ("registration", "brain_extraction", "warnings")}
    old["timings_s"] = {k: v for k, v in timings.items() if k not in ("registration", "brain_extraction")}
    assert SegmentResult.model_validate(old).registration.enabled is False


def _scores(
    client: TestClient, result: dict[str, Any], head: UploadedStudy, reference: str, tmp_path: Path
) -> tuple[dict[str, float], float]:
    """Dice WT/TC/ET of the result's mask against the head's truth in the reference series' frame, and the
    fraction of the mask's voxels outside the true brain."""
    (tmp_path / "mask.nii.gz").write_bytes(client.get(result["mask_url"]).content)
    mask = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    truth_dir = head.case_dir / "truth"
    truth = g.resample_labels(sitk.ReadImage(str(truth_dir / f"seg_{reference}.nii.gz")), mask)
    brain = sitk.Resample(
        sitk.ReadImage(str(truth_dir / f"brain_{reference}.nii.gz")),
        mask,
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
    )
    predicted, expected = sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(truth)
    in_brain = sitk.GetArrayFromImage(brain) > 0
    scores = {
        "wt": dice(predicted > 0, expected > 0),
        "tc": dice(np.isin(predicted, (1, 4)), np.isin(expected, (1, 4))),
        "et": dice(predicted == 4, expected == 4),
    }
    outside = np.count_nonzero((predicted > 0) & ~in_brain) / max(np.count_nonzero(predicted > 0), 1)
    return scores, float(outside)


# Issue 19 with the shipped model: the head without one sequence. Measured on this head (reference T1ce,
# all four: WT/TC/ET 0.948/0.947/0.879; 1.3.0 without T1 0.916/0.851/0.855, without T2 0.915/0.948/0.864);
# the bounds are those less about 0.1. FLAIR is required by 1.3.0 (the 422 branch; a
# package that makes it optional is has no Dice bound until measured here).
WITHOUT_MIN_DICE: dict[str, dict[str, float]] = {
    "t1": {"wt": 0.82, "tc": 0.75, "et": 0.75},
    "t2": {"wt": 0.82, "tc": 0.85, "et": 0.76},
}


@pytest.mark.parametrize("lacking", ["flair", "t1", "t2"])
def test_the_shipped_model_segments_a_head_without_one_sequence(
    lacking: str, head_study: UploadedStudy, client: TestClient, orthanc: OrthancEndpoint, tmp_path: Path
) -> None:
    inputs = read_manifest(DEFAULT_MODEL_PATH).inputs
    patient_id = clone_study(
        head_study.converted, tmp_path / "study", modalities=tuple(m for m in SEQUENCES if m != lacking)
    )
    upload_folder(orthanc, tmp_path / "study")
    response = client.post(f"/segment/{patient_id}", params={"reference": "t1ce"})
    if lacking not in inputs.optional:  # the package requires it: refused, naming it
        assert response.status_code == 422 and response.json()["code"] == "modality_missing"
        assert f"no usable series for {lacking}" in response.json()["detail"]
        return
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["missing_sequences"] == [lacking] and lacking not in result["series"]
    assert result["model"]["network"] == read_manifest(DEFAULT_MODEL_PATH).network_for(result["series"])
    assert any(f"no usable {lacking} series" in line for line in result["warnings"])
    corrects = read_manifest(DEFAULT_MODEL_PATH).preprocessing_for(result["series"]).bias_correction != "none"
    assert (result["timings_s"]["bias_correction"] > 0) == corrects, result["timings_s"]
    scores, outside = _scores(client, result, head_study, "t1ce", tmp_path)
    low = {r: round(v, 3) for r, v in scores.items() if v < WITHOUT_MIN_DICE.get(lacking, {}).get(r, 0.0)}
    assert not low, f"without {lacking}: Dice {scores}, below {WITHOUT_MIN_DICE.get(lacking)}"
    assert outside < 0.01


def test_registration_can_be_turned_off_per_request(head_study: UploadedStudy, client: TestClient) -> None:
    response = client.post(f"/segment/{head_study.patient_id}", params={"registration": "off"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["registration"] == {"enabled": False, "series": {}}
    assert result["timings_s"]["registration"] == pytest.approx(0.0, abs=0.01)
    assert (
        client.post(f"/segment/{head_study.patient_id}", params={"registration": "maybe"}).status_code == 422
    )


def test_the_setting_turns_registration_off_for_the_cli(
    head_study: UploadedStudy, orthanc: OrthancEndpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {
        **orthanc.env(),
        "TUMORSEG_RESULTS_DIR": str(tmp_path / "results"),
        "TUMORSEG_REGISTRATION": "false",
    }
    with cli_with_env(monkeypatch, env) as runner:
        run = runner.invoke(app, ["segment", head_study.patient_id, "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["registration"] == {"enabled": False, "series": {}}
    assert result["brain_extraction"]["method"] == "deepbet"
    assert f"viewer: /results/{result['result_id']}/viewer" in run.output
