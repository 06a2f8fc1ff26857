"""Score one series against each BraTS modality, or reject it, from its DICOM metadata (pure).

For a series that passes the reject checks (Modality, the ``reject`` rules, ``min_instances``), the
score of modality *m* is the sum of three parts, each written to ``ModalityScore.evidence``:

* name: the largest positive weight among *m*'s ``name_patterns`` that match, plus every negative
  weight that matches, plus the global ``name_adjustments`` (synonyms do not add up; contradictions do);
* physics: the weight of the best physics profile of *m* that TR/TE/TI fit. A profile whose
  constrained values are partly unknown scores ``weight × known/constrained``. When TR, TE or TI is
  known and no profile is compatible, ``physics_mismatch_weight`` (a penalty) is used instead; when
  none is known, 0;
* contrast: *m*'s weight for the series' contrast state (post, pre or unknown; see ``contrast_state``).

Values ≤ 0 in TR/TE/TI are read as absent (some writers store 0 for "not applicable").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from tumorseg.records import SeriesInfo
from tumorseg.sequences import SEQUENCES
from tumorseg.study.rules import ModalityRules, NamePattern, PhysicsProfile, Rules

ContrastState = Literal["post", "pre", "unknown"]

_SEPARATORS = re.compile(r"[_\-]+")
_SPACES = re.compile(r"\s+")


def normalised_name(series: SeriesInfo) -> str:
    """``"<description> | <protocol>"`` in lower case, ``_``/``-`` as spaces (what name patterns see)."""
    parts = [series.series_description, series.protocol_name]
    text = " | ".join(p for p in parts if p.strip())
    return _SPACES.sub(" ", _SEPARATORS.sub(" ", text.lower())).strip()


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None


@dataclass(frozen=True)
class ModalityScore:
    """The score of one modality for one series, with the evidence that made it (for notes/reasons)."""

    modality: str
    score: float
    evidence: tuple[str, ...]
    physics_contradiction: bool


@dataclass(frozen=True)
class SeriesEvaluation:
    """What the rules say about one series: a rejection reason, or a score per modality."""

    series: SeriesInfo
    reject_reason: str | None
    contrast: ContrastState
    scores: dict[str, ModalityScore]

    def best(self) -> ModalityScore | None:
        """The highest-scoring modality (earlier in ``SEQUENCES`` on a tie), ``None`` if rejected."""
        if not self.scores:
            return None
        return max(self.scores.values(), key=lambda s: (s.score, -SEQUENCES.index(s.modality)))


def reject_reason(series: SeriesInfo, rules: Rules) -> str | None:
    """Why the series cannot be any modality (first matching rule), or ``None``."""
    if series.modality.upper() not in {m.upper() for m in rules.accepted_modalities}:
        return f"not an MR series (Modality {series.modality or 'absent'})"
    name = normalised_name(series)
    image_type = tuple(v.upper() for v in series.image_type)
    shown = "\\".join(image_type)
    for rule in rules.reject:
        if any(p.search(name) for p in rule.name_patterns):
            return rule.reason
        if any(token.upper() in image_type for token in rule.image_type_any):
            return f"{rule.reason} (ImageType {shown})"
        for index, tokens in rule.image_type_at.items():
            if index < len(image_type) and image_type[index] in {t.upper() for t in tokens}:
                return f"{rule.reason} (ImageType {shown})"
    if series.slice_count < rules.min_instances:
        return f"too few slices ({series.slice_count}, fewer than {rules.min_instances})"
    return None


def contrast_state(series: SeriesInfo, rules: Rules) -> ContrastState:
    """``pre`` when a pre pattern matches the name (it wins: some scanners copy ContrastBolusAgent into
    every series after the agent is registered); else ``post`` on a post pattern or, with
    ``agent_tag``, a non-empty ContrastBolusAgent; else ``unknown``."""
    name = normalised_name(series)
    if any(p.search(name) for p in rules.contrast.pre_patterns):
        return "pre"
    if rules.contrast.agent_tag and series.contrast_bolus_agent.strip():
        return "post"
    if any(p.search(name) for p in rules.contrast.post_patterns):
        return "post"
    return "unknown"


def _name_part(
    name: str, patterns: list[NamePattern], adjustments: list[NamePattern]
) -> tuple[float, list[str]]:
    # Synonyms ("t1", "mprage") must not add up, so only the strongest positive match counts;
    # every contradiction (a negative weight) and every global adjustment does.
    positive: NamePattern | None = None
    total = 0.0
    evidence: list[str] = []
    for entry in patterns:
        if not entry.pattern.search(name) or (entry.unless is not None and entry.unless.search(name)):
            continue
        if entry.weight > 0:
            if positive is None or entry.weight > positive.weight:
                positive = entry
        else:
            total += entry.weight
            evidence.append(f"name /{entry.pattern.pattern}/ {entry.weight:+g}")
    for entry in adjustments:
        if entry.pattern.search(name) and not (entry.unless is not None and entry.unless.search(name)):
            total += entry.weight
            evidence.append(f"name /{entry.pattern.pattern}/ {entry.weight:+g}")
    if positive is not None:
        total += positive.weight
        evidence.insert(0, f"name /{positive.pattern.pattern}/ {positive.weight:+g}")
    return total, evidence


def _profile_fit(
    profile: PhysicsProfile, tr: float | None, te: float | None, ti: float | None
) -> float | None:
    """Fraction of the profile's constraints that are confirmed; ``None`` when one is violated."""
    constrained = confirmed = 0
    for bounds, value in ((profile.tr, tr), (profile.te, te), (profile.ti, ti)):
        if bounds is None:
            continue
        constrained += 1
        if bounds == "absent":
            if value is not None:
                return None
            confirmed += 1
        elif value is not None:
            if not bounds[0] <= value <= bounds[1]:
                return None
            confirmed += 1
    return confirmed / constrained


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def _physics_part(
    series: SeriesInfo, profiles: list[PhysicsProfile], mismatch: float
) -> tuple[float, str, bool]:
    tr, te = _positive(series.repetition_time), _positive(series.echo_time)
    ti = _positive(series.inversion_time)
    values = f"TR {_fmt(tr)}, TE {_fmt(te)}, TI {_fmt(ti)}"
    if (tr is None and te is None and ti is None) or not profiles:
        return 0.0, "", False
    best: tuple[float, str] | None = None
    for profile in profiles:
        fit = _profile_fit(profile, tr, te, ti)
        if fit is not None and (best is None or profile.weight * fit > best[0]):
            best = (profile.weight * fit, profile.name)
    if best is None:
        return mismatch, f"physics ({values}) fit no profile {mismatch:+g}", True
    return best[0], f"physics ({values}) fit {best[1]!r} {best[0]:+.3g}", False


