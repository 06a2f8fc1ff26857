"""Golden test of the shipped model: one fixed phantom it never saw, segmented the way the service does it.

The phantom is case 0 of run seed 9 (``generate_case(900000)``); ``scripts/train_demo.sh`` trains on run
seed 1 and evaluates on run seeds 2-7, so this case is in neither. The path is the service's: NIfTI files
read with SimpleITK → ``prepare`` → ``Predictor`` → ``Predictor.mask`` onto the FLAIR lattice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg.imaging.preprocess import MODALITIES, prepare
from tumorseg.labels import labels_to_regions
from tumorseg.model.predictor import Predictor
from tumorseg.synth.phantom import case_seed, generate_case, write_case

MODEL = Path(__file__).resolve().parents[2] / "models" / "default"
GOLDEN_RUN_SEED, GOLDEN_INDEX = 9, 0
MIN_DICE_WT = 0.85


def dice(a: np.ndarray, b: np.ndarray) -> float:  # type: ignore[type-arg]
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


@pytest.mark.slow
@pytest.mark.skipif(
    not (MODEL / "model.json").is_file(),
    reason="no shipped model yet (models/default/model.json): run `make train-demo`",
)
def test_shipped_model_segments_an_unseen_phantom(tmp_path: Path) -> None:
    case = generate_case(case_seed(GOLDEN_RUN_SEED, GOLDEN_INDEX))
    folder = write_case(case, tmp_path, "golden")
    volumes = {m: sitk.ReadImage(str(folder / f"golden_{m}.nii.gz")) for m in MODALITIES}
    predictor = Predictor.from_package(MODEL, "cpu")

    model_input, _ = prepare(volumes, "flair", predictor.manifest.preprocessing)
    probabilities = predictor.predict(model_input)
    mask = predictor.mask(probabilities, model_input.grid, volumes["flair"])

    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "golden_seg.nii.gz")))
    predicted = sitk.GetArrayFromImage(mask)
    assert predicted.shape == truth.shape  # on the FLAIR lattice, voxel for voxel
    assert set(np.unique(predicted)) <= {0, 1, 2, 4}
    wt = dice(labels_to_regions(predicted)[1], labels_to_regions(truth)[1])
    assert wt >= MIN_DICE_WT, f"whole-tumour Dice {wt:.3f} < {MIN_DICE_WT} on phantom seed {case.plan.seed}"
