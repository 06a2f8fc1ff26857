"""Training package: the BraTS folder reader, and a two-step training run whose package the service loads.

The cases here are tiny BraTS-layout volumes written by the test (a bright ellipsoid "brain" with a
three-label tumour, BraTS 2021 NIfTI geometry), so the whole file runs in well under a minute; the real
phantoms are exercised by ``scripts/train_demo.sh`` and the golden-model test.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tumorseg_training.config import TrainConfig
from tumorseg_training.data import IncompleteCase, find_cases, load_prepared, split_cases
from tumorseg_training.evaluate import evaluate
from tumorseg_training.metrics import EMPTY_HD95_MM, region_scores
from tumorseg_training.train import CHECKPOINT, CURVES_PNG, METRICS_CSV, train
from tumorseg_training.transforms import train_transform, training_item

from tumorseg.imaging.preprocess import Preprocessing, prepare
from tumorseg.labels import REGIONS, labels_to_regions
from tumorseg.model.predictor import Predictor
from tumorseg.sequences import SEQUENCES

SHAPE = (40, 44, 36)  # (i, j, k)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


TINY_RECIPE = {
    "network": {"channels": [4, 8], "strides": [2], "num_res_units": 0, "norm": "BATCH"},
    "preprocessing": {"divisible_by": 16, "crop_margin_vox": 2},
    "crop_size": [16, 16, 16],
    "roi_size": [32, 32, 32],
    "batch_size": 2,
    "samples_per_case": 2,
    "warmup_steps": 1,
    "bn_batches": 2,
    "val_fraction": 0.5,
    "val_every": 1,
    "device": "cpu",
    "num_threads": 1,
}


def tiny_case(root: Path, case_id: str, seed: int, suffix: str = ".nii.gz") -> Path:
    """A BraTS-layout case: ellipsoid brain, ED shell, NCR core, ET rim; 1 mm, BraTS-like LPS geometry."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    centre = np.array(SHAPE) / 2 + rng.uniform(-2, 2, 3)
    brain = ((i - centre[0]) / 16) ** 2 + ((j - centre[1]) / 18) ** 2 + ((k - centre[2]) / 14) ** 2 < 1
    tumour_centre = centre + rng.uniform(-4, 4, 3)
    r = np.sqrt((i - tumour_centre[0]) ** 2 + (j - tumour_centre[1]) ** 2 + (k - tumour_centre[2]) ** 2)
    seg = np.zeros(SHAPE, np.uint8)
    seg[(r < 8) & brain] = 2
    seg[(r < 5) & brain] = 4
    seg[(r < 3) & brain] = 1
    contrast = {
        "flair": (100, 300, 200, 180),
        "t1": (300, 200, 150, 250),
        "t1ce": (300, 200, 120, 600),
        "t2": (150, 350, 300, 250),
    }
    folder = root / case_id
    folder.mkdir(parents=True)
    for name, (base, ed, ncr, et) in contrast.items():
        image = np.where(brain, base, 0).astype(np.float32)
        for label, value in ((2, ed), (1, ncr), (4, et)):
            image[seg == label] = value
        image = np.where(brain, image + rng.normal(0, 10, SHAPE), 0).astype(np.int16)
        write(folder / f"{case_id}_{name}{suffix}", image)
    write(folder / f"{case_id}_seg{suffix}", seg)
    return folder


