"""Rich output for ``tumorseg train`` / ``tumorseg evaluate``: progress bars and the evaluation table (UI
only; the library modules log and never print)."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tumorseg_training.evaluate import EvaluationReport
from tumorseg_training.metrics import SCORES
from tumorseg_training.train import Callbacks


def new_progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        transient=transient,
    )


class RichCallbacks(Callbacks):
    """Drives a rich ``Progress``: one bar for case preparation, one for optimiser steps."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._prepare: TaskID | None = None
        self._steps: TaskID | None = None

    def prepared(self, done: int, total: int, case_id: str) -> None:
        if self._prepare is None:
            self._prepare = self.progress.add_task("preparing", total=total, status="")
        self.progress.update(self._prepare, completed=done, status=case_id)

    def started(self, total_steps: int, step: int) -> None:
        self._steps = self.progress.add_task("training", total=total_steps, completed=step, status="")

    def step(self, step: int, loss: float, lr: float) -> None:
        if self._steps is not None:
            self.progress.update(self._steps, completed=step, status=f"loss {loss:.3f} lr {lr:.1e}")

    def validating(self, epoch: int, cases: int) -> None:
        if self._steps is not None:
            self.progress.update(self._steps, status=f"validating epoch {epoch} on {cases} case(s)")


def report_table(report: EvaluationReport) -> Table:
    """Per-case and mean ± sd Dice/HD95 (mm) of an evaluation, one row per case."""
    table = Table(
        title=f"{report.model} on {len(report.cases)} case(s) of {report.data_dir} ({report.reference} lattice)"
    )
    table.add_column("case")
    for name in SCORES:
        table.add_column(name.replace("_", " ").upper(), justify="right")
    table.add_column("s", justify="right")
    for case in report.cases:
        table.add_row(
            case.case_id, *(f"{case.scores[n]:.3f}" for n in SCORES), f"{case.seconds['total']:.1f}"
        )
    summary = report.summary
    if summary:
        table.add_row(
            "mean ± sd",
            *(f"{summary[n]['mean']:.3f} ± {summary[n]['sd']:.3f}" for n in SCORES),
            "",
            style="bold",
        )
    return table
