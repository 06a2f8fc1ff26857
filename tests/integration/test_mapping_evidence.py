"""Contrast evidence through POST /segment and an auto-triggered job (issue 38), on clones of the clinical
phantom study (sagittal 3D T1, reversed-slice 3D T1ce with its agent, oblique FLAIR, coronal T2) in a real
Orthanc:

* all four series converted by highdicom's legacy converter, descriptions as it writes them (" (enhanced
  conversion)" appended), the post-contrast T1 stored with thicker (overlapping) slices than the
  pre-contrast one: the same four series and the same mask, voxel for voxel, as the classic study;
* the pre/post pair under one name, the agent only on the post one; the pair without any agent tag (its
  SeriesNumbers swapped, so only the acquisition time tells); an agent copied into every series after the
  registration, the pre-contrast T1 named so: each maps right, the timed pair with its note and warning;
* the pair whose agent and names contradict each other: 422 ``contrast_contradiction`` naming both series,
  and an auto-triggered job on it ends ``failed`` with that code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from tests.jobs import FAST, job_of
from tests.multiframe import legacy_converted
from tests.orthanc import OrthancEndpoint, cli_with_env, segment_settings, upload_folder
from tests.studies import UploadedStudy, clone_study
from tumorseg.api.main import create_app
from tumorseg.cli import app
from tumorseg_devkit.local import LocalOrthanc
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration

PROTOCOL = "t1_mprage_p2_iso"  # one protocol for the pre- and the post-contrast 3D T1
AGENT_TAGS = ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume", "ContrastBolusIngredient")

Edit = Callable[[str, int, pydicom.Dataset], pydicom.Dataset]


def overlapping_post(modality: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
    """The post-contrast T1 with 1.2 mm slices 1 mm apart (overlapping), the pre-contrast one 1 mm: the
    thinner-slices tie-break now favours the pre-contrast series."""
    if modality == "t1ce":
        ds.SliceThickness = "1.2"
    return ds


def same_protocol(modality: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
    if modality in ("t1", "t1ce"):
        ds.SeriesDescription = ds.ProtocolName = PROTOCOL
    return ds


def untagged_and_renumbered(modality: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
    """The same-protocol pair without any agent tag, the post-contrast one numbered before the pre."""
    ds = same_protocol(modality, n, ds)
    for keyword in AGENT_TAGS:
        if keyword in ds:
            delattr(ds, keyword)
    if modality in ("t1", "t1ce"):
        ds.SeriesNumber = {"t1": "8", "t1ce": "6"}[modality]
    return ds


def copied_forward(modality: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
    """The agent registered after the T2 and copied into every later series, the pre-contrast T1 among
    them (named pre, as sites with such scanners do)."""
    ds = same_protocol(modality, n, ds)
    if modality in ("flair", "t1", "t1ce"):
        ds.ContrastBolusAgent = "Gadobutrol"
    if modality == "t1":
        ds.SeriesDescription = f"{PROTOCOL}_pre"
    return ds


def contradictory(modality: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
    """The agent on the post-contrast T1 as acquired, but that series named pre."""
    ds = same_protocol(modality, n, ds)
    if modality == "t1ce":
        ds.SeriesDescription = f"{PROTOCOL}_pre"
    return ds


def _uids(folder: Path) -> dict[str, str]:
    """SeriesInstanceUID of each series folder (flair, t1, t1ce, t2) of a clone."""
    return {
        sub.name: str(pydicom.dcmread(next(sub.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
        for sub in sorted(folder.iterdir())
    }


def _clone(converted: ConvertedStudy, out: Path, edit: Edit) -> tuple[str, dict[str, str]]:
    patient_id = clone_study(converted, out, edit=edit)
    return patient_id, _uids(out)


def _converted_copy(classic: Path, out: Path) -> None:
    """Every series of the clone in ``classic`` as one Legacy Converted Enhanced MR instance, highdicom's
    description kept."""
    for folder in sorted(classic.iterdir()):
        files = [path.read_bytes() for path in sorted(folder.glob("*.dcm"))]
        converted = legacy_converted(files, keep_description=False)
        assert str(converted.SeriesDescription).endswith(" (enhanced conversion)")
        (out / folder.name).mkdir(parents=True)
        converted.save_as(out / folder.name / "multiframe.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def studies(
    clinical_study: UploadedStudy, orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, dict[str, str]]]:
    """name → (PatientID, folder → SeriesInstanceUID), every study uploaded."""
    work = tmp_path_factory.mktemp("evidence")
    source = clinical_study.converted
    made = {
        "classic": _clone(source, work / "classic", overlapping_post),
        "pair": _clone(source, work / "pair", same_protocol),
        "timed": _clone(source, work / "timed", untagged_and_renumbered),
        "forward": _clone(source, work / "forward", copied_forward),
        "contradictory": _clone(source, work / "contradictory", contradictory),
    }
    # The converted study: the classic clone's series (UIDs kept) as enhanced objects, under another patient.
    multi_id = clone_study(source, work / "multi-source", edit=overlapping_post)
    _converted_copy(work / "multi-source", work / "multi")
    made["converted"] = (multi_id, _uids(work / "multi-source"))
    for name in made:
        upload_folder(orthanc, work / ("multi" if name == "converted" else name))
    return made


def _mapped(result: dict[str, object]) -> dict[str, str]:
    series = result["series"]
    assert isinstance(series, dict)
    return {m: s["series_instance_uid"] for m, s in series.items()}


def test_the_converted_study_maps_and_segments_as_its_classic_original(
    studies: dict[str, tuple[str, dict[str, str]]],
    orthanc: OrthancEndpoint,
    random_model: Path,
    tmp_path: Path,
) -> None:
    app = create_app(segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path / "results"))
    results: dict[str, Any] = {}
    masks: dict[str, Any] = {}
    with TestClient(app) as client:
        for name in ("classic", "converted"):
            response = client.post(f"/segment/{studies[name][0]}")
            assert response.status_code == 200, response.text
            results[name] = response.json()
            (tmp_path / f"{name}.nii.gz").write_bytes(client.get(results[name]["mask_url"]).content)
            masks[name] = nib.load(tmp_path / f"{name}.nii.gz")
    # Each sequence is the series it was acquired as (the converted objects keep the SeriesInstanceUIDs).
    assert _mapped(results["classic"]) == studies["classic"][1]
    assert _mapped(results["converted"]) == studies["converted"][1]
    assert {m: s["series_description"] for m, s in results["converted"]["series"].items()} == {
        m: s["series_description"] + " (enhanced conversion)" for m, s in results["classic"]["series"].items()
    }
    assert results["converted"]["missing_sequences"] == []
    assert results["converted"]["warnings"] == results["classic"]["warnings"]
    suffix = " (enhanced conversion)"
    assert [n.replace(suffix, "") for n in results["converted"]["mapping_notes"]] == results["classic"][
        "mapping_notes"
    ]
    assert results["converted"]["mask"] == results["classic"]["mask"]
    labels = np.asarray(masks["converted"].dataobj)
    assert np.count_nonzero(labels) > 0, "empty mask: the comparison would say nothing"
    assert np.array_equal(masks["converted"].affine, masks["classic"].affine)
    assert np.array_equal(labels, np.asarray(masks["classic"].dataobj))


@pytest.mark.parametrize("name", ["pair", "timed", "forward"])
def test_a_same_protocol_pair_maps_right(
    name: str,
    studies: dict[str, tuple[str, dict[str, str]]],
    orthanc: OrthancEndpoint,
    random_model: Path,
    tmp_path: Path,
) -> None:
    patient_id, uids = studies[name]
    app = create_app(segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path / "results", **FAST))
    with TestClient(app) as client:
        response = client.post(f"/segment/{patient_id}")
    assert response.status_code == 200, response.text
    result = response.json()
    assert _mapped(result) == uids
    ordered = [n for n in result["mapping_notes"] if "acquisition order" in n]
    if name == "timed":
        (note,) = ordered
        assert "AcquisitionDateTime" in note and uids["t1"] in note and uids["t1ce"] in note
        assert note in result["warnings"]
    else:
        assert ordered == []


def test_a_contradictory_pair_is_refused_naming_both_series(
    studies: dict[str, tuple[str, dict[str, str]]],
    orthanc: OrthancEndpoint,
    random_model: Path,
    tmp_path: Path,
) -> None:
    patient_id, uids = studies["contradictory"]
    app = create_app(segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path / "results"))
    with TestClient(app) as client:
        response = client.post(f"/segment/{patient_id}")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "contrast_contradiction"
    assert uids["t1"] in body["detail"] and uids["t1ce"] in body["detail"]
    assert "ContrastBolusAgent 'Gadobutrol'" in body["detail"] and "pre" in body["detail"]


def test_an_auto_triggered_job_on_a_contradictory_pair_fails_with_the_code(
    own_orthanc: LocalOrthanc, clinical_study: UploadedStudy, random_model: Path, tmp_path: Path
) -> None:
    orthanc = OrthancEndpoint(own_orthanc.url, *own_orthanc.auth)
    settings = segment_settings(
        orthanc.url,
        orthanc.auth,
        random_model,
        tmp_path / "results",
        auto_segment=True,
        auto_segment_poll_s=0.3,
        **FAST,
    )
    patient_id = clone_study(clinical_study.converted, tmp_path / "study", edit=contradictory)
    upload_folder(orthanc, tmp_path / "study")
    with TestClient(create_app(settings)) as client:
        job = job_of(client, patient_id)
    assert (job["state"], job["origin"], job["code"]) == ("failed", "auto", "contrast_contradiction"), job
    assert "t1" in str(job["reason"]) and "pre" in str(job["reason"])


def test_inspect_shows_the_same_warnings_and_the_contradiction(
    studies: dict[str, tuple[str, dict[str, str]]],
    orthanc: OrthancEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with cli_with_env(monkeypatch, orthanc.env()) as runner:
        timed = runner.invoke(app, ["inspect", studies["timed"][0], "--json"])
        refused = runner.invoke(app, ["inspect", studies["contradictory"][0], "--json"])
    report = json.loads(timed.output)
    (warning,) = report["warnings"]
    assert "acquisition order" in warning and warning in report["notes"]
    assert {m: s["series_instance_uid"] for m, s in report["series"].items()} == studies["timed"][1]
    report = json.loads(refused.output)
    assert report["error"]["code"] == "contrast_contradiction"
    (study,) = report["studies"]
    (contradiction,) = study["mapping"]["contradictions"]
    assert all(studies["contradictory"][1][m] in contradiction for m in ("t1", "t1ce"))
