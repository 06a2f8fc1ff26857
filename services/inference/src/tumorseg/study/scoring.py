"""Score one series against each BraTS modality, or reject it, from its DICOM metadata (pure).

For a series that passes the reject checks (Modality, the ``reject`` rules, ``min_instances``), the
score of modality *m* is the sum of three parts, each written to ``ModalityScore.evidence``:

* name: the largest positive weight among *m*'s ``name_patterns`` that match, plus every negative
  weight that matches, plus the global ``name_adjustments`` (synonyms do not add up; contradictions do);
* physics: the weight of the best physics profile of *m* that TR/TE/TI fit. A profile whose
  constrained values are partly unknown scores ``weight × known/constrained``. When TR, TE or TI is
  known and no profile is compatible, ``physics_mismatch_weight`` (a penalty) is used instead; when
  none is known, 0;
* contrast: *m*'s weight for the series' contrast state (post, pre or unknown; see ``contrast_reading``,
  or the study-level reading of ``tumorseg.study.evidence`` that the mapping passes in).

Name patterns read the name without what tools add to it (``tool_markers``: a converter's
" (enhanced conversion)", copy and reformat markers), so those words are never evidence; the reject rules
read the whole name.

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


def evidence_name(series: SeriesInfo, rules: Rules) -> str:
    """``normalised_name`` without the ``tool_markers`` (what modality and contrast patterns read)."""
    name = normalised_name(series)
    for marker in rules.tool_markers:
        name = marker.sub(" ", name)
    return _SPACES.sub(" ", name).strip()


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None


@dataclass(frozen=True)
class ModalityScore:
    """The score of one modality for one series, with the evidence that made it (for notes/reasons)."""

    modality: str
    score: float
    evidence: tuple[str, ...]
    physics_contradiction: bool
    contrast_part: float = 0.0  # the contrast weight inside ``score`` (what the score is without it)

    @property
    def fit_without_contrast(self) -> float:
        """Name and physics alone: whether the series is this modality's kind, pre or post."""
        return round(self.score - self.contrast_part, 3)


@dataclass(frozen=True)
class ContrastCall:
    """A series' contrast state and the evidence for it, in words (for notes and reasons)."""

    state: ContrastState
    because: str = ""

    def describe(self) -> str:
        return f"{self.state} ({self.because})" if self.because else self.state


@dataclass(frozen=True)
class SeriesEvaluation:
    """What the rules say about one series: a rejection reason, or a score per modality."""

    series: SeriesInfo
    reject_reason: str | None
    contrast: ContrastState
    scores: dict[str, ModalityScore]
    contrast_call: ContrastCall = ContrastCall("unknown")

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


def name_contrast(series: SeriesInfo, rules: Rules) -> ContrastCall:
    """What the name alone says: ``pre`` on a pre pattern (checked first: "non contrast" also holds a
    post word), else ``post`` on a post pattern, else ``unknown``."""
    name = evidence_name(series, rules)
    for state, patterns in (("pre", rules.contrast.pre_patterns), ("post", rules.contrast.post_patterns)):
        hit = next((p for p in patterns if p.search(name)), None)
        if hit is not None:
            return ContrastCall(state, f"name /{hit.pattern}/")  # type: ignore[arg-type]
    return ContrastCall("unknown")


def agent_of(series: SeriesInfo, rules: Rules) -> str:
    """The contrast agent the series names ("" when none, or when ``agent_tag`` is off)."""
    return series.contrast_bolus_agent.strip() if rules.contrast.agent_tag else ""


def contrast_reading(series: SeriesInfo, rules: Rules) -> ContrastCall:
    """One series on its own: ``pre`` when a pre pattern matches the name (it wins: some scanners copy
    ContrastBolusAgent into every series after the agent is registered); else ``post`` on a non-empty
    ContrastBolusAgent (with ``agent_tag``) or a post pattern; else ``unknown``."""
    named = name_contrast(series, rules)
    if named.state == "pre":
        return named
    agent = agent_of(series, rules)
    if agent:
        return ContrastCall("post", f"ContrastBolusAgent {agent!r}")
    return named


def contrast_state(series: SeriesInfo, rules: Rules) -> ContrastState:
    """``contrast_reading``'s state."""
    return contrast_reading(series, rules).state


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
    series: SeriesInfo, modality: str, rules: Rules, contrast: ContrastCall | None = None
) -> ModalityScore:
    """The score of one modality for a series that passed ``reject_reason``."""
    spec: ModalityRules = rules.modalities[modality]
    call = contrast if contrast is not None else contrast_reading(series, rules)
    state = call.state
    name_score, evidence = _name_part(
        evidence_name(series, rules), spec.name_patterns, rules.name_adjustments
    )
    physics_score, physics_note, contradiction = _physics_part(
        series, spec.physics, rules.physics_mismatch_weight
    )
    contrast_score = getattr(spec.contrast, state)
    if physics_note:
        evidence.append(physics_note)
    if contrast_score:
        evidence.append(f"contrast {call.describe()} {contrast_score:+g}")
    total = round(name_score + physics_score + contrast_score, 3)
    return ModalityScore(modality, total, tuple(evidence), contradiction, contrast_score)


def evaluate(series: SeriesInfo, rules: Rules, contrast: ContrastCall | None = None) -> SeriesEvaluation:
    """Reject the series, or score it for every modality; ``contrast``: the study-level reading of its
    contrast state (``tumorseg.study.evidence``), else its own (``contrast_reading``)."""
    reason = reject_reason(series, rules)
    call = contrast if contrast is not None else contrast_reading(series, rules)
    if reason is not None:
        return SeriesEvaluation(series, reason, call.state, {}, call)
    scores = {m: score_modality(series, m, rules, call) for m in SEQUENCES}
    return SeriesEvaluation(series, None, call.state, scores, call)
