"""One package from two trained ones: a main network for complete studies and a fallback network for
studies that lack an optional sequence (``tumorseg.model.package``, "fallback").

Why two networks: a network trained with modality dropout gives up some accuracy on complete studies
(measured on the phantoms: 0.01-0.02 Dice per region), and complete studies are the common case. With a
fallback, a complete study is segmented exactly as before, and only a study that lacks a sequence meets
the network trained for that.

Input: ``--main`` a package that requires all four sequences, ``--fallback`` a package of the same network
and preprocessing trained to do without some (``inputs.optional``; usually fine-tuned from the main one,
``init_from``). Output: ``--out``, a package with the main manifest, the fallback's ``inputs`` and
``version``, and a ``fallback`` block (the fallback's weights, training and metrics); ``metrics.csv`` and
``curves.png`` of each run, the fallback's as ``fallback_metrics.csv`` and ``fallback_curves.png``, and
the fallback's BatchNorm statistics per missing set (its ``norms``) as ``fallback_norms.pt``.
With ``--require SEQ`` (repeatable) the package requires SEQ although the fallback was trained to do
without it: for a sequence whose absence measured too costly, a study lacking it is refused (422, naming
it) rather than segmented badly; its norms are left out. With ``--serves SEQ`` (repeatable) the fallback
segments only a study lacking one of those; a study lacking only others goes to the main network, each
missing sequence through its substitute (``inputs.substitutes``, T1 <- T1ce: measured better than a
fallback's zero channel on clinical heads). With ``--bias-correction n4`` the studies the fallback
segments have each channel's bias field removed before normalisation (``tumorseg.imaging.bias``). Run as
``python -m tumorseg_training.fallback --main DIR --fallback DIR --out DIR [--require flair] [--serves flair
--serves t2] [--bias-correction n4]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from tumorseg.imaging.bias import METHODS as BIAS_METHODS
from tumorseg.model.package import (
    FALLBACK_NORMS,
    FALLBACK_WEIGHTS,
    MANIFEST,
    WEIGHTS,
    FallbackNetwork,
    norms_keys,
    read_manifest,
    write_manifest,
)
from tumorseg.sequences import ALL_FOUR, SEQUENCES, InputPolicy

RUN_FILES = ("metrics.csv", "curves.png")  # what a training run writes next to its package


def attach_fallback(
    main_dir: Path,
    fallback_dir: Path,
    out_dir: Path,
    require: Sequence[str] = (),
    serves: Sequence[str] = (),
    bias_correction: str | None = None,
) -> Path:
    """Write the combined package to ``out_dir`` (see the module docstring); return it. ``require``: optional
    sequences of the fallback that the package requires all the same; ``serves``: the sequences whose
    absence the fallback serves (default: every optional one), the main network the rest, each through
    its substitute (``inputs.substitutes``); ``bias_correction`` ("n4"): the preprocessing of the studies
    the fallback segments removes each channel's bias field first. Refuses packages that do not fit
    together, saying why."""
    main, fallback = read_manifest(main_dir), read_manifest(fallback_dir)
    problems = []
    unknown = [m for m in [*require, *serves] if m not in fallback.inputs.optional]
    if unknown:
        problems.append(
            f"--require/--serves {unknown}: not optional for the fallback ({list(fallback.inputs.optional)})"
        )
    both = sorted(set(require) & set(serves))
    if both:
        problems.append(f"{both}: required, so the fallback cannot serve a study without it")
    substituted = dict(fallback.inputs.substitutes)
    unserved = [
        m
        for m in fallback.inputs.optional
        if serves and m not in serves and m not in require and m not in substituted
    ]
    if unserved:
        problems.append(
            f"{unserved}: neither served by the fallback nor given a substitute in its inputs, so the main "
            "network (trained on complete studies) would see a zero channel"
        )
    if main.inputs != ALL_FOUR or main.fallback is not None:
        problems.append(f"the main package {main_dir} must require all four sequences and have no fallback")
    if fallback.inputs == ALL_FOUR or fallback.fallback is not None:
        problems.append(
            f"the fallback package {fallback_dir} must have optional inputs and no fallback itself"
        )
    shared = (
        "name",
        "architecture",
        "architecture_args",
        "preprocessing",
        "inference",
        "threshold",
        "min_enhancing_ml",
    )
    for what in shared:
        if getattr(main, what) != getattr(fallback, what):
            problems.append(f"{what} differs: {getattr(main, what)!r} / {getattr(fallback, what)!r}")
    if fallback.version == main.version:
        # a stored SEG names the model version: the combined package must not pass for the main one
        problems.append(f"the fallback's version {fallback.version} is the main package's: give it its own")
    source = fallback.training.get("init_from") or {}
    if source and (source.get("name"), source.get("version")) != (main.name, main.version):
        problems.append(
            f"the fallback was fine-tuned from {source.get('name')} {source.get('version')}, "
            f"not from the main package ({main.name} {main.version})"
        )
    if out_dir.resolve() in (main_dir.resolve(), fallback_dir.resolve()):
        problems.append(f"--out {out_dir} must be a folder of its own")
    if problems:
        raise ValueError("cannot combine the packages: " + "; ".join(problems))
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (
        MANIFEST,
        WEIGHTS,
        FALLBACK_WEIGHTS,
        FALLBACK_NORMS,
        *RUN_FILES,
        *(f"fallback_{n}" for n in RUN_FILES),
    ):
        (out_dir / stale).unlink(missing_ok=True)
    shutil.copyfile(main_dir / main.weights, out_dir / WEIGHTS)
    shutil.copyfile(fallback_dir / fallback.weights, out_dir / FALLBACK_WEIGHTS)
    inputs = InputPolicy(
        required=tuple(m for m in SEQUENCES if m in fallback.inputs.required or m in require),
        optional=tuple(m for m in fallback.inputs.optional if m not in require),
        any_of=tuple(g for g in fallback.inputs.any_of if not set(g) & set(require)),  # met by a required one
        substitutes=tuple((m, s) for m, s in fallback.inputs.substitutes if m not in require),
    )
    if fallback.norms:
        channels = main.preprocessing.channels
        kept = {
            key: lacking
            for key, lacking in norms_keys(channels, inputs).items()
            if not serves or set(lacking) & set(serves)  # the sets the fallback segments
        }
        statistics = torch.load(fallback_dir / fallback.norms, map_location="cpu", weights_only=True)
        torch.save({k: v for k, v in statistics.items() if k in kept}, out_dir / FALLBACK_NORMS)
    for name in RUN_FILES:
        for source, target in (
            (main_dir / name, out_dir / name),
            (fallback_dir / name, out_dir / f"fallback_{name}"),
        ):
            if source.is_file():
                shutil.copyfile(source, target)
    combined = dataclasses.replace(
        main,
        version=fallback.version,
        weights=WEIGHTS,
        inputs=inputs,
        fallback=FallbackNetwork(
            FALLBACK_WEIGHTS,
            fallback.training,
            fallback.metrics,
            FALLBACK_NORMS if fallback.norms else None,
            serves=tuple(m for m in SEQUENCES if m in serves),
            bias_correction=bias_correction if bias_correction not in (None, "none") else None,
        ),
        # the held-out and clinical figures of the combined package are measured again (``tumorseg evaluate
        # --record``, ``clinical_accuracy.py`` with ACC_RECORD)
        metrics={k: v for k, v in main.metrics.items() if not k.startswith(("heldout", "clinical"))},
    )
    return write_manifest(out_dir, combined)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--main", type=Path, required=True, help="package for complete studies")
    parser.add_argument(
        "--fallback", type=Path, required=True, help="package for studies that lack a sequence"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder of the combined package")
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        choices=SEQUENCES,
        help="a sequence the fallback may do without that the package requires all the same (repeatable)",
    )
    parser.add_argument(
        "--serves",
        action="append",
        default=[],
        choices=SEQUENCES,
        help="a sequence whose absence the fallback serves (repeatable; default: every optional one); the "
        "main network segments a study lacking only others, through their substitutes",
    )
    parser.add_argument(
        "--bias-correction",
        choices=BIAS_METHODS,
        default="none",
        help="n4: remove each channel's bias field before normalisation in the studies the fallback segments",
    )
    args = parser.parse_args(argv)
    try:
        out = attach_fallback(
            args.main, args.fallback, args.out, args.require, args.serves, args.bias_correction
        )
        sys.stdout.write(f"{out}\n")
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


if __name__ == "__main__":
    main()
