"""Train a MONAI U-Net on BraTS-layout cases and write a ``tumorseg.model.package`` directory.

``train(data_dir, out_dir, config)``:

1. finds the cases (``data.find_cases``), splits off ``val_fraction`` for validation (seeded), prepares
   each case once with the service's ``prepare`` (cached in memory, and in ``cache_dir`` when given);
2. trains with tumour-biased random crops (``transforms``), Dice (+ BCE) on the sigmoid region outputs
   TC/WT/ET, AdamW with linear warm-up then cosine decay per step, AMP and ``cudnn.benchmark`` on CUDA,
   keeping a moving average of the weights (``optim.WeightAverage``, ``ema_decay``) — the weights that are
   validated and shipped;
3. every ``val_every`` epochs (and after the last) re-estimates BatchNorm statistics for those weights
   (``optim.recalibrate_batch_norm``), runs the package's own ``Predictor`` (sliding window) over each
   validation case on the model grid and scores Dice/HD95 per region (``metrics``); when the recipe's
   ``inputs`` has optional sequences, also with each of them missing in turn (its channel zeroed, as
   inference feeds it, and the network with the BatchNorm statistics of that set missing,
   ``norms.missing_statistics``): mean Dice per region as ``val_without_<seq>_dice_<region>`` in the history
   and ``metrics["validation"]["without_<seq>"]`` in the package; model selection stays on the full input;
4. keeps the best weights by mean validation Dice (the last ones without validation) as the package in
   ``out_dir`` (``model.json`` + ``model.pt``, and ``norms.pt`` with those statistics), and after every epoch rewrites ``metrics.csv``,
   ``curves.png`` and ``checkpoint.pt`` (network, average, optimiser, schedule, history: ``resume=True``
   continues from it). ``init_from`` (a package folder) starts the network from that package's weights
   (fine-tuning; the network must be the recipe's).

Determinism: ``monai.utils.set_determinism(seed)`` before the network is built, and the crop sampler and
the case order are reseeded from ``seed + epoch`` at every epoch, so a CPU run is reproducible and a run
resumed at an epoch boundary continues as if uninterrupted (CUDA trades this for ``cudnn.benchmark``).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import DataLoader, Dataset
from monai.utils import set_determinism
from torch import nn

from tumorseg.imaging.preprocess import ModelInput
from tumorseg.labels import REGIONS, labels_to_regions
from tumorseg.model.device import resolve_device
from tumorseg.model.network import DEFAULT_UNET_ARGS, build_network
from tumorseg.model.package import (
    NORMS,
    WEIGHTS,
    InferenceConfig,
    ModelManifest,
    current_versions,
    read_manifest,
    save_package,
)
from tumorseg.model.predictor import Predictor
from tumorseg_training import __version__
from tumorseg_training.config import TrainConfig
from tumorseg_training.curves import draw_curves
from tumorseg_training.data import PreparedCase, find_cases, load_prepared, split_cases
from tumorseg_training.metrics import SCORES, mean_dice, region_scores, summarise
from tumorseg_training.norms import Statistics, missing_statistics, with_statistics
from tumorseg_training.optim import RegionLoss, WeightAverage, lr_factor, recalibrate_batch_norm
from tumorseg_training.transforms import RandModalityDropoutd, epoch_visits, train_transform, training_item

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
CSV_FIELDS = ("epoch", "step", "lr", "loss", "elapsed_s", *(f"val_{s}" for s in SCORES), "val_mean_dice")


class Callbacks:
    """Progress hooks (the CLI draws a progress bar with them); every method is a no-op here."""

    def prepared(self, done: int, total: int, case_id: str) -> None: ...

    def started(self, total_steps: int, step: int) -> None: ...

    def step(self, step: int, loss: float, lr: float) -> None: ...

    def validating(self, epoch: int, cases: int) -> None: ...

    def epoch_done(self, record: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    package: Path
    steps: int
    epochs: int
    best: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    duration_s: float = 0.0


def manifest_for(
    config: TrainConfig, training: dict[str, Any], metrics: dict[str, Any], norms: str | None = None
) -> ModelManifest:
    return ModelManifest(
        name=config.name,
        version=config.version,
        architecture="monai.UNet",
        architecture_args=dict(config.network),
        preprocessing=config.prep,
        inference=InferenceConfig(roi_size=config.roi_size, overlap=config.overlap),
        threshold=config.threshold,
        min_enhancing_ml=config.min_enhancing_ml,
        training=training,
        metrics=metrics,
        versions={**current_versions(), "tumorseg_training": __version__},
        inputs=config.input_policy,
        norms=norms,
    )


def _save_norms(out_dir: Path, norms: Statistics) -> str | None:
    """``norms`` as ``out_dir/norms.pt`` (none: the file removed); the manifest's ``norms`` value."""
    if not norms:
        (out_dir / NORMS).unlink(missing_ok=True)
        return None
    torch.save(norms, out_dir / NORMS)
    return NORMS


