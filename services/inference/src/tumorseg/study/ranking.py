"""How candidates for one modality are ranked, and how series are named in notes and messages.

The ranking key is (score, *the ``tie_break`` keys of the rules*), larger is better; the shipped order is
thinner through-plane spacing, then 3D over 2D, then more slices, then smaller pixels. Two candidates
with equal keys are an ambiguity (the caller decides what to do). Values are rounded (spacing to 0.01 mm,
pixel area to 0.001 mm²) so that float noise in the tags cannot break a tie.
"""

from __future__ import annotations

import math

from tumorseg.records import SeriesInfo
from tumorseg.study.rules import Rules
from tumorseg.study.scoring import SeriesEvaluation


def describe(series: SeriesInfo) -> str:
    """``series 5 "AX T2 FLAIR" (UID 1.2.3)``: how messages and notes name a series."""
    number = series.series_number or "?"
    text = series.series_description or series.protocol_name or "no description"
    return f'series {number} "{text}" (UID {series.series_instance_uid})'


def slice_spacing(series: SeriesInfo) -> float | None:
    """Through-plane sampling in mm: the larger of SliceThickness and SpacingBetweenSlices (a gap or
    an overlap must not make a series look finer than it is)."""
    known = [v for v in (series.slice_thickness, series.spacing_between_slices) if v is not None and v > 0]
    return max(known) if known else None


def _pixel_area(series: SeriesInfo) -> float | None:
    if series.pixel_spacing is None or len(series.pixel_spacing) != 2:
        return None
    return series.pixel_spacing[0] * series.pixel_spacing[1]


def quality(series: SeriesInfo, key: str) -> float:
    """One tie-break component, larger is better; unknown values rank last."""
    if key == "slice_spacing":
        spacing = slice_spacing(series)
        return -round(spacing, 2) if spacing is not None else -math.inf
    if key == "acquisition_3d":
        return 1.0 if series.mr_acquisition_type.strip().upper() == "3D" else 0.0
    if key == "instance_count":
        return float(series.slice_count)
    if key == "pixel_area":
        area = _pixel_area(series)
        return -round(area, 3) if area is not None else -math.inf
    raise ValueError(f"unknown tie-break key {key!r}")


def rank(evaluation: SeriesEvaluation, modality: str, rules: Rules) -> tuple[float, ...]:
    """The ranking key of a candidate for ``modality``: (score, *tie-break components)."""
    return (
        evaluation.scores[modality].score,
        *(quality(evaluation.series, key) for key in rules.tie_break),
    )


def why_better(winner: SeriesEvaluation, loser: SeriesEvaluation, modality: str, rules: Rules) -> str:
    """The first component of the ranking on which the winner beat the loser, in words."""
    w_score, l_score = winner.scores[modality].score, loser.scores[modality].score
    if w_score != l_score:
        return f"higher match score {w_score:g} vs {l_score:g}"
    w, lo = winner.series, loser.series
    for key in rules.tie_break:
        if quality(w, key) == quality(lo, key):
            continue
        if key == "slice_spacing":
            return f"thinner slices {_or_unknown(slice_spacing(w))} vs {_or_unknown(slice_spacing(lo))}"
        if key == "acquisition_3d":
            return "3D acquisition over 2D"
        if key == "instance_count":
            return f"more slices {w.slice_count} vs {lo.slice_count}"
        return f"finer pixels {_pixels(w)} vs {_pixels(lo)}"
    return "equal"  # not reached: equal keys are an ambiguity, handled by the caller


def _pixels(series: SeriesInfo) -> str:
    if series.pixel_spacing is None or len(series.pixel_spacing) != 2:
        return "unknown"
    return f"{series.pixel_spacing[0]:g}×{series.pixel_spacing[1]:g} mm"


def _or_unknown(value: float | None) -> str:
    return f"{value:g} mm" if value is not None else "unknown"
