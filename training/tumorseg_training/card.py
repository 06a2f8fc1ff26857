"""``MODEL_CARD.md`` for a trained package, from its manifest and an evaluation report (real numbers only).

Input: the package folder (``model.json`` with ``training`` and ``metrics``) and the JSON written by
``tumorseg evaluate --json`` on held-out cases; for a package with optional inputs, also the JSON of
``tumorseg evaluate --without SEQ --json`` on the same cases per optional sequence (the "Missing sequences"
table). Output: Markdown (``write_card``). Run as ``python -m tumorseg_training.card --model DIR
--evaluation REPORT.json [--without SEQ=REPORT.json ...] [--timing stage=seconds ...]``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tumorseg.labels import REGIONS
from tumorseg.model.package import MANIFEST
from tumorseg.sequences import InputPolicy

CARD = "MODEL_CARD.md"
INPUT_NOTE = (
    "Input as trained: skull-stripped, co-registered volumes (zero outside the brain), z-scored per channel "
    "over the brain. The service brings clinical studies to that (co-registration, brain extraction); BraTS "
    "data are recognised as already stripped and registered and pass unchanged."
)


def _score_table(summary: Mapping[str, Mapping[str, float]]) -> list[str]:
    lines = [
        "| region | Dice mean ± sd | Dice median (min) | HD95 mm mean ± sd | HD95 median |",
        "|---|---|---|---|---|",
    ]
    for region in REGIONS:
        d, h = summary[f"dice_{region}"], summary[f"hd95_{region}"]
        lines.append(
            f"| {region.upper()} | {d['mean']:.3f} ± {d['sd']:.3f} | {d['median']:.3f} ({d['min']:.3f}) "
            f"| {h['mean']:.2f} ± {h['sd']:.2f} | {h['median']:.2f} |"
        )
    return lines


def _case_table(cases: Sequence[Mapping[str, Any]]) -> list[str]:
    names = [f"{k}_{r}" for k in ("dice", "hd95") for r in REGIONS]
    lines = [
        "| case | " + " | ".join(n.replace("_", " ").upper() for n in names) + " | seconds |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for case in cases:
        values = " | ".join(f"{case['scores'][n]:.3f}" for n in names)
        lines.append(f"| {case['case_id']} | {values} | {case['seconds']['total']:.1f} |")
    return lines


def _missing_table(
    evaluation: Mapping[str, Any],
    without: Mapping[str, Mapping[str, Any]],
    validation: Mapping[str, Any],
    validation_without: Mapping[str, Any],
) -> list[str]:
    """Held-out mean Dice per region with the full input and with each optional sequence missing (and the
    validation's, model grid, where the manifest has it: ``validation`` for the network that segments
    complete studies, ``validation_without`` for the one that segments the others)."""
    lines = [
        "| input | " + " | ".join(f"Dice {r.upper()}" for r in REGIONS) + " | validation Dice TC / WT / ET |",
        "|---|" + "---|" * (len(REGIONS) + 1),
    ]

    def row(name: str, summary: Mapping[str, Any], val: Mapping[str, Any]) -> str:
        held = " | ".join(f"{summary[f'dice_{r}']['mean']:.3f}" for r in REGIONS)
        checked = all(f"dice_{r}" in val for r in REGIONS)
        validated = " / ".join(f"{val[f'dice_{r}']:.3f}" for r in REGIONS) if checked else "-"
        return f"| {name} | {held} | {validated} |"

    lines.append(row("all four", evaluation["summary"], validation))
    for sequence, report in without.items():
        lines.append(
            row(
                f"without {sequence.upper()}",
                report["summary"],
                validation_without.get(f"without_{sequence}", {}),
            )
        )
    return lines


def _clinical_section(clinical: Mapping[str, Any]) -> list[str]:
    """The clinical-head figures ``scripts/clinical_accuracy.py`` recorded in the manifest (``ACC_RECORD``):
    mean Dice per region with all four sequences and with each one missing, T1ce as the reference."""
    summary = clinical["missing_sequences"]
    lines = [
        "### Clinical-head phantoms",
        "",
        f"{clinical['description']} Mean Dice over seeds {', '.join(str(s) for s in clinical['seeds'])}, "
        "T1ce as the reference, each study through `POST /segment` (change against all four in brackets):",
        "",
        "| input | " + " | ".join(f"Dice {r.upper()}" for r in ("wt", "tc", "et")) + " |",
        "|---|---|---|---|",
    ]
    for name, means in summary.items():
        cells = [
            f"{means[r]:.3f}" + (f" ({means[f'{r}_change']:+.3f})" if f"{r}_change" in means else "")
            for r in ("wt", "tc", "et")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _fallback_section(fallback: Mapping[str, Any]) -> list[str]:
    """What the card says about the package's fallback network (``tumorseg_training.fallback``)."""
    training = fallback["training"]
    recipe, source = training["recipe"], training.get("init_from")
    validation = fallback["metrics"].get("validation", {})
    return [
        "## Fallback network",
        "",
        "A study with all four sequences is segmented by the network described above. A study that lacks "
        + (
            f"{_either(fallback['serves'])} (whatever else it lacks; a study lacking only another optional "
            "sequence goes to the network above, with its substitute in its place)"
            if fallback.get("serves")
            else "an optional sequence"
        )
        + f" is segmented by a second network (`{fallback['weights']}`, same architecture "
        "and preprocessing) trained for that: "
        + _dropout_text(recipe["modality_dropout"])
        + (" (one draw per batch)" if recipe.get("dropout_per_batch") else "")
        + (
            f", each channel thick-sliced with probability {recipe['thick_slices_prob']:g} (slabs of "
            f"{recipe['thick_slices_vox'][0]:g}-{recipe['thick_slices_vox'][1]:g} voxels along a random axis)"
            if recipe.get("thick_slices_prob")
            else ""
        )
        + (
            f", each channel biased with probability {recipe['bias_field_prob']:g} (a smooth field of peak "
            f"{recipe['bias_field_max']:g}, as it acts before z-scoring)"
            if recipe.get("bias_field_prob")
            else ""
        )
        + (
            f", fine-tuned from `{source['path']}` ({source.get('name', '?')} {source.get('version', '?')})"
            if source
            else ""
        )
        + f"; {training['steps']} steps, {training['epochs']} epochs, AdamW lr {recipe['lr']}, best checkpoint "
        f"by validation at epoch {training['best'].get('epoch')}, trained on {training['device']} in "
        f"{training['duration_s'] / 60:.1f} min. Its curves: `fallback_curves.png`, `fallback_metrics.csv`."
        + (
            f" It runs with the BatchNorm statistics measured with exactly the study's sequences missing "
            f"(`{fallback['norms']}`, `tumorseg_training.norms`)."
            if fallback.get("norms")
            else ""
        ),
        *(
            [
                "",
                "Its validation with each optional sequence missing: "
                + "; ".join(
                    f"without {key.removeprefix('without_').upper()} "
                    + ", ".join(f"{r.upper()} {value[f'dice_{r}']:.3f}" for r in REGIONS)
                    for key, value in validation.items()
                    if key.startswith("without_") and isinstance(value, Mapping)
                )
                + ".",
            ]
            if any(k.startswith("without_") for k in validation)
            else []
        ),
        "",
    ]