def validate(
    network: nn.Module,
    cases: list[PreparedCase],
    config: TrainConfig,
    device: str,
    without: str | None = None,
) -> dict[str, float]:
    """Mean region scores of ``network`` over ``cases`` (model grid, threshold, no post-processing);
    ``without``: that sequence missing, its channel made as inference makes it (zeros, or its substitute)."""
    predictor = Predictor(manifest_for(config, {}, {}), network, device)
    spacing = (config.prep.spacing_mm,) * 3
    rows = []
    was_training = network.training
    network.eval()
    for case in cases:
        array = case.float32()
        present = tuple(m for m in config.prep.channels if m != without)
        if without is not None:
            array = array.copy()
            array[config.prep.channels.index(without)] = 0.0  # as prepare leaves it; predict fills it in
        grid = sitk.Image([int(s) for s in array.shape[1:]], sitk.sitkUInt8)
        probabilities = predictor.predict(ModelInput(array=array, grid=grid, present=present))
        rows.append(region_scores(probabilities > config.threshold, labels_to_regions(case.labels), spacing))
    network.train(was_training)
    return {name: stats["mean"] for name, stats in summarise(rows).items()}


def without_key(sequence: str, region: str) -> str:
    """History key of the validation Dice of ``region`` with ``sequence`` missing."""
    return f"val_without_{sequence}_dice_{region}"


def validation_metrics(best: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    """``metrics["validation"]`` of the package: the full-input scores of the chosen epoch, and with each
    optional sequence missing ``without_<seq>: {dice_tc, dice_wt, dice_et}``."""
    metrics: dict[str, Any] = {
        k[4:]: v for k, v in best.items() if k.startswith("val_") and not k.startswith("val_without_")
    }
    for sequence in config.input_policy.optional:
        scores = {
            f"dice_{r}": best[without_key(sequence, r)] for r in REGIONS if without_key(sequence, r) in best
        }
        if scores:
            metrics[f"without_{sequence}"] = scores
    return metrics


def initial_weights(config: TrainConfig) -> dict[str, Any]:
    """The weights of the package ``config.init_from``, refused unless its network is the recipe's."""
    assert config.init_from is not None
    source = Path(config.init_from)
    manifest = read_manifest(source)
    theirs = {**DEFAULT_UNET_ARGS, **manifest.architecture_args}
    mine = {**DEFAULT_UNET_ARGS, **config.network}
    differs = sorted(k for k in {*theirs, *mine} if _plain(theirs.get(k)) != _plain(mine.get(k)))
    if manifest.architecture != "monai.UNet" or differs:
        detail = ", ".join(f"{k} {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in differs)
        raise ValueError(
            f"init_from {source}: its network ({manifest.architecture}"
            + (f"; {detail}" if detail else "")
            + ") is not the recipe's; fine-tuning needs the same architecture"
        )
    if tuple(manifest.preprocessing.channels) != tuple(config.prep.channels):
        raise ValueError(
            f"init_from {source}: its channel order {list(manifest.preprocessing.channels)} is not the "
            f"recipe's {list(config.prep.channels)}"
        )
    state: dict[str, Any] = torch.load(source / manifest.weights, map_location="cpu", weights_only=True)
    return state


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (skipped non-finite steps left out); NaN when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _source(folder: str) -> dict[str, Any]:
    """What ``init_from`` pointed at, for the manifest."""
    manifest = read_manifest(Path(folder))
    return {"path": folder, "name": manifest.name, "version": manifest.version}


def _cpu_state(network: nn.Module) -> dict[str, Any]:
    return {k: v.detach().cpu() for k, v in network.state_dict().items()}


def _write_history(out: Path, history: list[dict[str, float]]) -> None:
    extra = [k for k in dict.fromkeys(k for r in history for k in r) if k not in CSV_FIELDS]
    with (out / METRICS_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*CSV_FIELDS, *extra], restval="")
        writer.writeheader()
        for record in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in record.items()})
    draw_curves(history, out / CURVES_PNG)


