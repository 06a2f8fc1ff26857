"""MONAI bundles imported as tumorseg packages: the same probabilities as the bundle's own pipeline on NIfTI
files of the same volumes, channels mapped by name (or by hand), outputs mapped to TC/WT/ET, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from tests.bundles import reference_probabilities, write_bundle, write_channels
from tumorseg.cli import app
from tumorseg.errors import ModelError
from tumorseg.imaging.preprocess import ModelInput, prepare, zscore_nonzero
from tumorseg.labels import labels_to_regions
from tumorseg.model.bundle import import_bundle
from tumorseg.model.package import read_manifest
from tumorseg.model.predictor import ForeignPredictor, Predictor
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.phantom import generate_case, write_case

pytestmark = pytest.mark.integration  # MONAI bundles run next to their own pipeline: seconds a test

SEED = 515151
# One output channel per class of a label map (softmax over them), from the four input channels.
LABEL_MAP_NETWORK = {"_target_": "torch.nn.Conv3d", "in_channels": 4, "out_channels": 4, "kernel_size": 1}


def label_map_bundle(directory: Path, outputs: dict[str, str]) -> Path:
    """A bundle whose network gives a softmax over the classes ``outputs`` names (index → name)."""
    return write_bundle(directory, network_def=LABEL_MAP_NETWORK, output_def=outputs, activation="softmax")


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(generate_case(SEED), tmp_path_factory.mktemp("case"), "BraTS2021_91001")


def model_input(case: Path, package: Path) -> tuple[ModelInput, np.ndarray]:
    """The case prepared for the package (its channels, unnormalised), and its truth on the model grid."""
    manifest = read_manifest(package)
    volumes = {
        m: sitk.ReadImage(str(case / f"{case.name}_{m}.nii.gz")) for m in manifest.preprocessing.channels
    }
    labels = sitk.ReadImage(str(case / f"{case.name}_seg.nii.gz"))
    prepared, truth = prepare(volumes, manifest.preprocessing.channels[0], manifest.preprocessing, labels)
    assert truth is not None
    return prepared, truth


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param((), id="zoo"),
        # reorientation and a crop that the import must undo on the output (Invertd), as the bundle does
        pytest.param(
            (
                {
                    "_target_": "Orientationd",
                    "keys": "image",
                    "axcodes": "RAS",
                    "labels": [["L", "R"], ["P", "A"], ["I", "S"]],
                },
                {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 2},
            ),
            id="orientation-and-crop",
        ),
    ],
)
def test_probabilities_match_the_bundles_own_pipeline_on_nifti(
    extra: tuple[dict[str, object], ...], case: Path, tmp_path: Path
) -> None:
    bundle = write_bundle(tmp_path / "bundle", extra_preprocessing=extra)
    package = import_bundle(bundle, tmp_path / "package")
    predictor = Predictor.from_package(package)
    assert isinstance(predictor, ForeignPredictor)
    prepared, _ = model_input(case, package)
    ours = predictor.predict(prepared)
    files = write_channels(prepared.array, prepared.grid, tmp_path / "nifti")  # the bundle's channel order
    theirs = reference_probabilities(bundle, files)
    assert ours.shape == (3, *prepared.array.shape[1:]) == theirs.shape
    assert 0.05 < float(ours.std())  # random weights, yet not a constant
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def hand_set_bundle(directory: Path, channel_def: dict[str, str], follows: str) -> Path:
    """A 1x1x1 convolution whose whole tumour is where the channel named ``follows`` (after the bundle's
    normalisation) exceeds 1; TC and ET never."""
    index = next(int(k) for k, v in channel_def.items() if v == follows)
    weight = torch.zeros(3, len(channel_def), 1, 1, 1)
    weight[1, index] = 12.0
    state = {"weight": weight, "bias": torch.tensor([-30.0, -12.0, -30.0])}
    network = {
        "_target_": "torch.nn.Conv3d",
        "in_channels": len(channel_def),
        "out_channels": 3,
        "kernel_size": 1,
    }
    return write_bundle(directory, network_def=network, channel_def=channel_def, state_dict=state)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / max(1, int(np.count_nonzero(a)) + int(np.count_nonzero(b)))


def test_the_whole_tumour_follows_the_channel_its_name_says(case: Path, tmp_path: Path) -> None:
    # An order no BraTS file set has, and no T1: the mapping must go by the names
    channel_def = {"0": "T2", "1": "FLAIR", "2": "T1Gd"}
    package = import_bundle(hand_set_bundle(tmp_path / "bundle", channel_def, "FLAIR"), tmp_path / "package")
    manifest = read_manifest(package)
    assert manifest.preprocessing.channels == ("t2", "flair", "t1ce")
    assert manifest.inputs.required == ("flair", "t1ce", "t2") and "t1" not in manifest.inputs.named
    prepared, truth = model_input(case, package)
    probabilities = Predictor.from_package(package).predict(prepared)
    flair = zscore_nonzero(prepared.array[1].copy())
    expected = flair > 1.0
    found = probabilities[1] > 0.5
    assert not (probabilities[0] > 0.5).any() and not (probabilities[2] > 0.5).any()
    assert dice(found, expected) > 0.99  # the FLAIR channel, not T2's or T1ce's
    # The phantom's tumour lies on one side: the whole tumour matches it there, and not mirrored left/right
    whole = labels_to_regions(truth)[1]
    assert dice(found, whole) > 0.4
    assert dice(found[::-1], whole) < 0.5 * dice(found, whole)


def test_a_manual_channel_mapping_wins(case: Path, tmp_path: Path) -> None:
    channel_def = {"0": "contrast A", "1": "FLAIR", "2": "weird"}
    bundle = hand_set_bundle(tmp_path / "bundle", channel_def, "FLAIR")
    with pytest.raises(ModelError, match=r"channel 0 'contrast A'.*channel 2 'weird'"):
        import_bundle(bundle, tmp_path / "refused")
    package = import_bundle(bundle, tmp_path / "package", channels={"contrast A": "t1ce", "2": "t2"})
    assert read_manifest(package).preprocessing.channels == ("t1ce", "flair", "t2")


def test_label_map_outputs_become_regions_from_summed_probabilities(case: Path, tmp_path: Path) -> None:
    outputs = {"0": "background", "1": "necrotic core", "2": "edema", "3": "enhancing tumor"}
    bundle = label_map_bundle(tmp_path / "bundle", outputs)
    package = import_bundle(bundle, tmp_path / "package")
    assert read_manifest(package).backend_config["outputs"] == {
        "activation": "softmax",
        "labels": {"0": "background", "1": "ncr", "2": "ed", "3": "et"},
    }
    prepared, _ = model_input(case, package)
    ours = Predictor.from_package(package).predict(prepared)
    files = write_channels(prepared.array, prepared.grid, tmp_path / "nifti")
    classes = reference_probabilities(bundle, files)  # softmax over the four classes
    np.testing.assert_allclose(ours[0], classes[1] + classes[3], atol=1e-4)  # TC = NCR + ET
    np.testing.assert_allclose(ours[1], classes[1] + classes[2] + classes[3], atol=1e-4)  # WT
    np.testing.assert_allclose(ours[2], classes[3], atol=1e-4)  # ET
    # A class with no BraTS name must be mapped by hand
    odd = label_map_bundle(tmp_path / "odd", {**outputs, "2": "resection cavity"})
    with pytest.raises(ModelError, match="resection cavity"):
        import_bundle(odd, tmp_path / "odd-package")
    assert import_bundle(odd, tmp_path / "dropped", labels={"2": "drop"}).is_dir()


def test_label_names_are_read_whole(tmp_path: Path) -> None:
    # BraTS 2023's names spelled out: "non-enhancing" contains "enhancing", and is necrotic core
    outputs = {
        "0": "background",
        "1": "Non-enhancing tumor core",
        "2": "Surrounding non-enhancing FLAIR hyperintensity",
        "3": "Enhancing tumor",
    }
    bundle = label_map_bundle(tmp_path / "bundle", outputs)
    mapped = read_manifest(import_bundle(bundle, tmp_path / "package")).backend_config["outputs"]["labels"]
    assert mapped == {"0": "background", "1": "ncr", "2": "ed", "3": "et"}
    renamed = label_map_bundle(tmp_path / "b2", {**outputs, "1": "non-enhancing lesion"})
    with pytest.raises(ModelError, match="'non-enhancing lesion' has no BraTS label"):
        import_bundle(renamed, tmp_path / "p2")
    with pytest.raises(ModelError, match=r"--label names output class\(es\) \['7'\]"):
        import_bundle(bundle, tmp_path / "p3", labels={"7": "et"})


def test_a_package_builds_monai_and_torch_objects_only(tmp_path: Path) -> None:
    hostile = write_bundle(
        tmp_path / "a",
        extra_preprocessing=({"_target_": "subprocess.run", "args": ["touch", str(tmp_path / "ran")]},),
    )
    with pytest.raises(ModelError, match="'subprocess.run'.*MONAI and torch.nn objects only"):
        import_bundle(hostile, tmp_path / "a-out")
    # A package whose bundle.json was edited after import is refused when it loads, before anything runs
    package = import_bundle(write_bundle(tmp_path / "b"), tmp_path / "b-out")
    config = json.loads((package / "bundle.json").read_text())
    config["preprocessing"].append({"_target_": "subprocess.run", "args": ["touch", str(tmp_path / "ran")]})
    (package / "bundle.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="'subprocess.run'"):
        Predictor.from_package(package)
    config["preprocessing"][-1] = {"_target_": "Identityd", "keys": "image", "_requires_": "$print(1)"}
    (package / "bundle.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="_requires_"):
        Predictor.from_package(package)
    assert not (tmp_path / "ran").exists()


def test_bundles_that_cannot_be_honoured_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a MONAI bundle"):
        import_bundle(tmp_path, tmp_path / "out")
    wrong_outputs = write_bundle(tmp_path / "a", output_def={"0": "liver", "1": "spleen", "2": "kidney"})
    with pytest.raises(ModelError, match="'liver' is not TC, WT or ET"):
        import_bundle(wrong_outputs, tmp_path / "a-out")
    expression = write_bundle(
        tmp_path / "b",
        extra_preprocessing=({"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x"},),
    )
    with pytest.raises(ModelError, match="runs no code"):
        import_bundle(expression, tmp_path / "b-out")
    clash = write_bundle(tmp_path / "c", channel_def={"0": "T1c", "1": "T1Gd", "2": "T2", "3": "FLAIR"})
    with pytest.raises(ModelError, match="twice"):
        import_bundle(clash, tmp_path / "c-out")


def test_import_and_info_from_the_cli(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle")
    runner = CliRunner()
    done = runner.invoke(app, ["model", "import-bundle", str(bundle), "--out", str(tmp_path / "pkg")])
    assert done.exit_code == 0, done.output
    weights = torch.load(
        tmp_path / "pkg" / "model.pt", weights_only=True
    )  # re-saved: loads without pickle code
    assert isinstance(weights, dict)
    shown = runner.invoke(app, ["model", "info", str(tmp_path / "pkg"), "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    assert info["backend"] == "monai-bundle" and info["channels"] == ["t1ce", "t1", "t2", "flair"]
    assert (
        info["provenance"]["bundle"] == "test_brats_bundle" and info["provenance"]["license"] == "Apache-2.0"
    )
    assert "Apache-2.0" in (tmp_path / "pkg" / "MODEL_CARD.md").read_text()
    refused = runner.invoke(
        app, ["model", "import-bundle", str(bundle), "--out", str(tmp_path / "x"), "--channel", "T1c=dwi"]
    )
    assert refused.exit_code == 2 and "dwi" in refused.output
    assert sorted(SEQUENCES) == sorted(info["channels"])
