"""Map a study's series to the BraTS modalities FLAIR, T1, T1ce and T2 (pure logic).

Contract: ``map_series(series, explicit=None, rules=None)`` returns a ``SeriesMapping`` holding exactly
one series per modality, or raises a ``StudyError``: ``ModalityMissing`` (a modality has no series, the
study has no MR series at all, or an explicit SeriesInstanceUID is not in the study; the message says
which), ``AmbiguousSeries`` (two series fit one modality equally well; the message names both by series
number, description and UID), ``ContrastContradiction`` (two series of one protocol whose contrast agent
tags and names say opposite things, while T1 or T1ce is left to the rules; the message names both series and
both pieces of evidence), ``InvalidInput`` (an explicit mapping with an unknown modality or one UID given
twice). ``propose_mapping`` does the same work without raising, for ``tumorseg inspect`` and for
study choice.

How series are assigned (the rules themselves are data, see ``tumorseg.study.rules``):

1. Explicit UIDs win: each given series is used as is (a note says so, and says if the rules would have
   rejected it); a modality whose explicit UID is not in the study is reported, never guessed.
2. The contrast evidence of the other series is weighed across the study (``tumorseg.study.evidence``:
   twins told apart by an agent on one only, then by names, then by acquisition order; contradictions).
   Every other series is rejected with a reason (not MR, localizer, diffusion, derived, too few slices...)
   or scored for every modality with that contrast reading (``tumorseg.study.scoring``).
3. Greedy assignment, best first: the (series, modality) pair with the highest score at or above
   ``threshold`` decides which modality is filled next; every series at or above the threshold for that
   modality is a candidate, ranked by the **tie-break rule**: higher score, then the ``tie_break`` keys
   of the rules file (shipped: thinner through-plane spacing — the larger of SliceThickness and
   SpacingBetweenSlices —, then 3D over 2D, then more slices, then smaller pixels). The winner is
   assigned and leaves the pool, so no series serves two modalities (a post-contrast T1 scores higher
   as T1ce than as T1, so the pre/post pair splits correctly). A note records each choice between
   candidates ("flair: chose ... over ... (thinner slices 1 mm vs 5 mm)"). Candidates equal on the
   whole key make the modality ambiguous: it stays unfilled and the candidates leave the pool.
4. Every series not used is listed in ``rejected`` with why.
5. Never silent: a modality won by a score margin below ``min_margin`` over the next series, and a
   modality left missing although a series' name and physics fit it (used elsewhere, or ruled out by its
   contrast reading), are named with the series and why in ``warnings`` and in the notes.

A T1 without any contrast evidence is never taken as T1ce (the shipped rules penalise "unknown"), since
guessing wrong silently corrupts the enhancing-tumour label; the user can pass the UID instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tumorseg.errors import InvalidInput
from tumorseg.records import SeriesInfo
from tumorseg.sequences import SEQUENCES
from tumorseg.study.evidence import ContrastConflict, read_contrast
from tumorseg.study.outcome import MappingProposal, SeriesMapping
from tumorseg.study.ranking import describe, rank, why_better
from tumorseg.study.rules import Rules, resolve_rules
from tumorseg.study.scoring import SeriesEvaluation, evaluate, reject_reason

__all__ = ["MappingProposal", "SeriesMapping", "describe", "map_series", "propose_mapping"]

log = logging.getLogger(__name__)


def _checked_explicit(explicit: Mapping[str, str] | None) -> dict[str, str]:
    if not explicit:
        return {}
    cleaned: dict[str, str] = {}
    for key, uid in explicit.items():
        modality = key.strip().lower()
        if modality not in SEQUENCES:
            raise InvalidInput(f"unknown modality {key!r} in the explicit series; use {', '.join(SEQUENCES)}")
        if not uid or not uid.strip():
            raise InvalidInput(f"the explicit SeriesInstanceUID for {modality} is empty")
        cleaned[modality] = uid.strip()
    twice = [uid for uid, n in Counter(cleaned.values()).items() if n > 1]
    if twice:
        raise InvalidInput(
            f"SeriesInstanceUID {twice[0]} is given for two modalities; one series is one modality"
        )
    return cleaned


def propose_mapping(
    series: Sequence[SeriesInfo],
    *,
    explicit: Mapping[str, str] | None = None,
    rules: Rules | Path | None = None,
    study_instance_uid: str | None = None,
) -> MappingProposal:
    """Assign series to modalities as far as the rules allow (see the module docstring); never raises
    a ``StudyError``. ``explicit`` maps modality → SeriesInstanceUID and overrides the rules."""
    rules = resolve_rules(rules)
    draft = _Draft(rules)
    explicit_missing = _take_explicit(draft, series, _checked_explicit(explicit))
    used = {s.series_instance_uid for s in draft.chosen.values()}
    rest = [s for s in series if s.series_instance_uid not in used]
    contrast = read_contrast(rest, rules)
    open_modalities = [m for m in SEQUENCES if m not in draft.chosen and m not in explicit_missing]
    # A contradiction matters while T1 or T1ce is left to the rules; pinning them settles it.
    conflicts = contrast.conflicts if {"t1", "t1ce"} & set(open_modalities) else []
    excluded = {s.series_instance_uid for c in conflicts for s in (c.post, c.pre)}
    draft.notes.extend(contrast.notes)
    draft.warnings.extend(contrast.warnings)
    evaluations = [evaluate(s, rules, contrast.calls.get(s.series_instance_uid)) for s in rest]
    pool = _assign(draft, _initial_pool(draft, evaluations, excluded), open_modalities)
    missing = tuple(
        m
        for m in SEQUENCES
        if m not in draft.chosen and m not in draft.ambiguous and m not in explicit_missing
    )
    _explain_unfit(draft, pool)
    near_misses = _near_misses(missing, evaluations, draft)
    for m in missing:
        for text in _passed_over(m, evaluations, draft.used_as(), draft.ambiguous, excluded, rules.threshold):
            draft.notes.append(text)
            draft.warnings.append(text)
    proposal = draft.proposal(
        series,
        missing=missing,
        explicit_missing=explicit_missing,
        near_misses=near_misses,
        conflicts=tuple(conflicts),
        study_instance_uid=study_instance_uid,
    )
    log.debug(  # sequence names and counts only: no UID or description reaches the log
        "mapping of %d series: found %s; missing %s; ambiguous %s",
        len(series),
        list(proposal.series),
        list(missing),
        list(draft.ambiguous),
    )
    return proposal


@dataclass
class _Draft:
    """The mapping being built: series chosen per modality, ambiguous modalities, notes and warnings in
    the order they arose, and why each series was not used (by SeriesInstanceUID)."""

    rules: Rules
    chosen: dict[str, SeriesInfo] = field(default_factory=dict)
    ambiguous: dict[str, tuple[SeriesInfo, ...]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def add_reason(self, series: SeriesInfo, text: str) -> None:
        self.reasons.setdefault(series.series_instance_uid, []).append(text)

    def used_as(self) -> dict[str, str]:
        """SeriesInstanceUID → the modality it was chosen for."""
        return {s.series_instance_uid: m for m, s in self.chosen.items()}

    def proposal(
        self,
        series: Sequence[SeriesInfo],
        *,
        missing: tuple[str, ...],
        explicit_missing: dict[str, str],
        near_misses: dict[str, str],
        conflicts: tuple[ContrastConflict, ...],
        study_instance_uid: str | None,
    ) -> MappingProposal:
        """The finished proposal; every series not chosen is listed as rejected with its reasons."""
        chosen_uids = {s.series_instance_uid for s in self.chosen.values()}
        rejected = [
            (s, "; ".join(self.reasons.get(s.series_instance_uid, ["not used"])))
            for s in series
            if s.series_instance_uid not in chosen_uids
        ]
        modality_counts = Counter(s.modality.upper() for s in series)
        accepted = {m.upper() for m in self.rules.accepted_modalities}
        return MappingProposal(
            series={m: self.chosen[m] for m in SEQUENCES if m in self.chosen},
            rejected=rejected,
            notes=self.notes,
            missing=missing,
            ambiguous=self.ambiguous,
            explicit_missing=explicit_missing,
            near_misses=near_misses,
            warnings=self.warnings,
            conflicts=conflicts,
            modality_counts=dict(modality_counts),
            has_mr=any(mod in accepted for mod in modality_counts),
            threshold=self.rules.threshold,
            study_instance_uid=study_instance_uid,
        )


def _take_explicit(draft: _Draft, series: Sequence[SeriesInfo], wanted: Mapping[str, str]) -> dict[str, str]:
    """Choose the explicitly given series (rule 1) with a note each; returns the modalities whose
    explicit UID is not in the study (modality → UID)."""
    by_uid = {s.series_instance_uid: s for s in series}
    explicit_missing: dict[str, str] = {}
    for modality in SEQUENCES:
        if modality not in wanted:
            continue
        picked = by_uid.get(wanted[modality])
        if picked is None:
            explicit_missing[modality] = wanted[modality]
            continue
        draft.chosen[modality] = picked
        why_not = reject_reason(picked, draft.rules)
        caveat = f" although the rules would reject it ({why_not})" if why_not else ""
        draft.notes.append(f"{modality}: {describe(picked)} given explicitly{caveat}")
    return explicit_missing


def _initial_pool(
    draft: _Draft, evaluations: Sequence[SeriesEvaluation], excluded: set[str]
) -> list[SeriesEvaluation]:
    """The series the rules may assign: neither rejected by a rule nor part of a contrast contradiction
    (``excluded``); the others get their reason."""
    for e in evaluations:
        if e.reject_reason is not None:
            draft.reasons[e.series.series_instance_uid] = [e.reject_reason]
    for uid in excluded:
        draft.reasons[uid] = ["t1/t1ce: its contrast tags and names contradict each other (see the error)"]
    return [
        e for e in evaluations if e.reject_reason is None and e.series.series_instance_uid not in excluded
    ]


def _assign(
    draft: _Draft, pool: list[SeriesEvaluation], open_modalities: Sequence[str]
) -> list[SeriesEvaluation]:
    """Greedy assignment, best first (rule 3) of the open modalities; returns the series left unused."""
    open_modalities = list(open_modalities)
    threshold = draft.rules.threshold
    while open_modalities:
        pairs = [(e, m) for e in pool for m in open_modalities if e.scores[m].score >= threshold]
        if not pairs:
            break
        _, modality = max(pairs, key=lambda p: (p[0].scores[p[1]].score, -SEQUENCES.index(p[1])))
        open_modalities.remove(modality)
        candidates = sorted(
            (e for e in pool if e.scores[modality].score >= threshold),
            key=lambda e: rank(e, modality, draft.rules),
            reverse=True,
        )
        best_rank = rank(candidates[0], modality, draft.rules)
        tied = [e for e in candidates if rank(e, modality, draft.rules) == best_rank]
        if len(tied) > 1:
            _mark_ambiguous(draft, modality, tied, candidates[len(tied) :])
            pool = [e for e in pool if e not in tied]
        else:
            pool.remove(candidates[0])
            _take_winner(draft, modality, candidates, pool)
    return pool


def _mark_ambiguous(
    draft: _Draft, modality: str, tied: Sequence[SeriesEvaluation], below: Sequence[SeriesEvaluation]
) -> None:
    """Leave ``modality`` unfilled: its best candidates are equal on the whole tie-break key."""
    draft.ambiguous[modality] = tuple(e.series for e in tied)
    for e in tied:
        others = " and ".join(describe(o.series) for o in tied if o is not e)
        draft.add_reason(e.series, f"{modality}: ambiguous, fits exactly as well as {others}")
    for e in below:
        draft.add_reason(e.series, f"{modality}: ranked below the ambiguous candidates")


def _take_winner(
    draft: _Draft, modality: str, candidates: Sequence[SeriesEvaluation], pool: Sequence[SeriesEvaluation]
) -> None:
    """Fill ``modality`` with the first of the ranked ``candidates`` (already out of ``pool``), with the
    notes on the choice, a narrow margin and physics that contradict it."""
    winner = candidates[0]
    draft.chosen[modality] = winner.series
    narrow = _narrow_margin(winner, candidates[1:] or pool, modality, draft.rules)
    if narrow:
        draft.warnings.append(narrow)
    if len(candidates) > 1:
        draft.notes.append(
            f"{modality}: chose {describe(winner.series)} over {describe(candidates[1].series)} "
            f"({why_better(winner, candidates[1], modality, draft.rules)})"
            + (f"; {narrow}" if narrow else "")
        )
        for e in candidates[1:]:
            draft.add_reason(
                e.series,
                f"{modality}: {describe(winner.series)} preferred ({why_better(winner, e, modality, draft.rules)})",
            )
    elif narrow:
        draft.notes.append(narrow)
    if winner.scores[modality].physics_contradiction:
        draft.notes.append(
            f"{modality}: {describe(winner.series)} chosen although its physics contradict it: "
            + "; ".join(winner.scores[modality].evidence)
        )


def _explain_unfit(draft: _Draft, pool: Sequence[SeriesEvaluation]) -> None:
    """A reason for each series left in the pool without one: no modality reached the threshold."""
    chosen_uids = {s.series_instance_uid for s in draft.chosen.values()}
    threshold = draft.rules.threshold
    for e in pool:
        uid = e.series.series_instance_uid
        if uid in chosen_uids or uid in draft.reasons:
            continue
        best = e.best()
        if best is not None:
            draft.reasons[uid] = [
                f"no modality fits: best {best.modality} scored {best.score:g} < threshold {threshold:g} "
                f"({'; '.join(best.evidence) or 'no evidence'})"
            ]


def _near_misses(
    missing: Sequence[str], evaluations: Sequence[SeriesEvaluation], draft: _Draft
) -> dict[str, str]:
    """For each missing modality, the best-scoring series, used elsewhere or not: "t1ce: series 7 (used
    as t1) scored 2 (contrast unknown -5)" tells the user why a post-contrast T1 without contrast
    evidence was not taken."""
    used_as = draft.used_as()
    threshold = draft.rules.threshold
    near_misses: dict[str, str] = {}
    scored = [e for e in evaluations if e.scores]
    for m in missing:
        if scored:
            top = max(scored, key=lambda e: e.scores[m].score)
            ev = top.scores[m]
            role = used_as.get(top.series.series_instance_uid)
            near_misses[m] = (
                f"{describe(top.series)}{f' (used as {role})' if role else ''} scored {ev.score:g} "
                f"< {threshold:g} ({'; '.join(ev.evidence) or 'no evidence'})"
            )
    return near_misses


def _narrow_margin(
    winner: SeriesEvaluation, others: Sequence[SeriesEvaluation], modality: str, rules: Rules
) -> str | None:
    """Words for a modality won by a score margin below ``min_margin`` over the next best series."""
    if not others:
        return None
    runner = max(others, key=lambda e: e.scores[modality].score)
    margin = round(winner.scores[modality].score - runner.scores[modality].score, 3)
    if margin >= rules.min_margin:
        return None
    return (
        f"{modality}: {describe(winner.series)} won over {describe(runner.series)} by a score margin of "
        f"{margin:g}, below min_margin {rules.min_margin:g} "
        f"(decided by {why_better(winner, runner, modality, rules)}); pass the series explicitly if wrong"
    )


def _passed_over(
    modality: str,
    evaluations: Sequence[SeriesEvaluation],
    used_as: Mapping[str, str],
    ambiguous: Mapping[str, tuple[SeriesInfo, ...]],
    excluded: set[str],
    threshold: float,
) -> list[str]:
    """Why each series whose name and physics fit ``modality`` did not fill it (it stays missing)."""
    texts = []
    for e in evaluations:
        if not e.scores or e.scores[modality].fit_without_contrast < threshold:
            continue
        uid = e.series.series_instance_uid
        score = e.scores[modality]
        if uid in used_as:
            why = f"used as {used_as[uid]}"
        elif uid in excluded:
            why = "its contrast tags and names contradict each other"
        elif any(e.series in tied for tied in ambiguous.values()):
            why = "ambiguous"
        else:
            why = f"scored {score.score:g} < {threshold:g}"
        texts.append(
            f"{modality}: missing although {describe(e.series)} was a candidate: {why}; "
            f"its contrast reading: {e.contrast_call.describe()}"
        )
    return texts


def map_series(
    series: Sequence[SeriesInfo],
    *,
    explicit: Mapping[str, str] | None = None,
    rules: Rules | Path | None = None,
    study_instance_uid: str | None = None,
) -> SeriesMapping:
    """The complete mapping of one study's series, or ``ModalityMissing``/``AmbiguousSeries``."""
    return propose_mapping(
        series, explicit=explicit, rules=rules, study_instance_uid=study_instance_uid
    ).require()