def train(
    data_dir: Path,
    out_dir: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    cache_dir: Path | None = None,
    callbacks: Callbacks | None = None,
) -> TrainResult:
    """Train on the cases under ``data_dir``; the package (and its checkpoint) goes to ``out_dir``."""
    hooks = callbacks or Callbacks()
    started = time.perf_counter()
    device = resolve_device(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if device == "cpu":
        torch.set_flush_denormal(True)  # tiny gradients late in training otherwise slow CPU kernels down
    out_dir.mkdir(parents=True, exist_ok=True)

    checkpoint: dict[str, Any] | None = None
    if resume and (out_dir / CHECKPOINT).is_file():
        checkpoint = torch.load(out_dir / CHECKPOINT, map_location="cpu", weights_only=False)
        assert checkpoint is not None
        previous = TrainConfig.from_json(checkpoint["config"])
        changed = config.differences(previous)
        if changed:
            raise ValueError(f"cannot resume {out_dir}: the recipe changed in {changed}")
    elif resume:
        log.warning("no %s in %s: starting from scratch", CHECKPOINT, out_dir)
    if checkpoint is None:
        (out_dir / NORMS).unlink(missing_ok=True)  # another run's

    cases = find_cases(data_dir)
    train_files, val_files = split_cases(cases, config.val_fraction, config.seed)
    prep = config.prep
    log.info("%d case(s): %d for training, %d for validation", len(cases), len(train_files), len(val_files))
    prepared = load_prepared([*train_files, *val_files], prep, config.reference, cache_dir, hooks.prepared)
    train_cases, val_cases = prepared[: len(train_files)], prepared[len(train_files) :]

    set_determinism(seed=config.seed)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    network = build_network("monai.UNet", config.network)
    init_info: dict[str, Any] | None = checkpoint.get("init_from") if checkpoint is not None else None
    if config.init_from is not None and checkpoint is None:
        init_info = _source(config.init_from)
        try:
            network.load_state_dict(initial_weights(config))
        except RuntimeError as exc:  # same arguments, yet the weights do not fit
            raise ValueError(f"init_from {config.init_from}: weights do not fit the network ({exc})") from exc
        log.info("starting from the weights of %s", config.init_from)
    network = network.to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    items = [training_item(case, config.crop_size) for case in train_cases]
    visits = epoch_visits(items, config.repeat_without_et)
    steps_per_epoch = math.ceil(len(visits) / config.cases_per_step)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup = min(config.warmup_steps, total_steps // 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: lr_factor(s, total_steps, warmup))
    use_amp = config.amp and device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = RegionLoss(config.loss)
    average = WeightAverage(network, config.ema_decay) if config.ema_decay else None
    shipped = average.model if average else network  # what is validated and saved

    step, epoch, history, best = 0, 0, [], {"val_mean_dice": -1.0}
    norms: Statistics = {}  # the BatchNorm statistics per missing set of the last recalibration
    elapsed_before = 0.0
    if checkpoint is not None:
        network.load_state_dict(checkpoint["network"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        if average is not None:
            average.load_state_dict(checkpoint["average"])
        step, epoch = int(checkpoint["step"]), int(checkpoint["epoch"])
        history, best = list(checkpoint["history"]), dict(checkpoint["best"])
        elapsed_before = float(history[-1]["elapsed_s"]) if history else 0.0
        log.info("resuming %s at epoch %d, step %d", out_dir, epoch, step)

    transform = train_transform(
        config.crop_size,
        config.samples_per_case,
        config.class_ratios,
        config.flip_prob,
        config.intensity_scale,
        config.intensity_shift,
        0.0 if config.dropout_per_batch else config.modality_dropout,
        config.core_contrast,
        config.core_contrast_prob,
        inputs=config.input_policy,
        channels=config.prep.channels,
        thick_slices_prob=config.thick_slices_prob,
        thick_slices_vox=config.thick_slices_vox,
        bias_field_prob=config.bias_field_prob,
        bias_field_max=config.bias_field_max,
    )
    batch_dropout = RandModalityDropoutd(
        keys="image",
        rates=config.modality_dropout if config.dropout_per_batch else 0.0,
        inputs=config.input_policy,
        channels=config.prep.channels,
    )
    calibration = train_transform(
        config.crop_size, config.samples_per_case, config.class_ratios, flip_prob=0.0
    )
    generator = torch.Generator()
    loader = DataLoader(
        Dataset(visits, transform),
        batch_size=config.cases_per_step,
        shuffle=True,
        num_workers=config.num_workers,
        generator=generator,
        persistent_workers=False,
    )
    training_info: dict[str, Any] = {
        "data": {
            "description": config.data_description,
            "folder": data_dir.name,
            "cases_train": len(train_cases),
            "cases_validation": len(val_cases),
            "validation_case_ids": [c.case_id for c in val_cases],
        },
        "recipe": config.to_json(),
        **({"init_from": init_info} if init_info else {}),
        "device": device,
        "parameters": sum(p.numel() for p in network.parameters()),
    }
    hooks.started(total_steps, step)
    network.train()
    while step < total_steps:
        epoch_started, losses, non_finite = time.perf_counter(), [], 0
        generator.manual_seed(config.seed * 100_003 + epoch)
        transform.set_random_state(seed=(config.seed * 100_003 + epoch) % 2**32)
        batch_dropout.set_random_state(seed=(config.seed * 100_003 + epoch + 1) % 2**32)
        for batch in loader:
            if step >= total_steps:
                break
            images, targets = batch["image"].to(device), batch["label"].to(device)
            if batch_dropout.active:  # the whole batch lacks the same sequences (dropout_per_batch)
                batch_dropout.fill(images, batch_dropout.draw(), channel_axis=1)
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast("cuda") if use_amp else nullcontext():
                logits = network(images)
            loss = loss_fn(logits, targets)  # in float32 (see RegionLoss)
            if torch.isfinite(loss):
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
            else:  # an overflow in float16 activations, say: this batch teaches nothing, skip it
                non_finite += 1
            scheduler.step()
            if average is not None:
                average.update(network)
            step += 1
            losses.append(float(loss.detach()))
            hooks.step(step, losses[-1], float(scheduler.get_last_lr()[0]))
            if step % config.log_every == 0:
                seconds = (time.perf_counter() - epoch_started) / len(losses)
                log.info(
                    "step %d/%d loss %.4f, %.2f s/step",
                    step,
                    total_steps,
                    _finite_mean(losses[-config.log_every :]),
                    seconds,
                )
        epoch += 1
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "lr": float(scheduler.get_last_lr()[0]),
            "loss": _finite_mean(losses),
        }
        if non_finite:
            log.warning("epoch %d: %d step(s) with a non-finite loss skipped", epoch, non_finite)
        last = step >= total_steps
        validating = bool(val_cases) and (epoch % config.val_every == 0 or last)
        if validating or last:
            calibration.set_random_state(seed=config.seed)
            recalibrate_batch_norm(
                shipped, items, calibration, config.bn_batches, config.cases_per_step, device
            )
            norms = missing_statistics(shipped, items, config, device)
        if validating:
            hooks.validating(epoch, len(val_cases))
            scores = validate(shipped, val_cases, config, device)
            record.update({f"val_{k}": v for k, v in scores.items()}, val_mean_dice=mean_dice(scores))
            for sequence in config.input_policy.optional:
                variant = with_statistics(shipped, norms[sequence]) if sequence in norms else shipped
                without = validate(variant, val_cases, config, device, without=sequence)
                record.update({without_key(sequence, r): without[f"dice_{r}"] for r in REGIONS})
        record["elapsed_s"] = elapsed_before + time.perf_counter() - started
        history.append(record)
        log.info(
            "epoch %d step %d/%d loss %.4f (%.0f s)%s",
            epoch,
            step,
            total_steps,
            record["loss"],
            time.perf_counter() - epoch_started,
            "".join(f" {k[4:]} {v:.3f}" for k, v in record.items() if k.startswith("val_dice")),
        )
        improved = "val_mean_dice" in record and record["val_mean_dice"] > best["val_mean_dice"]
        if improved or (not val_cases and last):
            best = {k: v for k, v in record.items() if k in ("epoch", "step") or k.startswith("val_")}
            info = {
                **training_info,
                "steps": step,
                "epochs": epoch,
                "duration_s": round(record["elapsed_s"], 1),
            }
            metrics = {"validation": validation_metrics(best, config)}
            manifest = manifest_for(config, {**info, "best": best}, metrics, _save_norms(out_dir, norms))
            save_package(out_dir, manifest, _cpu_state(shipped))
        _write_history(out_dir, history)
        state = {
            "config": config.to_json(),
            "network": network.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "average": average.state_dict() if average is not None else None,
            "step": step,
            "epoch": epoch,
            "history": history,
            "best": best,
            "init_from": init_info,
        }
        torch.save(state, out_dir / f"{CHECKPOINT}.tmp")
        (out_dir / f"{CHECKPOINT}.tmp").replace(out_dir / CHECKPOINT)
        hooks.epoch_done(record)

    duration = elapsed_before + time.perf_counter() - started
    # The weights are the best epoch's; the manifest describes the whole run.
    info = {**training_info, "steps": step, "epochs": epoch, "duration_s": round(duration, 1), "best": best}
    metrics = {"validation": validation_metrics(best, config)}
    if not (out_dir / WEIGHTS).is_file():  # no validation score was ever finite: keep the last weights
        save_package(
            out_dir, manifest_for(config, info, metrics, _save_norms(out_dir, norms)), _cpu_state(shipped)
        )
    weights = torch.load(out_dir / WEIGHTS, map_location="cpu", weights_only=True)
    saved_norms = NORMS if (out_dir / NORMS).is_file() else None  # the best epoch's
    save_package(out_dir, manifest_for(config, info, metrics, saved_norms), weights)
    log.info("training done: %d steps, %d epochs, %.0f s; package %s", step, epoch, duration, out_dir)
    return TrainResult(out_dir, step, epoch, best, history, duration)