def score_modality(
    series: SeriesInfo, modality: str, rules: Rules, contrast: ContrastState | None = None
) -> ModalityScore:
    """The score of one modality for a series that passed ``reject_reason``."""
    spec: ModalityRules = rules.modalities[modality]
    state = contrast if contrast is not None else contrast_state(series, rules)
    name_score, evidence = _name_part(normalised_name(series), spec.name_patterns, rules.name_adjustments)
    physics_score, physics_note, contradiction = _physics_part(
        series, spec.physics, rules.physics_mismatch_weight
    )
    contrast_score = getattr(spec.contrast, state)
    if physics_note:
        evidence.append(physics_note)
    if contrast_score:
        evidence.append(f"contrast {state} {contrast_score:+g}")
    total = round(name_score + physics_score + contrast_score, 3)
    return ModalityScore(modality, total, tuple(evidence), contradiction)


def evaluate(series: SeriesInfo, rules: Rules) -> SeriesEvaluation:
    """Reject the series, or score it for every modality."""
    reason = reject_reason(series, rules)
    state = contrast_state(series, rules)
    if reason is not None:
        return SeriesEvaluation(series, reason, state, {})
    scores = {m: score_modality(series, m, rules, state) for m in SEQUENCES}
    return SeriesEvaluation(series, None, state, scores)