def _either(sequences: Sequence[str]) -> str:
    """``FLAIR, T1 or T2``."""
    names = [m.upper() if m != "t1ce" else "T1ce" for m in sequences]
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _dropout_text(dropout: float | Mapping[str, float]) -> str:
    if isinstance(dropout, Mapping):
        rates = ", ".join(f"{m.upper()} {p:g}" for m, p in dropout.items())
        return f"modality dropout per sequence (a zero channel, or its substitute's) {rates or 'none'}"
    return f"modality dropout p = {dropout}"


def _misses(cases: Sequence[Mapping[str, Any]], below: float = 0.5) -> list[str]:
    """One Limitations line naming the held-out cases with a region's Dice under ``below``, if any."""
    found = [
        f"{region.upper()} {case['case_id']} {case['scores'][f'dice_{region}']:.3f}"
        for region in REGIONS
        for case in cases
        if case["scores"][f"dice_{region}"] < below
    ]
    if not found:
        return []
    return [
        f"- Held-out misses (Dice < {below}): {', '.join(found)}. A region the truth lacks but the model "
        "marks, even with a few voxels, scores 0 by the BraTS rules."
    ]


def render_card(
    manifest: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    timing: Mapping[str, float],
    without: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """``without``: ``tumorseg evaluate --without SEQ`` reports on the held-out cases, by sequence."""
    training, recipe = manifest["training"], manifest["training"]["recipe"]
    inputs = InputPolicy.from_json(manifest.get("inputs"))
    source = training.get("init_from")
    net = manifest["architecture"]["args"]
    data = training["data"]
    seconds = evaluation["seconds_per_case"]
    heldout = manifest.get("metrics", {}).get("heldout", {})
    validation = manifest.get("metrics", {}).get("validation", {})
    fallback = manifest.get("fallback")
    validation_without = fallback["metrics"].get("validation", {}) if fallback else validation
    timing_text = ", ".join(f"{k} {v / 60:.1f} min" for k, v in timing.items())
    n_cases = len(evaluation["cases"])
    lines = [
        f"# Model card: {manifest['name']} {manifest['version']}",
        "",
        "> **Not for clinical use.** This model was trained only on synthetic phantoms "
        "(`tumorseg phantom`), never on patient images. It exists so that the tumorseg service, its demo and "
        "its tests run end to end; its outputs on real MR studies mean nothing.",
        "",
        "## What it does",
        "",
        "Input: FLAIR, T1, T1ce, T2 of one study, resampled onto a 1 mm axis-aligned LPS grid, cropped to "
        "the head and z-scored per channel over non-zero voxels (`tumorseg.imaging.preprocess.prepare`, "
        f"channel order {manifest['preprocessing']['channels']})"
        + (
            f"; it needs {inputs.describe()}, and a missing {_either(inputs.optional)} is fed as a channel "
            "of zeros, as modality dropout showed it in training"
            + "".join(
                f", except {m.upper()}, whose channel then holds {_either([s])}'s"
                for m, s in inputs.substitutes
            )
            + (" (to the fallback network, see below)" if fallback else "")
            if inputs.optional
            else ""
        )
        + ". Output: sigmoid probabilities of the "
        "BraTS regions TC, WT, ET, thresholded at "
        f"{manifest['output']['threshold']} and nested into BraTS 2021 labels (1 NCR, 2 ED, 4 ET) on the "
        "reference series' own lattice.",
        "",
        "## Training data",
        "",
        f"- {data.get('description') or data['folder']}",
        f"- {data['cases_train']} cases for training, {data['cases_validation']} for validation "
        f"(model selection): {', '.join(data['validation_case_ids']) or '-'}",
        f"- {INPUT_NOTE}",
        "",
        "## Recipe",
        "",
        f"- Network: MONAI `UNet`, channels {net['channels']}, strides {net['strides']}, "
        f"{net['num_res_units']} residual unit(s) per level, {net['norm']} norm, "
        f"{training['parameters'] / 1e6:.2f} M parameters.",
        f"- Samples: random {recipe['crop_size']} crops, {recipe['batch_size']} per step "
        f"({recipe['samples_per_case']} per case), centres drawn per label with ratios "
        f"background/NCR/ED/ET = {recipe['class_ratios']}; flips on every axis (p = {recipe['flip_prob']}), "
        f"per-channel intensity scale ±{recipe['intensity_scale']} and shift ±{recipe['intensity_shift']}, "
        + _dropout_text(recipe["modality_dropout"])
        + (
            f", label-1 core contrast against the brain around it scaled per channel by a factor in "
            f"[{1 - recipe['core_contrast']:g}, {1 + recipe['core_contrast']:g}] "
            f"(p = {recipe.get('core_contrast_prob', 0.5)})"
            if recipe.get("core_contrast")
            else ""
        )
        + f"; cases without enhancing tumour visited {recipe.get('repeat_without_et', 1)}× per epoch.",
        f"- Loss: {recipe['loss']} on the sigmoid outputs; AdamW lr {recipe['lr']}, weight decay "
        f"{recipe['weight_decay']}, {recipe['warmup_steps']} warm-up steps then cosine decay.",
        *(
            [f"- Shipped weights: exponential moving average of the weights (decay {recipe['ema_decay']})."]
            if recipe.get("ema_decay")
            else []
        ),
        *(
            [
                f"- Fine-tuned from `{source['path']}` ({source.get('name', '?')} {source.get('version', '?')}): "
                "its weights started the run."
            ]
            if source
            else []
        ),
        f"- Length: {training['steps']} steps, {training['epochs']} epochs, seed {recipe['seed']}; best "
        f"checkpoint by validation mean Dice at epoch {training['best'].get('epoch')}.",
        *(
            [
                f"- BatchNorm statistics re-estimated over {recipe['bn_batches']} training batches before "
                "each validation and at the end (inference uses exactly these)."
            ]
            if str(net["norm"]).upper() == "BATCH"
            else []
        ),
        f"- Inference: sliding windows of up to {manifest['inference']['roi_size']} voxels, never larger than "
        "the crop (a crop within that size is one window), overlap "
        f"{manifest['inference']['overlap']}, Gaussian blending"
        + (
            f"; an enhancing region under {manifest['output']['min_enhancing_ml']:g} mL in all becomes "
            "necrotic core (BraTS post-processing)."
            if manifest["output"].get("min_enhancing_ml")
            else "."
        ),
        f"- Trained on {training['device']} in {training['duration_s'] / 60:.1f} min"
        + (f" (whole `make train-demo`: {timing_text})" if timing_text and "fallback" not in manifest else "")
        + "."
        + (
            f" The `make train-demo` run that made this package trained its fallback network: {timing_text}."
            if timing_text and "fallback" in manifest
            else ""
        ),
        "",
        f"## Held-out evaluation ({n_cases} phantoms)",
        "",
        f"{heldout.get('description') or 'Held-out cases'}. Scored as the service delivers: prepare → "
        "predict → mask on the original lattice of each case's "
        f"{evaluation['reference']} → compared with its seg. HD95 in mm; a region absent from both truth and "
        "prediction counts as Dice 1 / HD95 0, absent from only one as Dice 0 / HD95 373.13 (BraTS rules).",
        "",
        *_score_table(evaluation["summary"]),
        "",
        f"Time per case on {evaluation['device']}"
        + (f" ({evaluation['cpu_threads']} threads)" if evaluation.get("cpu_threads") else "")
        + f": prepare {seconds['prepare']:.1f} s, predict "
        f"{seconds['predict']:.1f} s, mask {seconds['postprocess']:.1f} s, total {seconds['total']:.1f} s "
        "(mean over the held-out cases).",
        "",
        "<details><summary>Per case</summary>",
        "",
        *_case_table(evaluation["cases"]),
        "",
        "</details>",
        "",
    ]
    if inputs.optional and without:
        lines += [
            "### Missing sequences",
            "",
            "Held-out mean Dice with each optional sequence missing in turn (left out, so fed as the "
            "service feeds a study that lacks it: a zero channel, or its substitute's; scored on the original "
            "lattice of "
            f"each case's {evaluation['reference']}"
            + "".join(
                f", of its {r['reference']} without {m.upper()}"
                for m, r in without.items()
                if r["reference"] != evaluation["reference"]
            )
            + "), and the validation's on the model grid at the chosen epoch:",
            "",
            *_missing_table(evaluation, without, validation, validation_without),
            "",
        ]
    if "clinical_heads" in manifest.get("metrics", {}):
        lines += _clinical_section(manifest["metrics"]["clinical_heads"])
    if fallback:
        lines += _fallback_section(fallback)
    if validation:
        lines += [
            "Validation on the model grid at the chosen epoch (no post-processing): "
            + ", ".join(f"Dice {r.upper()} {validation[f'dice_{r}']:.3f}" for r in REGIONS)
            + ".",
            "",
        ]
    lines += [
        "Curves: `curves.png` (training loss and validation Dice per epoch); numbers: `metrics.csv`.",
        "",
        "## Limitations",
        "",
        "- Phantoms are simpler than patients: no scanner artefacts beyond bias and noise, no post-operative "
        "cavities, no real anatomy variation. Scores here say nothing about BraTS or clinical data.",
        (
            f"- Output quality depends on co-registered sequences; without {inputs.describe()} a study is "
            "refused upstream, and without an optional sequence expect the lower scores above. A mislabelled "
            "sequence is not detected here."
            if inputs.optional
            else "- Output quality depends on four co-registered sequences; a missing or mislabelled one is "
            "refused upstream, not handled here."
        ),
        *_misses(evaluation["cases"]),
        "",
        "## Training on BraTS 2021",
        "",
        "Download the BraTS 2021 training data (Synapse, RSNA-ASNR-MICCAI BraTS 2021) and unpack it so that "
        "each case is `<dir>/BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz`; then",
        "",
        "```bash",
        ".venv/bin/tumorseg train --data /data/BraTS2021 --out models/brats2021 --cache /data/brats-cache \\",
        "    --config training/recipes/brats2021.json --device cuda",
        ".venv/bin/tumorseg evaluate --model models/brats2021 --data /data/BraTS2021-holdout",
        "TUMORSEG_MODEL_PATH=models/brats2021 .venv/bin/tumorseg serve",
        "```",
        "",
        "See `training/README.md` for the recipe keys.",
        "",
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items()),
        "",
    ]
    return "\n".join(lines)


def write_card(
    model_dir: Path,
    evaluation: Mapping[str, Any],
    timing: Mapping[str, float] | None = None,
    without: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    manifest = json.loads((model_dir / MANIFEST).read_text())
    path = model_dir / CARD
    path.write_text(render_card(manifest, evaluation, timing or {}, without))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="package folder")
    parser.add_argument("--evaluation", type=Path, required=True, help="JSON of `tumorseg evaluate --json`")
    parser.add_argument(
        "--without",
        nargs="*",
        default=[],
        help="SEQ=REPORT.json pairs: `tumorseg evaluate --without SEQ --json` on the same cases",
    )
    parser.add_argument("--timing", nargs="*", default=[], help="stage=seconds pairs of the whole run")
    args = parser.parse_args(argv)
    timing = {k: float(v) for k, v in (item.split("=", 1) for item in args.timing)}
    without = {k: json.loads(Path(v).read_text()) for k, v in (item.split("=", 1) for item in args.without)}
    write_card(args.model, json.loads(args.evaluation.read_text()), timing, without)


if __name__ == "__main__":
    main()