def write(path: Path, array: np.ndarray) -> None:  # type: ignore[type-arg]
    """(i, j, k) array → NIfTI with the BraTS 2021 geometry as SimpleITK reads it (identity LPS)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetOrigin((0.0, -239.0, 0.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    tiny_case(root, "BraTS2021_00000", 0)
    tiny_case(root, "BraTS2021_00001", 1, suffix=".nii")
    return root


def test_reader_finds_nii_and_niigz_cases(data: Path) -> None:
    cases = find_cases(data)
    assert [c.case_id for c in cases] == ["BraTS2021_00000", "BraTS2021_00001"]
    assert cases[0].paths["seg"].name == "BraTS2021_00000_seg.nii.gz"
    assert cases[1].paths["t1ce"].name == "BraTS2021_00001_t1ce.nii"
    assert set(cases[1].paths) == {*SEQUENCES, "seg"}
    volume = cases[1].volume("flair")
    assert volume.GetSize() == SHAPE and volume.GetSpacing() == (1.0, 1.0, 1.0)


def test_incomplete_case_is_refused_by_name(tmp_path: Path) -> None:
    folder = tiny_case(tmp_path, "BraTS2021_00007", 7)
    (folder / "BraTS2021_00007_t1ce.nii.gz").unlink()
    with pytest.raises(IncompleteCase, match=r"BraTS2021_00007 .*missing BraTS2021_00007_t1ce\.nii\.gz"):
        find_cases(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no BraTS-layout cases"):
        find_cases(tmp_path / "empty")


def test_split_is_seeded_and_keeps_a_training_case(data: Path) -> None:
    cases = find_cases(data)
    assert split_cases(cases, 0.5, 3) == split_cases(cases, 0.5, 3)
    train_cases, val_cases = split_cases(cases, 0.9, 0)
    assert len(train_cases) == 1 and len(val_cases) == 1
    assert split_cases(cases, 0.0, 0) == (cases, [])


def test_prepared_cases_match_the_service_preprocessing_and_are_cached(data: Path, tmp_path: Path) -> None:
    case = find_cases(data)[0]
    prep = Preprocessing(divisible_by=16, crop_margin_vox=2)
    first = load_prepared([case], prep, cache_dir=tmp_path)[0]
    again = load_prepared([case], prep, cache_dir=tmp_path)[0]  # read from the .npz
    assert (tmp_path / "BraTS2021_00000.npz").is_file()
    served, labels = prepare(case.volumes(), "flair", prep, labels=case.volume("seg"))
    assert first.image.dtype == np.float16 and first.image.shape == served.array.shape
    np.testing.assert_allclose(again.float32(), served.array, atol=2e-2, rtol=1e-3)
    assert np.array_equal(again.labels, labels)


def test_crops_are_tumour_biased_region_channels(data: Path) -> None:
    case = load_prepared(find_cases(data)[:1], Preprocessing(divisible_by=16, crop_margin_vox=2))[0]
    transform = train_transform((16, 16, 16), samples_per_case=8, class_ratios=(0.0, 0.0, 0.0, 1.0))
    transform.set_random_state(seed=0)
    samples = transform(training_item(case, (16, 16, 16)))
    assert len(samples) == 8
    for sample in samples:
        assert sample["image"].shape == (4, 16, 16, 16) and sample["image"].dtype == torch.float32
        assert sample["label"].shape == (3, 16, 16, 16)
        assert sample["label"][2].sum() > 0  # every crop is centred on enhancing tumour
        assert torch.all(sample["label"][2] <= sample["label"][0])  # ET ⊂ TC ⊂ WT
        assert torch.all(sample["label"][0] <= sample["label"][1])


def test_region_scores_follow_the_brats_empty_rules() -> None:
    truth = np.zeros((3, 20, 20, 20), bool)
    truth[:2, 5:10, 5:10, 5:10] = True
    prediction = truth.copy()
    prediction[2, 0, 0, 0] = True  # ET predicted where there is none
    scores = region_scores(prediction, truth, (1.0, 1.0, 1.0))
    assert scores["dice_tc"] == pytest.approx(1.0) and scores["hd95_tc"] == pytest.approx(0.0)
    assert scores["dice_et"] == 0.0 and scores["hd95_et"] == EMPTY_HD95_MM
    assert region_scores(truth, truth, (1.0, 1.0, 1.0))["dice_et"] == 1.0
    shifted = np.roll(truth, 2, axis=1)
    assert region_scores(shifted, truth, (1.0, 1.0, 1.0))["hd95_wt"] == pytest.approx(2.0)


def test_config_refuses_typos_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_json({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="divide by 16"):
        TrainConfig.from_json({"crop_size": [90, 96, 96]})


def test_two_steps_make_a_package_the_service_loads(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "package"
    config = TrainConfig.from_json({**TINY_RECIPE, "max_steps": 2, "data_description": "two tiny cases"})
    result = train(data, out, config, cache_dir=tmp_path / "cache")
    assert result.steps == 2
    for name in ("model.json", "model.pt", METRICS_CSV, CURVES_PNG, CHECKPOINT):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["architecture"]["args"]["channels"] == [4, 8]
    assert manifest["training"]["data"]["description"] == "two tiny cases"
    assert manifest["training"]["steps"] == 2 and set(manifest["metrics"]["validation"]) >= {
        "dice_wt",
        "hd95_et",
    }
    rows = list(csv.DictReader((out / METRICS_CSV).read_text().splitlines()))
    assert rows and rows[-1]["step"] == "2" and rows[-1]["val_dice_wt"] != ""

    predictor = Predictor.from_package(out)
    case = find_cases(data)[0]
    volumes = case.volumes()
    model_input, _ = prepare(volumes, "flair", predictor.manifest.preprocessing)
    probabilities = predictor.predict(model_input)
    assert probabilities.shape == (3, *model_input.array.shape[1:])
    mask = predictor.mask(probabilities, model_input.grid, volumes["flair"])
    found = labels_to_regions(sitk.GetArrayFromImage(mask))
    truth = labels_to_regions(sitk.GetArrayFromImage(case.volume("seg")))

    report = evaluate(out, data, device="cpu")
    assert [c.case_id for c in report.cases] == ["BraTS2021_00000", "BraTS2021_00001"]
    # The evaluation scores what the service delivers: case 0's Dice are those of the mask made above.
    assert report.reference == "flair"
    for n, region in enumerate(REGIONS):
        assert report.cases[0].scores[f"dice_{region}"] == pytest.approx(dice(found[n], truth[n])), region
    wt = [c.scores["dice_wt"] for c in report.cases]
    assert report.summary["dice_wt"]["mean"] == pytest.approx(float(np.mean(wt)))

    resumed = train(data, out, config.replace(max_steps=3), resume=True, cache_dir=tmp_path / "cache")
    assert resumed.steps == 3 and [r["step"] for r in resumed.history] == [1, 2, 3]
    with pytest.raises(ValueError, match="recipe changed"):
        train(data, out, config.replace(lr=0.1), resume=True, cache_dir=tmp_path / "cache")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI gives the tumorseg loggers rich handlers; later tests expect them untouched."""
    loggers = [logging.getLogger(name) for name in ("tumorseg", "tumorseg_training")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


def test_cli_train_and_evaluate(data: Path, tmp_path: Path, restore_logging: None) -> None:
    from typer.testing import CliRunner

    from tumorseg.cli import app

    runner = CliRunner()
    recipe = json.dumps({**TINY_RECIPE, "val_fraction": 0.0})
    trained = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "pkg"),
            "--max-steps",
            "1",
            "--config",
            recipe,
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "1 steps" in trained.output
    report = tmp_path / "report.json"
    scored = runner.invoke(
        app, ["evaluate", "--model", str(tmp_path / "pkg"), "--data", str(data), "--json", str(report)]
    )
    assert scored.exit_code == 0, scored.output
    assert "seconds per case" in scored.output  # the table itself wraps to the runner's width
    assert len(json.loads(report.read_text())["cases"]) == 2
    needed = runner.invoke(
        app, ["evaluate", "--model", str(tmp_path / "pkg"), "--data", str(data), "--without", "t2"]
    )
    assert needed.exit_code == 1 and "needs FLAIR, T1, T1ce, T2" in needed.output
    refused = runner.invoke(
        app, ["train", "--data", str(data), "--out", str(tmp_path / "x"), "--config", '{"lr_max": 1}']
    )
    assert refused.exit_code == 2 and "unknown training config keys" in refused.output


