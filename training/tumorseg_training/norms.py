"""BatchNorm statistics per set of missing sequences, for the network that serves studies lacking one
(``tumorseg.model.package``, "norms").

Why: a BatchNorm layer normalises with the running statistics of its training inputs. Training
recalibrates them on complete crops (``optim.recalibrate_batch_norm``); a zero channel shifts every
layer's activations away from them, and no single set fits complete and incomplete inputs at once.
Measured on the fallback network of the first missing-sequence run: held-out phantom WT Dice without T1,
0.36 / 0.62 / 0.52 → 0.66 / 0.82 / 0.84 on three cases, with statistics taken without T1 instead of on
complete crops.

``missing_statistics`` recalibrates a copy of the network once per set the package's inputs let a study
lack (``InputPolicy.missing_sets``), on crops made like the training batches with exactly those channels
zero, and returns the BatchNorm buffers keyed by ``tumorseg.model.package.missing_key``. Training calls
it at every validation (the scores without a sequence use them) and stores the set of its best epoch next
to the weights. For a package trained before: ``python -m tumorseg_training.norms --package DIR --data
DIR [--cache DIR]`` measures them on the package's training split (its recipe's crops, seed and split)
and adds them to the package (the fallback network's when it has one).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tumorseg.model.package import (
    BATCH_NORM_BUFFERS,
    FALLBACK_NORMS,
    NORMS,
    load_package,
    norms_keys,
    write_manifest,
)
from tumorseg_training.config import TrainConfig
from tumorseg_training.data import find_cases, load_prepared, split_cases
from tumorseg_training.optim import recalibrate_batch_norm
from tumorseg_training.transforms import train_transform, training_item

log = logging.getLogger(__name__)

Statistics = dict[str, dict[str, torch.Tensor]]


def missing_statistics(
    network: nn.Module, items: Sequence[dict[str, Any]], config: TrainConfig, device: str
) -> Statistics:
    """``{missing_key: {buffer name: tensor}}`` for each set of sequences ``config``'s inputs let a study
    lack (empty for a network without BatchNorm, or inputs that require all four). ``network`` itself is
    left as it is."""
    channels = config.prep.channels
    statistics: Statistics = {}
    for key, lacking in norms_keys(channels, config.input_policy).items():
        transform = train_transform(
            config.crop_size,
            config.samples_per_case,
            config.class_ratios,
            flip_prob=0.0,
            modality_dropout=dict.fromkeys(lacking, 1.0),
            inputs=config.input_policy,
            channels=channels,
        )
        transform.set_random_state(seed=config.seed)
        variant = copy.deepcopy(network)
        recalibrate_batch_norm(variant, items, transform, config.bn_batches, config.cases_per_step, device)
        buffers = {
            name: tensor.detach().cpu().clone()
            for name, tensor in variant.state_dict().items()
            if name.endswith(BATCH_NORM_BUFFERS)
        }
        if buffers:
            statistics[key] = buffers
    return statistics


def with_statistics(network: nn.Module, buffers: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``network`` (same mode) with these BatchNorm buffers."""
    variant = copy.deepcopy(network)
    device = next(variant.parameters()).device
    variant.load_state_dict({**variant.state_dict(), **{k: v.to(device) for k, v in buffers.items()}})
    return variant


def add_to_package(package_dir: Path, data_dir: Path, cache_dir: Path | None = None) -> Path:
    """Measure the statistics of the package's network for incomplete studies (its fallback's, or the main
    one's) on the training split of ``data_dir`` and add them to the package; returns the norms file."""
    manifest, networks = load_package(package_dir, norms=False)
    fallback = manifest.fallback
    training = fallback.training if fallback is not None else manifest.training
    recipe = training.get("recipe")
    if not recipe:
        raise ValueError(f"{package_dir}: the network has no training recipe to make its crops from")
    config = TrainConfig.from_json(recipe)
    if config.input_policy != manifest.inputs or not manifest.inputs.missing_sets():
        raise ValueError(
            f"{package_dir}: its inputs {manifest.inputs.to_json()} let no study lack a sequence"
        )
    train_files, _ = split_cases(find_cases(data_dir), config.val_fraction, config.seed)
    prepared = load_prepared(train_files, config.prep, config.reference, cache_dir)
    items = [training_item(case, config.crop_size) for case in prepared]
    network = networks["fallback" if fallback is not None else "main"]
    statistics = missing_statistics(network, items, config, "cpu")
    if not statistics:
        raise ValueError(f"{package_dir}: the network has no BatchNorm layer")
    file = FALLBACK_NORMS if fallback is not None else NORMS
    torch.save(statistics, package_dir / file)
    if fallback is not None:
        manifest = dataclasses.replace(manifest, fallback=dataclasses.replace(fallback, norms=file))
    else:
        manifest = dataclasses.replace(manifest, norms=file)
    write_manifest(package_dir, manifest)
    log.info("%s: BatchNorm statistics for %s", package_dir / file, ", ".join(statistics))
    return package_dir / file


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", type=Path, required=True, help="model package to add them to")
    parser.add_argument("--data", type=Path, required=True, help="the data the network was trained on")
    parser.add_argument("--cache", type=Path, default=None, help="cache of prepared cases")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        sys.stdout.write(f"{add_to_package(args.package, args.data, args.cache)}\n")
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


if __name__ == "__main__":
    main()
