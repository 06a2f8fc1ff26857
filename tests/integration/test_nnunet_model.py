"""nnU-Net v2 models as tumorseg models, on real nnU-Net result folders (``tests/nnunet_fixture.py``: made
by nnU-Net's own planning, preprocessing and trainer on phantoms, a label-based and a region-based one).

Acceptance (issue 44): the package's TC/WT/ET probabilities on the model grid, before tumorseg's
post-processing, within 1e-4 of ``nnUNetPredictor.predict_from_files`` run on NIfTI files of the same
volumes (its own reader: an axis or spacing mistake shows); the label mapping (summed probabilities, and
nnU-Net's own label map); clear errors for folders whose inputs or labels cannot be mapped, a cascade, a
trainer it cannot find; the export zip; ``POST /segment`` with the mask on the reference lattice and the
provenance in the result and ``/health``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.geometry import dcm2niix, index_map
from tests.nnunet_fixture import export_zip, nifti_inputs, session_results
from tests.orthanc import OrthancEndpoint, segment_settings
from tests.studies import UploadedStudy
from tumorseg.api.main import create_app
from tumorseg.errors import ModelError
from tumorseg.model.nnunet import OutputMap

pytestmark = pytest.mark.integration
pytest.importorskip("nnunetv2")

CROP = (slice(50, 180), slice(40, 200), slice(20, 130))  # anisotropic: a swapped axis changes the shape
SPACING = (1.0, 1.2, 1.5)  # anisotropic: a spacing given in the wrong order changes nnU-Net's resampling


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return session_results(tmp_path_factory)


@pytest.fixture(scope="module")
def packages(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tumorseg.model.import_nnunet import import_nnunet

    out = tmp_path_factory.mktemp("nnunet_packages")
    return {kind: import_nnunet(folder, out / kind) for kind, folder in folders.items()}


@pytest.fixture(scope="module")
def volumes(phantom_case: Path) -> tuple[np.ndarray, sitk.Image, tuple[str, ...]]:
    """The phantom's four sequences cropped, channels in the fixture's dataset.json order, on a grid with
    an origin and an anisotropic spacing."""
    sequences = ("t1", "t1ce", "t2", "flair")
    arrays = [np.asarray(nib.load(next(phantom_case.glob(f"*_{s}.nii.gz"))).dataobj)[CROP] for s in sequences]
    stacked = np.stack(arrays).astype(np.float32)
    grid = sitk.Image([int(n) for n in stacked.shape[1:]], sitk.sitkUInt8)
    grid.SetSpacing(SPACING)
    grid.SetOrigin((-84.0, 12.5, -40.0))
    return stacked, grid, sequences


def _load(package: Path, **config: Any) -> Any:
    from tumorseg.model import nnunet
    from tumorseg.model.package import read_manifest

    manifest = read_manifest(package)
    if config:
        manifest = replace(manifest, backend_config={**manifest.backend_config, **config})
    return nnunet.load(package, manifest, "cpu")


def _nnunet_reference(
    folder: Path, files: list[str], out: Path, sequential: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``predict_from_files`` on the source folder (nnU-Net's own loading, reader, writer): its saved
    probabilities and label map, axes as we hold them (i, j, k). ``sequential``: its
    ``predict_from_files_sequential``, the same steps without worker processes (each costs seconds here)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    out.mkdir()
    if sequential:
        predictor.predict_from_files_sequential([files], [str(out / "case")], save_probabilities=True)
    else:
        predictor.predict_from_files(
            [files],
            [str(out / "case")],
            save_probabilities=True,
            num_processes_preprocessing=1,
            num_processes_segmentation_export=1,
        )
    probabilities = np.load(out / "case.npz")["probabilities"].transpose(0, 3, 2, 1)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case.nii.gz"))).transpose(2, 1, 0)
    return probabilities, labels


@pytest.mark.parametrize("kind", ["regions", "labels"])
def test_probabilities_match_nnunets_own_prediction_from_nifti_files(
    kind: str,
    folders: dict[str, Path],
    packages: dict[str, Path],
    volumes: tuple[np.ndarray, sitk.Image, tuple[str, ...]],
    tmp_path: Path,
) -> None:
    from tumorseg.model.package import read_manifest

    array, grid, sequences = volumes
    assert read_manifest(packages[kind]).preprocessing.channels == sequences
    ours = _load(packages[kind]).predict(array, grid)
    assert ours.shape == (3, *array.shape[1:]) and ours.dtype == np.float32
    files = nifti_inputs(array, grid, tmp_path / "in")
    theirs, labels = _nnunet_reference(folders[kind], files, tmp_path / "out", kind == "labels")
    if kind == "regions":  # dataset.json: whole tumor, tumor core, enhancing tumor
        expected = theirs[[1, 0, 2]]
    else:  # background, NETC, SNFH, ET: regions as sums
        expected = np.stack([theirs[1] + theirs[3], theirs[1] + theirs[2] + theirs[3], theirs[3]])
        # regions_from="labels" (the package's OutputMap on nnU-Net's probabilities; the path from a study
        # to them is the one checked above): exactly the regions of nnU-Net's own label map
        outputs = OutputMap.from_json(read_manifest(packages[kind]).backend_config["outputs"])
        from_labels = replace(outputs, regions_from="labels").regions(theirs)
        assert {int(v) for v in np.unique(labels)} > {0}
        np.testing.assert_array_equal(from_labels[0] > 0.5, (labels == 1) | (labels == 3))
        np.testing.assert_array_equal(from_labels[1] > 0.5, labels > 0)
        np.testing.assert_array_equal(from_labels[2] > 0.5, labels == 3)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    # A test that can fail: probabilities that vary across the volume, not constants.
    assert float(ours.std(axis=(1, 2, 3)).min()) > 0.01


def _copy(folder: Path, into: Path) -> Path:
    target = into / folder.parent.name / folder.name
    shutil.copytree(folder, target)
    return target


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_channels_that_cannot_be_mapped_are_refused_and_can_be_mapped_by_hand(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from tumorseg.model.import_nnunet import import_nnunet

    folder = _copy(folders["labels"], tmp_path)
    _edit_json(folder / "dataset.json", lambda d: d["channel_names"].update({"1": "DCE"}))
    with pytest.raises(ModelError, match=r"channel 1 'DCE'.*--channel"):
        import_nnunet(folder, tmp_path / "refused")
    assert not (tmp_path / "refused" / "model.json").exists()
    package = import_nnunet(folder, tmp_path / "mapped", channels={"DCE": "t1ce"})
    assert json.loads((package / "model.json").read_text())["preprocessing"]["channels"][1] == "t1ce"


def test_labels_that_cannot_be_mapped_are_refused_by_the_cli(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from tumorseg.cli import app

    folder = _copy(folders["labels"], tmp_path)
    _edit_json(folder / "dataset.json", lambda d: d.update(labels={"background": 0, "a": 1, "b": 2, "c": 3}))
    runner = CliRunner()
    refused = runner.invoke(app, ["model", "import-nnunet", str(folder), "--out", str(tmp_path / "p1")])
    assert refused.exit_code == 2
    assert "cannot map" in refused.output and "'a'" in refused.output and "--label" in refused.output
    mapped = runner.invoke(
        app,
        ["model", "import-nnunet", str(folder), "--out", str(tmp_path / "p2")]
        + ["--label", "a=ncr", "--label", "b=ed", "--label", "3=et", "--regions-from", "labels"],
    )
    assert mapped.exit_code == 0, mapped.output
    config = json.loads((tmp_path / "p2" / "model.json").read_text())["backend_config"]
    assert config["outputs"] == {
        "kind": "labels",
        "channels": ["background", "ncr", "ed", "et"],
        "regions_from": "labels",
    }


def test_a_cascade_stage_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    from tumorseg.model.import_nnunet import import_nnunet

    folder = _copy(folders["regions"], tmp_path)
    _edit_json(
        folder / "plans.json", lambda p: p["configurations"]["3d_fullres"].update(previous_stage="3d_lowres")
    )
    with pytest.raises(ModelError, match="cascade stage.*'3d_lowres'"):
        import_nnunet(folder, tmp_path / "package")


def test_a_trainer_class_nnunet_does_not_have_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from tumorseg.model.import_nnunet import import_nnunet

    folder = _copy(folders["regions"], tmp_path)
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["trainer_name"] = "nnUNetTrainerFromElsewhere"
    torch.save(saved, checkpoint)
    with pytest.raises(ModelError, match="trainer class 'nnUNetTrainerFromElsewhere' not found"):
        import_nnunet(folder, tmp_path / "package")


def test_the_export_zip_imports_as_the_folder_does(
    folders: dict[str, Path], packages: dict[str, Path], tmp_path: Path
) -> None:
    import torch

    from tumorseg.model.import_nnunet import import_nnunet

    folder = folders["regions"]
    archive = export_zip(folder, folder.parent.parent, tmp_path / "model.zip")
    package = import_nnunet(archive, tmp_path / "package")
    ours, theirs = (json.loads((p / "model.json").read_text()) for p in (package, packages["regions"]))
    assert ours["backend_config"] == theirs["backend_config"]
    assert {k: v for k, v in ours["provenance"].items() if k != "source"} == {
        k: v for k, v in theirs["provenance"].items() if k != "source"
    }
    assert ours["provenance"]["source"] == "model.zip"
    weights = [
        torch.load(p / "nnunet" / "fold_0" / "checkpoint_final.pth", weights_only=True)["network_weights"]
        for p in (package, packages["regions"])
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])


def test_segment_serves_the_nnunet_model_with_its_provenance(
    packages: dict[str, Path],
    orthanc: OrthancEndpoint,
    clinical_study: UploadedStudy,
    tmp_path: Path,
) -> None:
    settings = segment_settings(orthanc.url, orthanc.auth, packages["regions"], tmp_path / "results")
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        response = client.post(f"/segment/{clinical_study.patient_id}", params={"reference": "flair"})
        assert response.status_code == 200, response.text
        result = response.json()
        (tmp_path / "mask.nii.gz").write_bytes(client.get(str(result["mask_url"])).content)
    model = result["model"]
    assert model["backend"] == "nnunet-v2"
    provenance = model["provenance"]
    assert provenance["trainer"] == "nnUNetTrainer" and provenance["configuration"] == "3d_fullres"
    assert provenance["dataset"] == "Dataset972_TumorsegPhantomRegions" and provenance["folds"] == ["0"]
    assert json.dumps(health).count("Dataset972_TumorsegPhantomRegions") >= 1
    mask = nib.load(tmp_path / "mask.nii.gz")
    labels = np.asarray(mask.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    assert np.count_nonzero(labels) > 0, "empty mask: the lattice check would say nothing"
    referee = dcm2niix(clinical_study.folder("flair"), tmp_path / "referee")
    index_map(referee.affine, referee.shape, mask.affine, mask.shape)
    assert sorted(mask.shape) == sorted(referee.shape[:3])