def test_weight_average_and_batch_norm_statistics() -> None:
    from tumorseg_training.optim import WeightAverage, lr_factor, recalibrate_batch_norm

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(4, 2, 1), torch.nn.BatchNorm3d(2))
    average = WeightAverage(network, decay=0.999)
    start = average.model[0].weight.clone()
    with torch.no_grad():
        network[0].weight.add_(1.0)
    average.update(network)  # early updates follow the network closely (decay 2/11)
    expected = start * (2 / 11) + network[0].weight * (9 / 11)
    torch.testing.assert_close(average.model[0].weight, expected)
    assert not average.model[0].weight.requires_grad

    items = [{"image": torch.full((4, 8, 8, 8), float(v))} for v in (1.0, 3.0)]

    def one_crop(item: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [item]

    recalibrate_batch_norm(network, items, one_crop, batches=4, cases_per_batch=2, device="cpu")  # type: ignore[arg-type]
    norm = network[1]
    assert norm.momentum == 0.1 and int(norm.num_batches_tracked) == 4
    expected_mean = network[0](torch.stack([i["image"] for i in items])).mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(norm.running_mean, expected_mean.detach())

    assert lr_factor(0, 100, 10) == pytest.approx(0.1) and lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_cases_without_enhancing_tumour_are_visited_more_often() -> None:
    from tumorseg_training.transforms import LABEL, epoch_visits

    with_et = {LABEL: np.array([[[0, 1], [2, 4]]], dtype=np.uint8)}
    without_et = {LABEL: np.array([[[0, 1], [2, 2]]], dtype=np.uint8)}
    visits = epoch_visits([with_et, without_et], repeat_without_et=3)
    assert [v is without_et for v in visits] == [False, True, True, True]
    assert epoch_visits([with_et, without_et], repeat_without_et=1) == [with_et, without_et]
    with pytest.raises(ValueError, match="repeat_without_et"):
        TrainConfig(repeat_without_et=0)


def test_core_contrast_scales_the_core_against_normal_brain_per_channel() -> None:
    from tumorseg_training.transforms import RandRegionContrastd

    rng = np.random.default_rng(0)
    labels = np.zeros((1, 24, 24, 24), np.uint8)
    labels[0, 8:16, 8:16, 8:16] = 1
    labels[0, 16:20, 8:16, 8:16] = 2
    image = rng.normal(0.0, 0.1, (4, 24, 24, 24)).astype(np.float32)
    image[:, labels[0] == 1] += np.array([2.0, -1.0, 0.0, 1.5], np.float32)[:, None]
    image[:, :7] = 0.0  # outside the brain, within the smoothing's reach of the core
    core, normal = labels[0] == 1, (labels[0] == 0) & np.any(image != 0, axis=0)
    deep = np.zeros_like(core)
    deep[10:14, 10:14, 10:14] = True  # 2 voxels from the edge: the smoothed weight is ~1 there

    transform = RandRegionContrastd("image", label_key="label", label=1, spread=0.5, prob=1.0)
    transform.set_random_state(seed=3)
    out = transform({"image": torch.from_numpy(image), "label": torch.from_numpy(labels)})
    after = out["image"].numpy()
    factors = transform._factors
    assert factors.shape == (4,) and np.all(np.abs(factors - 1) <= 0.5) and len(set(factors)) == 4
    before_contrast = image[:, core].mean(1) - image[:, normal].mean(1)
    shift = after - image
    expected = (factors - 1) * before_contrast
    np.testing.assert_allclose(shift[:, deep].mean(1), expected, atol=0.02)
    # the core's texture is kept (only its mean moves), normal brain away from the core is untouched,
    # and nothing moves outside the brain or in the labels
    np.testing.assert_allclose(after[:, deep].std(1), image[:, deep].std(1), rtol=1e-2)
    far = normal.copy()
    far[3:21, 3:21, 3:21] = False  # the smoothing reaches 4 voxels
    assert np.abs(shift[:, far]).max() < 1e-6
    assert np.abs(after[:, :7]).max() == 0.0
    assert torch.equal(out["label"], torch.from_numpy(labels))

    # off: spread 0, probability 0, or a crop without the label leave the image as it is
    for off in (
        RandRegionContrastd("image", label_key="label", label=1, spread=0.0, prob=1.0),
        RandRegionContrastd("image", label_key="label", label=1, spread=0.5, prob=0.0),
        RandRegionContrastd("image", label_key="label", label=3, spread=0.5, prob=1.0),
    ):
        same = off({"image": torch.from_numpy(image), "label": torch.from_numpy(labels)})
        assert torch.equal(same["image"], torch.from_numpy(image))
    with pytest.raises(ValueError, match="core_contrast"):
        TrainConfig(core_contrast=1.0)


def test_region_loss_is_computed_in_float32_for_half_precision_logits() -> None:
    from tumorseg_training.optim import RegionLoss

    # Under CUDA autocast the network returns float16; a float16 Dice sum over 2 × 64³ voxels overflows.
    logits = torch.full((2, 3, 64, 64, 64), 8.0, dtype=torch.float16)
    target = torch.ones((2, 3, 64, 64, 64))
    loss = RegionLoss("dice_bce")(logits, target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and float(loss) < 0.01


def test_prepared_cases_keep_their_order_when_prepared_in_parallel(data: Path, tmp_path: Path) -> None:
    cases = find_cases(data)
    prep = Preprocessing(divisible_by=16, crop_margin_vox=2)
    seen: list[tuple[int, str]] = []
    prepared = load_prepared(cases, prep, cache_dir=tmp_path, progress=lambda n, t, c: seen.append((n, c)))
    assert [p.case_id for p in prepared] == [c.case_id for c in cases]
    assert seen == [(n, c.case_id) for n, c in enumerate(cases, start=1)]
    for case, item in zip(cases, prepared, strict=True):
        alone = load_prepared([case], prep)[0]
        assert np.array_equal(alone.image, item.image) and np.array_equal(alone.labels, item.labels)


def test_a_step_with_a_non_finite_loss_is_skipped(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tumorseg_training import optim

    real = optim.RegionLoss.forward
    calls: list[int] = []

    def nan_on_the_second_step(
        self: optim.RegionLoss, logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        calls.append(1)
        loss = real(self, logits, target)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(optim.RegionLoss, "forward", nan_on_the_second_step)
    config = TrainConfig.from_json({**TINY_RECIPE, "max_steps": 3, "ema_decay": None, "val_fraction": 0.0})
    caplog.set_level(logging.WARNING, logger="tumorseg_training")
    result = train(data, tmp_path / "package", config, cache_dir=tmp_path / "cache")
    assert result.steps == 3 and len(calls) == 3
    assert all(np.isfinite(r["loss"]) for r in result.history)  # the skipped step is left out of the mean
    assert "1 step(s) with a non-finite loss skipped" in caplog.text
    weights = torch.load(tmp_path / "package" / "model.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_augmentation_is_reproducible_and_the_core_jitter_only_joins_when_on(data: Path) -> None:
    case = load_prepared(find_cases(data)[:1], Preprocessing(divisible_by=16, crop_margin_vox=2))[0]
    item = training_item(case, (16, 16, 16))

    def crops(**options: float) -> list[torch.Tensor]:
        transform = train_transform((16, 16, 16), samples_per_case=4, **options)  # type: ignore[arg-type]
        transform.set_random_state(seed=7)
        return [sample["image"] for sample in transform(item)]

    first, again = (
        crops(core_contrast=0.5, core_contrast_prob=1.0),
        crops(core_contrast=0.5, core_contrast_prob=1.0),
    )
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # off, the pipeline (and so every seed it hands out) is the one of recipes without the key
    assert (
        len(train_transform((16, 16, 16), 1).transforms)
        == len(train_transform((16, 16, 16), 1, core_contrast=0.5).transforms) - 1
    )
    assert all(torch.equal(a, b) for a, b in zip(crops(), crops(core_contrast=0.0), strict=True))


def test_the_card_names_the_held_out_misses() -> None:
    from tumorseg_training.card import _misses

    def case(case_id: str, tc: float, wt: float, et: float) -> dict[str, object]:
        return {"case_id": case_id, "scores": {"dice_tc": tc, "dice_wt": wt, "dice_et": et}}

    assert _misses([case("A", 0.9, 0.95, 0.9)]) == []
    (line,) = _misses([case("A", 0.9, 0.95, 0.9), case("B", 0.01, 0.8, 1.0), case("C", 0.9, 0.9, 0.0)])
    assert "TC B 0.010" in line and "ET C 0.000" in line and " A 0." not in line


def test_the_package_carries_the_enhancing_minimum_of_the_recipe() -> None:
    from tumorseg_training.train import manifest_for

    manifest = manifest_for(TrainConfig(min_enhancing_ml=0.5), {}, {})
    assert manifest.min_enhancing_ml == 0.5 and manifest.to_json()["output"]["min_enhancing_ml"] == 0.5
    with pytest.raises(ValueError, match="min_enhancing_ml"):
        TrainConfig(min_enhancing_ml=-1.0)


SHIPPED_INPUTS = {"required": ["t1ce"], "optional": ["flair", "t1", "t2"], "any_of": [["flair", "t2"]]}


def _dropped(
    transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], draws: int
) -> list[set[str]]:
    """The sequences ``transform`` zeroes in ``draws`` calls on a (4, 2, 2, 2) image of ones."""
    seen = []
    for _ in range(draws):
        out = transform({"image": torch.ones((4, 2, 2, 2))})
        seen.append({m for c, m in enumerate(SEQUENCES) if not out["image"][c].any()})
    return seen


def test_modality_dropout_never_drops_a_required_sequence_nor_a_whole_group() -> None:
    from tumorseg_training.transforms import RandModalityDropoutd

    from tumorseg.sequences import InputPolicy

    policy = InputPolicy.from_json(SHIPPED_INPUTS)
    transform = RandModalityDropoutd("image", {"flair": 0.15, "t1": 0.15, "t2": 0.15}, policy, SEQUENCES)
    transform.set_random_state(seed=0)
    seen = _dropped(transform, 6000)
    assert all("t1ce" not in s and not {"flair", "t2"} <= s for s in seen)
    assert all(policy.problem(set(SEQUENCES) - s) is None for s in seen)
    rate = {m: sum(m in s for s in seen) / len(seen) for m in SEQUENCES}
    assert rate["t1"] == pytest.approx(0.15, abs=0.02)
    # flair and t2 are never dropped together: each loses half of the 0.15² joint draws
    assert rate["flair"] == pytest.approx(0.15 * (1 - 0.15 / 2), abs=0.02)
    assert rate["t2"] == pytest.approx(0.15 * (1 - 0.15 / 2), abs=0.02)
    assert any({"flair", "t1"} <= s for s in seen)  # independent drops do combine

    # the older number form: one droppable sequence with probability p, never a required one
    one = RandModalityDropoutd("image", 0.3, policy, SEQUENCES)
    one.set_random_state(seed=1)
    seen = _dropped(one, 3000)
    assert all(len(s) <= 1 and "t1ce" not in s for s in seen)
    assert sum(bool(s) for s in seen) / len(seen) == pytest.approx(0.3, abs=0.03)
    for m in ("flair", "t1", "t2"):
        assert sum(m in s for s in seen) / len(seen) == pytest.approx(0.1, abs=0.02)
    # a one-sequence group is never dropped: FLAIR is needed here
    lone = InputPolicy(required=("t1", "t1ce"), optional=("flair", "t2"), any_of=(("flair",),))
    only_t2 = RandModalityDropoutd("image", 0.5, lone, SEQUENCES)
    only_t2.set_random_state(seed=2)
    assert {frozenset(s) for s in _dropped(only_t2, 200)} == {frozenset(), frozenset({"t2"})}

    # off, it draws nothing from its random state (the crops of recipes without dropout stay the same)
    for off in (
        RandModalityDropoutd("image", 0.0, policy, SEQUENCES),
        RandModalityDropoutd("image", {"flair": 0.0}, policy, SEQUENCES),
        RandModalityDropoutd("image"),
    ):
        off.set_random_state(seed=3)
        before = off.R.get_state()[1].copy()
        assert _dropped(off, 5) == [set()] * 5
        assert np.array_equal(off.R.get_state()[1], before)


def test_dropout_is_off_for_recipes_without_it(data: Path) -> None:
    from tumorseg.sequences import InputPolicy

    case = load_prepared(find_cases(data)[:1], Preprocessing(divisible_by=16, crop_margin_vox=2))[0]
    item = training_item(case, (16, 16, 16))

    def crops(**options: object) -> list[torch.Tensor]:
        transform = train_transform((16, 16, 16), samples_per_case=4, **options)
        transform.set_random_state(seed=5)
        return [sample["image"] for sample in transform(item)]

    plain = crops()
    policy = InputPolicy.from_json(SHIPPED_INPUTS)
    assert all(torch.equal(a, b) for a, b in zip(plain, crops(inputs=policy), strict=True))
    dropped = crops(inputs=policy, modality_dropout={"flair": 1.0, "t1": 1.0})
    for a, b in zip(plain, dropped, strict=True):
        assert not b[0].any() and not b[1].any()  # flair, t1 zeroed; t1ce and t2 as without dropout
        assert torch.equal(a[2:], b[2:])


def test_recipe_refuses_dropout_of_required_or_unknown_sequences() -> None:
    with pytest.raises(ValueError, match=r"required sequence\(s\) \['t1ce'\]"):
        TrainConfig.from_json({"inputs": SHIPPED_INPUTS, "modality_dropout": {"t1ce": 0.1}})
    with pytest.raises(ValueError, match=r"unknown sequence\(s\) \['dwi'\]"):
        TrainConfig.from_json({"inputs": SHIPPED_INPUTS, "modality_dropout": {"dwi": 0.1}})
    with pytest.raises(ValueError, match=r"rates must be numbers in \[0, 1\]"):
        TrainConfig.from_json({"inputs": SHIPPED_INPUTS, "modality_dropout": {"t2": 1.5}})
    with pytest.raises(ValueError, match="would drop a required sequence"):
        TrainConfig.from_json({"modality_dropout": 0.1})  # all four required by default
    with pytest.raises(ValueError, match="must name each of"):
        TrainConfig.from_json({"inputs": {"required": ["t1ce"], "optional": ["t1"]}})
    # the older number form still loads, and every shipped recipe does
    old = TrainConfig.from_json({"inputs": SHIPPED_INPUTS, "modality_dropout": 0.05})
    assert old.modality_dropout == 0.05 and old.input_policy.required == ("t1ce",)
    assert TrainConfig().input_policy.required == SEQUENCES and TrainConfig().init_from is None
    recipes = Path(__file__).parents[2] / "training" / "recipes"
    for path in sorted(recipes.glob("*.json")):
        TrainConfig.from_json(json.loads(path.read_text()))
    dropout = TrainConfig.from_json(json.loads((recipes / "phantom_dropout.json").read_text()))
    assert dropout.input_policy.to_json() == SHIPPED_INPUTS and dropout.init_from is None  # a full retrain
    default = TrainConfig.from_json(json.loads((recipes / "phantom_default.json").read_text()))
    assert dropout.network == default.network and dropout.prep == default.prep
    assert (dropout.epochs, dropout.lr, dropout.seed) == (default.epochs, default.lr, default.seed)


def test_the_package_declares_the_recipe_inputs() -> None:
    from tumorseg_training.train import manifest_for

    from tumorseg.model.package import ModelManifest

    config = TrainConfig.from_json({"inputs": SHIPPED_INPUTS, "modality_dropout": {"t2": 0.2}})
    manifest = manifest_for(config, {}, {})
    assert manifest.inputs == config.input_policy and manifest.to_json()["inputs"] == SHIPPED_INPUTS
    assert ModelManifest.from_json(manifest.to_json(), Path(".")).inputs.optional == ("flair", "t1", "t2")
    assert manifest_for(TrainConfig(), {}, {}).to_json()["inputs"]["required"] == list(SEQUENCES)


def test_fine_tuning_starts_from_a_package_and_validates_without_each_optional_sequence(
    data: Path, tmp_path: Path
) -> None:
    from tumorseg_training.card import render_card
    from tumorseg_training.train import initial_weights, manifest_for

    from tumorseg.model.network import build_network
    from tumorseg.model.package import save_package

    base = TrainConfig.from_json({**TINY_RECIPE, "version": "9.9.9"})
    torch.manual_seed(1)
    start = build_network("monai.UNet", base.network).state_dict()
    save_package(tmp_path / "base", manifest_for(base, {}, {}), start)

    recipe = {
        **TINY_RECIPE,
        "max_steps": 1,
        "lr": 0.0,  # no step moves the weights: the package must hold the ones it started from
        "weight_decay": 0.0,
        "inputs": SHIPPED_INPUTS,
        "modality_dropout": {"flair": 0.5, "t1": 0.5, "t2": 0.5},
        "init_from": str(tmp_path / "base"),
    }
    config = TrainConfig.from_json(recipe)
    loaded = initial_weights(config)
    assert all(torch.equal(loaded[k], v) for k, v in start.items())
    out = tmp_path / "tuned"
    result = train(data, out, config, cache_dir=tmp_path / "cache")
    weights = torch.load(out / "model.pt", weights_only=True)
    for name, value in start.items():
        if "running_" not in name and "num_batches" not in name:  # BatchNorm statistics are re-estimated
            assert torch.equal(weights[name], value), name

    manifest = json.loads((out / "model.json").read_text())
    assert manifest["inputs"] == SHIPPED_INPUTS
    assert manifest["training"]["init_from"] == {
        "path": str(tmp_path / "base"),
        "name": base.name,
        "version": "9.9.9",
    }
    validation = manifest["metrics"]["validation"]
    assert {"dice_tc", "dice_wt", "dice_et", "mean_dice"} <= set(validation)
    for sequence in ("flair", "t1", "t2"):
        assert set(validation[f"without_{sequence}"]) == {"dice_tc", "dice_wt", "dice_et"}
        for region in REGIONS:
            key = f"val_without_{sequence}_dice_{region}"
            assert 0.0 <= result.history[-1][key] <= 1.0
            assert validation[f"without_{sequence}"][f"dice_{region}"] == result.history[-1][key]
    assert "without_t1ce" not in validation
    # BatchNorm statistics per set of sequences a study may lack, for the network serving such studies
    assert manifest["norms"] == "norms.pt"
    norms = torch.load(out / "norms.pt", weights_only=True)
    assert sorted(norms) == ["flair", "flair+t1", "t1", "t1+t2", "t2"]
    assert not torch.equal(
        norms["flair"]["model.0.adn.N.running_mean"], weights["model.0.adn.N.running_mean"]
    )
    assert sorted(Predictor.from_package(out).variants) == [f"main/{k}" for k in sorted(norms)]
    rows = list(csv.DictReader((out / METRICS_CSV).read_text().splitlines()))
    assert rows[-1]["val_without_t2_dice_wt"] != ""

    # evaluation with a sequence missing: refused for a required one; the reference moves off a missing one
    with pytest.raises(ValueError, match="needs T1ce"):
        evaluate(out, data, device="cpu", without="t1ce")
    full = evaluate(out, data, device="cpu")
    no_flair = evaluate(out, data, device="cpu", without="flair")
    assert no_flair.without == "flair" and no_flair.reference == "t1ce"
    assert no_flair.to_json()["without"] == "flair" and len(no_flair.cases) == 2
    card = render_card(
        manifest,
        full.to_json(),
        {},
        {"flair": no_flair.to_json()},
    )
    assert "### Missing sequences" in card and "| without FLAIR |" in card and "it needs T1ce" in card

    # one package of both: the base network for complete studies, the tuned one for the others
    from tumorseg_training.fallback import attach_fallback

    combined = attach_fallback(tmp_path / "base", out, tmp_path / "combined")
    assert {"model.pt", "fallback.pt", "fallback_metrics.csv"} <= {  # the base package had no run files
        f.name for f in combined.iterdir()
    }
    packaged = json.loads((combined / "model.json").read_text())
    assert packaged["inputs"] == SHIPPED_INPUTS and packaged["version"] == manifest["version"]
    assert packaged["training"] == json.loads((tmp_path / "base" / "model.json").read_text())["training"]
    assert packaged["fallback"]["training"]["init_from"]["version"] == "9.9.9"
    assert packaged["fallback"]["norms"] == "fallback_norms.pt" and "norms" not in packaged
    # FLAIR required although the fallback could do without it: refused without FLAIR, its norms left out
    strict = attach_fallback(tmp_path / "base", out, tmp_path / "strict", require=["flair"])
    assert json.loads((strict / "model.json").read_text())["inputs"] == {
        "required": ["flair", "t1ce"],
        "optional": ["t1", "t2"],
        "any_of": [],
    }
    assert sorted(torch.load(strict / "fallback_norms.pt", weights_only=True)) == ["t1", "t1+t2", "t2"]
    strict_predictor = Predictor.from_package(strict)
    assert sorted(strict_predictor.variants) == ["fallback/t1", "fallback/t1+t2", "fallback/t2"]
    assert strict_predictor.manifest.inputs.problem(["t1", "t1ce", "t2"]) == "no usable series for flair"
    with pytest.raises(ValueError, match="not optional for the fallback"):
        attach_fallback(tmp_path / "base", out, tmp_path / "wrong", require=["t1ce"])
    # a fallback serving FLAIR and T2 only: the main network takes a study without T1, which needs a
    # substitute (it never saw a zero channel)
    with pytest.raises(ValueError, match="neither served by the fallback nor given a substitute"):
        attach_fallback(tmp_path / "base", out, tmp_path / "wrong", serves=["flair", "t2"])
    import shutil

    substituted = shutil.copytree(out, tmp_path / "substituted")
    tuned = json.loads((substituted / "model.json").read_text())
    tuned["inputs"]["substitutes"] = {"t1": "t1ce"}
    (substituted / "model.json").write_text(json.dumps(tuned))
    served = attach_fallback(tmp_path / "base", substituted, tmp_path / "served", serves=["t2", "flair"])
    served_manifest = json.loads((served / "model.json").read_text())
    assert served_manifest["fallback"]["serves"] == ["flair", "t2"]
    assert served_manifest["inputs"]["substitutes"] == {"t1": "t1ce"}
    # the fallback's statistics only for the sets it segments (T1 alone goes to the main network)
    assert sorted(torch.load(served / "fallback_norms.pt", weights_only=True)) == [
        "flair",
        "flair+t1",
        "t1+t2",
        "t2",
    ]
    served_predictor = Predictor.from_package(served)
    assert served_predictor.manifest.network_for(["flair", "t1ce", "t2"]) == "main"
    assert served_predictor.manifest.network_for(["flair", "t1", "t1ce"]) == "fallback"
    with pytest.raises(ValueError, match="required, so the fallback cannot serve"):
        attach_fallback(tmp_path / "base", substituted, tmp_path / "wrong", require=["t2"], serves=["t2"])
    # measured again for a package (one trained before norms existed): the same statistics as training's
    from tumorseg_training.norms import add_to_package

    (combined / "fallback_norms.pt").unlink()
    assert add_to_package(combined, data, tmp_path / "cache") == combined / "fallback_norms.pt"
    again = torch.load(combined / "fallback_norms.pt", weights_only=True)
    assert sorted(again) == sorted(norms)
    assert all(torch.equal(again[k][n], t) for k, buffers in norms.items() for n, t in buffers.items())
    both_full, both_no_flair = (
        evaluate(combined, data, device="cpu", without=w).to_json() for w in (None, "flair")
    )

    def scores(report: dict[str, Any]) -> list[object]:
        return [case["scores"] for case in report["cases"]]

    assert scores(both_full) == scores(evaluate(tmp_path / "base", data, device="cpu").to_json())
    assert scores(both_no_flair) == scores(no_flair.to_json())
    # (the base package was saved without a training record: the card borrows the tuned run's for it)
    card = render_card(
        {**packaged, "training": manifest["training"]}, both_full, {}, {"flair": both_no_flair}
    )
    assert "## Fallback network" in card and "fallback_curves.png" in card and "`fallback_norms.pt`" in card
    clinical = {
        "description": "Heads.",
        "seeds": [50, 51],
        "missing_sequences": {
            "all four": {"wt": 0.9, "tc": 0.8, "et": 0.85},
            "without t2": {
                "wt": 0.88,
                "tc": 0.8,
                "et": 0.85,
                "wt_change": -0.02,
                "tc_change": 0.0,
                "et_change": 0.0,
            },
        },
    }
    packaged["metrics"]["clinical_heads"] = clinical
    card = render_card(
        {**packaged, "training": manifest["training"]}, both_full, {}, {"flair": both_no_flair}
    )
    assert "### Clinical-head phantoms" in card and "| without t2 | 0.880 (-0.020) | 0.800 (+0.000) |" in card
    with pytest.raises(ValueError, match="must require all four"):
        attach_fallback(out, tmp_path / "base", tmp_path / "wrong")

    # a package with another network is refused by name
    other = TrainConfig.from_json({**TINY_RECIPE, "network": {**TINY_RECIPE["network"], "channels": [4, 12]}})  # type: ignore[dict-item]
    torch.manual_seed(2)
    save_package(
        tmp_path / "other",
        manifest_for(other, {}, {}),
        build_network("monai.UNet", other.network).state_dict(),
    )
    with pytest.raises(ValueError, match=r"channels \[4, 12\] there, \[4, 8\] here.*same architecture"):
        train(
            data,
            tmp_path / "x",
            config.replace(init_from=str(tmp_path / "other")),
            cache_dir=tmp_path / "cache",
        )


def test_dropout_per_batch_drops_the_same_sequence_from_every_crop_of_a_batch(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tumorseg_training.train as training

    seen: list[list[tuple[int, ...]]] = []  # per training batch: the all-zero channels of each crop

    def recording(name: str, args: dict[str, Any]) -> torch.nn.Module:
        network = build(name, args)

        def record(_: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if torch.is_grad_enabled():  # a training step (calibration and validation run without grad)
                images = inputs[0]
                seen.append([tuple(int(c) for c in range(4) if not crop[c].any()) for crop in images])

        network.register_forward_pre_hook(record)
        return network

    build = training.build_network
    monkeypatch.setattr(training, "build_network", recording)
    recipe = {
        **TINY_RECIPE,
        "batch_size": 4,  # up to two cases of two crops each
        "max_steps": 6,
        "inputs": SHIPPED_INPUTS,
        "modality_dropout": 1.0,
        "dropout_per_batch": True,
    }
    train(data, tmp_path / "run", TrainConfig.from_json(recipe), cache_dir=tmp_path / "cache")
    assert len(seen) == 6
    droppable = {(SEQUENCES.index(m),) for m in ("flair", "t1", "t2")}
    for crops in seen:
        assert len(crops) >= 2 and len(set(crops)) == 1 and crops[0] in droppable
    assert len({crops[0] for crops in seen}) > 1  # drawn anew per batch


def test_dropout_with_a_substitute_puts_t1ce_in_the_place_of_a_dropped_t1() -> None:
    from tumorseg_training.transforms import RandModalityDropoutd

    from tumorseg.sequences import InputPolicy

    policy = InputPolicy.from_json({**SHIPPED_INPUTS, "substitutes": {"t1": "t1ce"}})
    image = torch.arange(4 * 8, dtype=torch.float32).reshape(4, 2, 2, 2) + 1
    dropout = RandModalityDropoutd(keys="image", rates={"t1": 1.0, "t2": 1.0}, inputs=policy)
    out = dropout({"image": image})["image"]
    t1, t1ce, t2 = (SEQUENCES.index(m) for m in ("t1", "t1ce", "t2"))
    assert torch.equal(out[t1], image[t1ce]) and not out[t2].any()  # T2 has no substitute: zeros
    assert torch.equal(image, torch.arange(4 * 8, dtype=torch.float32).reshape(4, 2, 2, 2) + 1)  # a copy
    batch = image[None].repeat(2, 1, 1, 1, 1)
    dropout.fill(batch, ("t1",), channel_axis=1)
    assert torch.equal(batch[:, t1], batch[:, t1ce]) and torch.equal(
        batch[:, t2], image[t2][None].repeat(2, 1, 1, 1)
    )


def test_thick_slices_average_slabs_along_one_axis_and_keep_the_background() -> None:
    from tumorseg_training.transforms import RandThickSlicesd, thick_slices

    ramp = torch.arange(12, dtype=torch.float32)[None, None].repeat(3, 2, 1)
    # slab means of a linear ramp, interpolated linearly between slab centres: the ramp again inside
    for slab, phase in ((3, 0), (4, 2), (5, 1)):
        out = thick_slices(ramp, axis=2, slab=slab, phase=phase)
        assert out.shape == ramp.shape
        inner = slice(slab, 12 - slab)
        torch.testing.assert_close(out[..., inner], ramp[..., inner])
    step = torch.zeros(1, 1, 12)
    step[..., 6:] = 1.0
    blurred = thick_slices(step, axis=2, slab=4, phase=0)  # slabs [0,4) [4,8) [8,12): means 0, 0.5, 1
    # centres 1.5, 5.5, 9.5: 0 up to the first, 1 from the last, linear between (5 -> 0.4375, 6 -> 0.5625)
    expected = torch.clamp((torch.arange(12) - 1.5) / 8, 0, 1)
    torch.testing.assert_close(blurred[0, 0], expected)
    assert torch.equal(thick_slices(step, axis=2, slab=1), step)
    # along another axis: the same numbers, moved
    torch.testing.assert_close(thick_slices(step.permute(2, 0, 1), axis=0, slab=4), blurred.permute(2, 0, 1))
    # the transform: some channels thick-sliced, zero background kept, reproducible, off draws nothing
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(4, 24, 24, 24, generator=generator)
    image[:, :4] = 0
    transform = RandThickSlicesd(keys="image", prob=0.5, thickness=(3.0, 5.0))
    transform.set_random_state(seed=3)
    first = transform({"image": image})["image"]
    transform.set_random_state(seed=3)
    assert torch.equal(transform({"image": image})["image"], first)
    changed = [c for c in range(4) if not torch.equal(first[c], image[c])]
    assert changed and len(changed) < 4 and not first[:, :4].any()
    off = RandThickSlicesd(keys="image", prob=0.0)
    state = off.R.get_state()[1].copy()
    assert off({"image": image})["image"] is image and np.array_equal(off.R.get_state()[1], state)
    with pytest.raises(ValueError, match="thick_slices"):
        TrainConfig.from_json({**TINY_RECIPE, "thick_slices_vox": [5, 2]})


def test_the_bias_field_acts_as_before_normalisation_and_keeps_the_background() -> None:
    from tumorseg_training.transforms import RandBiasFieldd

    generator = torch.Generator().manual_seed(0)
    image = torch.randn(4, 16, 16, 16, generator=generator)
    image[:, :3] = 0
    transform = RandBiasFieldd(keys="image", prob=1.0, max_bias=0.2, ratio=(4.0, 4.0))
    transform.set_random_state(seed=5)
    out = transform({"image": image})["image"]
    assert not out[:, :3].any()  # outside the brain: still 0
    inside = image[:, 3:]
    safe = (inside + 4.0).abs() > 0.5
    field = ((out[:, 3:] + 4.0) / (inside + 4.0))[safe]  # z' = (z + k) b - k with k = 4: b back
    assert float(field.min()) >= 1 / 1.2 - 1e-4 and float(field.max()) <= 1.2 + 1e-4
    assert float(field.std()) > 0  # not a constant: a wave across the crop
    transform.set_random_state(seed=5)
    assert torch.equal(transform({"image": image})["image"], out)
    off = RandBiasFieldd(keys="image", prob=0.0)
    assert off({"image": image})["image"] is image
    with pytest.raises(ValueError, match="bias_field"):
        TrainConfig.from_json({**TINY_RECIPE, "bias_field_max": 1.5})
