"""Score a model package on BraTS-layout cases, on each case's ORIGINAL lattice — what the service delivers.

Per case: read the four volumes (SimpleITK, LPS) → ``prepare`` onto the model grid (the manifest's
``Preprocessing``) → ``Predictor.predict`` (sliding window; (3, I, J, K) TC/WT/ET probabilities) →
``Predictor.mask`` onto the reference volume's lattice (the package's threshold, nesting into BraTS labels,
removal of specks, the package's ``min_enhancing_ml``) → compare with the case's ``seg`` on that same
lattice (a seg on another lattice is resampled onto it label-wise first). Scores: ``metrics.region_scores`` (Dice, HD95 in mm, BraTS empty-region rules).
Times per stage are measured too (``seconds``: prepare, predict, postprocess, total).

``without``: score with one sequence missing, as the service segments a study that lacks it (the volume is
left out, so ``prepare`` feeds a channel of zeros); refused when the package requires it. When it is the
reference, the lattice is the package's first required sequence instead (unless ``reference`` is given).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from tumorseg.imaging import grid as g
from tumorseg.imaging.preprocess import prepare
from tumorseg.labels import labels_to_regions
from tumorseg.model.device import resolve_device
from tumorseg.model.package import record_metrics
from tumorseg.model.predictor import Predictor
from tumorseg.sequences import SEQUENCES
from tumorseg_training.data import SEG, CaseFiles, find_cases
from tumorseg_training.metrics import SCORES, region_scores, summarise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    scores: dict[str, float]
    seconds: dict[str, float]


@dataclass
class EvaluationReport:
    model: str
    model_dir: str
    data_dir: str
    device: str
    reference: str
    cases: list[CaseResult] = field(default_factory=list)
    cpu_threads: int = 0  # torch intra-op threads during the evaluation
    without: str | None = None  # the sequence left out, if any

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        return summarise(c.scores for c in self.cases)

    @property
    def seconds(self) -> dict[str, float]:
        """Mean seconds per case for each stage."""
        if not self.cases:
            return {}
        return {k: float(np.mean([c.seconds[k] for c in self.cases])) for k in self.cases[0].seconds}

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_dir": self.model_dir,
            "data_dir": self.data_dir,
            "device": self.device,
            "cpu_threads": self.cpu_threads,
            "reference": self.reference,
            "without": self.without,
            "summary": self.summary,
            "seconds_per_case": self.seconds,
            "cases": [dataclasses.asdict(c) for c in self.cases],
        }


def _same_lattice(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    )


def evaluate_case(
    predictor: Predictor, case: CaseFiles, reference: str, without: str | None = None
) -> CaseResult:
    """Prepare → predict → back onto the reference lattice → scores against the case's seg (``without``:
    that sequence left out)."""
    manifest = predictor.manifest
    start = time.perf_counter()
    volumes = {m: case.volume(m) for m in SEQUENCES if m != without}
    model_input, _ = prepare(volumes, reference, manifest.preprocessing_for(volumes))
    prepared = time.perf_counter()
    probabilities = predictor.predict(model_input)
    predicted = time.perf_counter()
    mask = predictor.mask(probabilities, model_input.grid, volumes[reference])
    done = time.perf_counter()
    truth = case.volume(SEG)
    if not _same_lattice(truth, volumes[reference]):
        truth = g.resample_labels(truth, volumes[reference])
    scores = region_scores(
        labels_to_regions(g.to_array(mask).astype(np.uint8)),
        labels_to_regions(g.to_array(truth).astype(np.uint8)),
        volumes[reference].GetSpacing(),  # (i, j, k) order, as to_array
    )
    seconds = {
        "prepare": prepared - start,
        "predict": predicted - prepared,
        "postprocess": done - predicted,
        "total": done - start,
    }
    return CaseResult(case.case_id, scores, seconds)


def evaluate(
    model_dir: Path,
    data_dir: Path,
    device: str = "auto",
    reference: str | None = None,
    progress: Callable[[int, int, CaseResult], None] | None = None,
    without: str | None = None,
) -> EvaluationReport:
    """Every case under ``data_dir`` (each needs its seg) scored with the package in ``model_dir``.
    ``reference`` defaults to the one the package was trained with (else flair); ``without``: see the
    module docstring."""
    resolved = resolve_device(device)
    predictor = Predictor.from_package(model_dir, resolved)
    recipe = predictor.manifest.training.get("recipe", {})
    ref = reference or str(recipe.get("reference", "flair"))
    if without is not None:
        policy = predictor.manifest.inputs
        if without not in SEQUENCES:
            raise ValueError(f"--without {without}: not a sequence (one of {', '.join(SEQUENCES)})")
        problem = policy.problem(m for m in SEQUENCES if m != without)
        if problem is not None:
            raise ValueError(
                f"--without {without}: the package {predictor.name} needs {policy.describe()} ({problem})"
            )
        if ref == without:
            if reference is not None:
                raise ValueError(f"--without {without}: it cannot be the reference too")
            ref = next(m for m in (*policy.required, *SEQUENCES) if m != without)
    cases = find_cases(data_dir, require_seg=True)
    report = EvaluationReport(
        predictor.name,
        str(model_dir),
        str(data_dir),
        resolved,
        ref,
        cpu_threads=torch.get_num_threads(),
        without=without,
    )
    for n, case in enumerate(cases, start=1):
        result = evaluate_case(predictor, case, ref, without)
        report.cases.append(result)
        log.info(
            "%s: %s (%.1f s)",
            case.case_id,
            " ".join(f"{k} {result.scores[k]:.3f}" for k in SCORES),
            result.seconds["total"],
        )
        if progress is not None:
            progress(n, len(cases), result)
    return report


def record_in_package(model_dir: Path, report: EvaluationReport, key: str, description: str) -> None:
    """Add the report's summary to the package manifest's ``metrics[key]`` (rewrites ``model.json``)."""
    entry = {
        "description": description,
        "cases": len(report.cases),
        "case_ids": [c.case_id for c in report.cases],
        "lattice": f"original lattice of each case's {report.reference}",
        **({"without": report.without} if report.without else {}),
        "device": report.device,
        "seconds_per_case": {k: round(v, 2) for k, v in report.seconds.items()},
        "summary": {k: {s: round(v, 4) for s, v in stats.items()} for k, stats in report.summary.items()},
    }
    record_metrics(model_dir, key, entry)
