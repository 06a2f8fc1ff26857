"""``tumorseg train`` and ``tumorseg evaluate``: the training package's commands, added to the ``tumorseg``
CLI through the entry point ``tumorseg.cli`` (see ``training/pyproject.toml``), so the service package
never imports training code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tumorseg.errors import TumorsegError

console = Console()
err_console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``evaluate`` to ``app`` (the ``tumorseg`` Typer app)."""
    app.command()(train)
    app.command()(evaluate)


def _training_logs() -> None:
    """Log lines of tumorseg and tumorseg_training through rich, so they interleave with the progress bar."""
    import logging

    from rich.logging import RichHandler

    for name in ("tumorseg", "tumorseg_training"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [RichHandler(console=console, show_path=False)]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def train(
    data: Annotated[
        Path, typer.Option(help="Folder of BraTS-layout cases (<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz).")
    ],
    out: Annotated[
        Path, typer.Option(help="Package folder to write (model.json, model.pt, metrics.csv, ...).")
    ],
    epochs: Annotated[int | None, typer.Option(min=1, help="Passes over the training cases.")] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many optimiser steps.")
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(min=0.0, max=0.9, help="Share of cases held out.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda (default: the recipe's, auto).")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(help="Training recipe: a JSON file or an inline JSON object (TrainConfig keys)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, help="Seed for the split, the network and the crops.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt.")] = False,
    cache: Annotated[
        Path | None, typer.Option(help="Folder for the prepared arrays (.npz), reused by later runs.")
    ] = None,
) -> None:
    """Train a MONAI U-Net on BraTS-layout cases and write a model package."""
    from tumorseg_training.config import TrainConfig
    from tumorseg_training.progress import RichCallbacks, new_progress
    from tumorseg_training.train import train as run_training

    _training_logs()
    try:
        raw = Path(config).read_text() if config and not config.lstrip().startswith("{") else config
        overrides = {
            "epochs": epochs,
            "max_steps": max_steps,
            "val_fraction": val_fraction,
            "seed": seed,
            "device": device,
        }
        recipe = TrainConfig.from_json(
            {
                **(json.loads(raw) if raw else {}),
                **{k: v for k, v in overrides.items() if v is not None},
            }
        )
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]error[/red] {exc}")
        raise typer.Exit(code=2) from exc
    try:
        with new_progress() as progress:
            result = run_training(
                data, out, recipe, resume=resume, cache_dir=cache, callbacks=RichCallbacks(progress)
            )
    except (FileNotFoundError, ValueError, TumorsegError) as exc:
        err_console.print(f"[red]error[/red] {exc}")
        raise typer.Exit(code=1) from exc
    best = ", ".join(f"{k[9:].upper()} {v:.3f}" for k, v in result.best.items() if k.startswith("val_dice_"))
    console.print(
        f"{result.steps} steps, {result.epochs} epochs, {result.duration_s / 60:.1f} min -> {result.package}"
    )
    if best:
        console.print(f"best validation Dice (epoch {result.best.get('epoch')}): {best}")


def evaluate(
    model: Annotated[Path, typer.Option(help="Model package folder (model.json + weights).")],
    data: Annotated[Path, typer.Option(help="Folder of BraTS-layout cases with their seg.")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    reference: Annotated[
        str | None, typer.Option(help="Lattice to score on (default: the package's training reference).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the full report as JSON.")
    ] = None,
    record: Annotated[
        str | None, typer.Option(help="Store the summary in the package manifest under metrics[RECORD].")
    ] = None,
    description: Annotated[str, typer.Option(help="What the cases are (with --record).")] = "",
    without: Annotated[
        str | None,
        typer.Option(
            help="Score with this sequence missing (a zero channel, as the service does); refused when the "
            "package requires it."
        ),
    ] = None,
) -> None:
    """Per-region Dice/HD95 of a package on BraTS-layout cases, scored on each case's original lattice."""
    from tumorseg_training.evaluate import evaluate as run_evaluation
    from tumorseg_training.evaluate import record_in_package
    from tumorseg_training.progress import new_progress, report_table

    _training_logs()
    try:
        with new_progress(transient=True) as progress:
            task = progress.add_task("evaluating", total=None, status="")

            def advance(done: int, total: int, result: Any) -> None:
                progress.update(task, completed=done, total=total, status=result.case_id)

            report = run_evaluation(model, data, device, reference, advance, without=without)
    except (FileNotFoundError, ValueError, TumorsegError) as exc:
        err_console.print(f"[red]error[/red] {exc}")
        raise typer.Exit(code=1) from exc
    # Into a log file, rich would squeeze the table into 80 columns.
    (console if console.is_terminal else Console(width=160, file=console.file)).print(report_table(report))
    console.print("seconds per case: " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()))
    if without:
        console.print(f"scored without {without} (a zero channel), on the {report.reference} lattice")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if record:
        record_in_package(model, report, record, description)
