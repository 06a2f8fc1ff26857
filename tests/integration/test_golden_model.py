"""Golden test of the shipped model: two fixed phantoms it never saw, segmented the way the service does it.

The phantoms are cases 0 and 1 of run seed 9 (``case_seed(9, 0)`` = 900000 and ``case_seed(9, 1)`` =
900001); ``scripts/train_demo.sh`` trains on run seed 1 and evaluates on run seeds 2-7, so neither is in
either. Case 0 has every compartment (necrosis, oedema, enhancing rim); case 1 is a tumour without
enhancement, where any enhancing voxel in the mask is a false alarm: by the BraTS rule ET scores 1.0 only
when truth and prediction are both empty, and 0.0 otherwise. (The relabelling of enhancing regions under
the package's ``min_enhancing_ml`` is tested in ``test_postprocess.py`` and ``test_model_package.py``.) The
path is the service's: NIfTI files read with SimpleITK → ``prepare`` → ``Predictor`` → ``Predictor.mask``
onto the FLAIR lattice. Whole tumour (WT), tumour core (TC) and enhancing tumour (ET) are each checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.geometry import dice
from tumorseg.imaging.preprocess import prepare
from tumorseg.labels import labels_to_regions
from tumorseg.model.predictor import Predictor
from tumorseg.paths import SHIPPED_MODEL
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.phantom import case_seed, generate_case, write_case

pytestmark = pytest.mark.integration  # the shipped model on two whole phantoms: seconds a test

MODEL = SHIPPED_MODEL
GOLDEN_RUN_SEED = 9
REGIONS = ("tc", "wt", "et")  # the channel order of labels_to_regions

# Case index → (the phantom's profile, the minimum Dice per region). The minima are the Dice measured with
# the shipped model less a margin of about 0.05-0.1 (ET of case 1 excepted: no enhancement means none predicted).
GOLDEN = {
    0: ("full", {"wt": 0.90, "tc": 0.90, "et": 0.85}),  # measured WT 0.983, TC 0.981, ET 0.939
    1: ("no_et", {"wt": 0.90, "tc": 0.80, "et": 1.0}),  # measured WT 0.976, TC 0.888, ET 1.0 (both empty)
}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_package(MODEL, "cpu")


@pytest.mark.slow
@pytest.mark.skipif(
    not (MODEL / "model.json").is_file(),
    reason="no shipped model yet (tumorseg/shipped_model/model.json): run `make train-demo`",
)
@pytest.mark.parametrize("index", sorted(GOLDEN))
def test_shipped_model_segments_an_unseen_phantom(index: int, predictor: Predictor, tmp_path: Path) -> None:
    profile, minimum = GOLDEN[index]
    case = generate_case(case_seed(GOLDEN_RUN_SEED, index))
    assert case.plan.profile == profile, "the golden phantom changed: re-measure the thresholds"
    folder = write_case(case, tmp_path, "golden")
    volumes = {m: sitk.ReadImage(str(folder / f"golden_{m}.nii.gz")) for m in SEQUENCES}

    model_input, _ = prepare(volumes, "flair", predictor.manifest.preprocessing)
    probabilities = predictor.predict(model_input)
    mask = predictor.mask(probabilities, model_input.grid, volumes["flair"])

    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "golden_seg.nii.gz")))
    predicted = sitk.GetArrayFromImage(mask)
    assert predicted.shape == truth.shape  # on the FLAIR lattice, voxel for voxel
    assert set(np.unique(predicted)) <= {0, 1, 2, 4}
    expected, found = labels_to_regions(truth), labels_to_regions(predicted)
    assert expected[REGIONS.index("et")].any() == (profile != "no_et")
    scores = {r: dice(found[n], expected[n]) for n, r in enumerate(REGIONS)}
    failed = {r: round(scores[r], 3) for r in REGIONS if scores[r] < minimum[r]}
    assert not failed, f"Dice {failed} below {minimum} on phantom seed {case.plan.seed} (all: {scores})"


@pytest.mark.slow
@pytest.mark.skipif(
    not (MODEL / "model.json").is_file(),
    reason="no shipped model yet (tumorseg/shipped_model/model.json): run `make train-demo`",
)
def test_the_fast_path_gives_the_shipped_models_mask_voxel_for_voxel(
    predictor: Predictor, tmp_path: Path
) -> None:
    # Predictor.from_package folds BatchNorm and uses channels-last on the CPU; fast=False is the plain network.
    plain = Predictor.from_package(MODEL, "cpu", fast=False)
    folder = write_case(generate_case(case_seed(GOLDEN_RUN_SEED, 0)), tmp_path, "golden")
    volumes = {m: sitk.ReadImage(str(folder / f"golden_{m}.nii.gz")) for m in SEQUENCES}
    model_input, _ = prepare(volumes, "flair", predictor.manifest.preprocessing)
    fast, expected = predictor.predict(model_input), plain.predict(model_input)
    np.testing.assert_allclose(fast, expected, atol=1e-4)  # measured here: at most 3.5e-6
    masks = [
        sitk.GetArrayFromImage(p.mask(q, model_input.grid, volumes["flair"]))
        for p, q in ((predictor, fast), (plain, expected))
    ]
    assert np.array_equal(*masks)
