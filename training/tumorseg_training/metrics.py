"""Per-region Dice and HD95 with the BraTS conventions for empty regions.

Inputs are boolean region stacks (3, …) in the order ``tumorseg.labels.REGIONS`` (TC, WT, ET), any
spatial axis order, with ``spacing`` (mm) given in that same axis order. The computation is MONAI's
(``compute_dice`` = ``DiceMetric``, ``compute_hausdorff_distance(percentile=95)`` =
``HausdorffDistanceMetric(percentile=95)``); the empty cases follow the BraTS 2021 evaluation: a region
absent from both truth and prediction scores Dice 1 and HD95 0 mm, a region present in only one of them
scores Dice 0 and HD95 ``EMPTY_HD95_MM`` (the diagonal of the 240 × 240 × 155 mm BraTS box), so a
case without enhancing tumour still counts and a false alarm is penalised.

Score names are ``dice_tc``, ``dice_wt``, ``dice_et``, ``hd95_tc``, ``hd95_wt``, ``hd95_et``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from numpy.typing import NDArray

from tumorseg.labels import REGIONS

EMPTY_HD95_MM = 373.13
SCORES = tuple(f"{kind}_{region}" for kind in ("dice", "hd95") for region in REGIONS)


def region_scores(
    prediction: NDArray[np.bool_], truth: NDArray[np.bool_], spacing: Sequence[float]
) -> dict[str, float]:
    """Dice and HD95 (mm) of each region; see the module docstring for the empty cases."""
    if prediction.shape != truth.shape or prediction.shape[0] != len(REGIONS):
        raise ValueError(f"expected two (3, ...) region stacks, got {prediction.shape} and {truth.shape}")
    scores: dict[str, float] = {}
    for c, region in enumerate(REGIONS):
        has_pred, has_truth = bool(prediction[c].any()), bool(truth[c].any())
        if not has_pred and not has_truth:
            scores[f"dice_{region}"], scores[f"hd95_{region}"] = 1.0, 0.0
            continue
        if not (has_pred and has_truth):
            scores[f"dice_{region}"], scores[f"hd95_{region}"] = 0.0, EMPTY_HD95_MM
            continue
        p = torch.from_numpy(np.ascontiguousarray(prediction[c]))[None, None].float()
        t = torch.from_numpy(np.ascontiguousarray(truth[c]))[None, None].float()
        scores[f"dice_{region}"] = float(compute_dice(p, t, include_background=True, ignore_empty=False))
        with warnings.catch_warnings():
            # MONAI passes its own deprecated ``always_return_as_numpy`` argument internally (1.5-1.6).
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            hd = compute_hausdorff_distance(
                p, t, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
            )
        scores[f"hd95_{region}"] = float(hd)
    return {name: scores[name] for name in SCORES}


def mean_dice(scores: Mapping[str, float]) -> float:
    return float(np.mean([scores[f"dice_{r}"] for r in REGIONS]))


def summarise(rows: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{score: {"mean", "sd", "median", "min", "max"}}`` over the rows (sd with ddof=0 for one row)."""
    table = list(rows)
    if not table:
        return {}
    out = {}
    for name in SCORES:
        values = np.array([row[name] for row in table], dtype=np.float64)
        out[name] = {
            "mean": float(values.mean()),
            "sd": float(values.std(ddof=1 if len(values) > 1 else 0)),
            "median": float(np.median(values)),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return out
