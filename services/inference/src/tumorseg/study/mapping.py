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
from pathlib import Path

from tumorseg.errors import InvalidInput
from tumorseg.records import SeriesInfo
from tumorseg.sequences import SEQUENCES
from tumorseg.study.evidence import read_contrast
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
    wanted = _checked_explicit(explicit)
    by_uid = {s.series_instance_uid: s for s in series}
    chosen: dict[str, SeriesInfo] = {}
    notes: list[str] = []
    explicit_missing: dict[str, str] = {}
    for modality in SEQUENCES:
        if modality not in wanted:
            continue
        picked = by_uid.get(wanted[modality])
        if picked is None:
            explicit_missing[modality] = wanted[modality]
            continue
        chosen[modality] = picked
        why_not = reject_reason(picked, rules)
        caveat = f" although the rules would reject it ({why_not})" if why_not else ""
        notes.append(f"{modality}: {describe(picked)} given explicitly{caveat}")

    used = {s.series_instance_uid for s in chosen.values()}
    rest = [s for s in series if s.series_instance_uid not in used]
    contrast = read_contrast(rest, rules)
    open_modalities = [m for m in SEQUENCES if m not in chosen and m not in explicit_missing]
    # A contradiction matters while T1 or T1ce is left to the rules; pinning them settles it.
    conflicts = contrast.conflicts if {"t1", "t1ce"} & set(open_modalities) else []
    excluded = {s.series_instance_uid for c in conflicts for s in (c.post, c.pre)}
    notes.extend(contrast.notes)
    warnings = list(contrast.warnings)
    evaluations = [evaluate(s, rules, contrast.calls.get(s.series_instance_uid)) for s in rest]
    reasons: dict[str, list[str]] = {
        e.series.series_instance_uid: [e.reject_reason] for e in evaluations if e.reject_reason is not None
    }
    for uid in excluded:
        reasons[uid] = ["t1/t1ce: its contrast tags and names contradict each other (see the error)"]
    pool = [
        e for e in evaluations if e.reject_reason is None and e.series.series_instance_uid not in excluded
    ]
    ambiguous: dict[str, tuple[SeriesInfo, ...]] = {}
    threshold = rules.threshold

    while open_modalities:
        pairs = [(e, m) for e in pool for m in open_modalities if e.scores[m].score >= threshold]
        if not pairs:
            break
        _, modality = max(pairs, key=lambda p: (p[0].scores[p[1]].score, -SEQUENCES.index(p[1])))
        open_modalities.remove(modality)
        candidates = sorted(
            (e for e in pool if e.scores[modality].score >= threshold),
            key=lambda e: rank(e, modality, rules),
            reverse=True,
        )
        best_rank = rank(candidates[0], modality, rules)
        tied = [e for e in candidates if rank(e, modality, rules) == best_rank]
        if len(tied) > 1:
            ambiguous[modality] = tuple(e.series for e in tied)
            for e in tied:
                others = " and ".join(describe(o.series) for o in tied if o is not e)
                reasons.setdefault(e.series.series_instance_uid, []).append(
                    f"{modality}: ambiguous, fits exactly as well as {others}"
                )
            for e in candidates[len(tied) :]:
                reasons.setdefault(e.series.series_instance_uid, []).append(
                    f"{modality}: ranked below the ambiguous candidates"
                )
            pool = [e for e in pool if e not in tied]
            continue
        winner = candidates[0]
        chosen[modality] = winner.series
        pool.remove(winner)
        narrow = _narrow_margin(winner, candidates[1:] or pool, modality, rules)
        if narrow:
            warnings.append(narrow)
        if len(candidates) > 1:
            notes.append(
                f"{modality}: chose {describe(winner.series)} over {describe(candidates[1].series)} "
                f"({why_better(winner, candidates[1], modality, rules)})" + (f"; {narrow}" if narrow else "")
            )
            for e in candidates[1:]:
                reasons.setdefault(e.series.series_instance_uid, []).append(
                    f"{modality}: {describe(winner.series)} preferred ({why_better(winner, e, modality, rules)})"
                )
        elif narrow:
            notes.append(narrow)
        if winner.scores[modality].physics_contradiction:
            notes.append(
                f"{modality}: {describe(winner.series)} chosen although its physics contradict it: "
                + "; ".join(winner.scores[modality].evidence)
            )

    chosen_uids = {s.series_instance_uid for s in chosen.values()}
    near_misses: dict[str, str] = {}
    missing = tuple(
        m for m in SEQUENCES if m not in chosen and m not in ambiguous and m not in explicit_missing
    )
    for e in pool:
        uid = e.series.series_instance_uid
        if uid in chosen_uids or uid in reasons:
            continue
        best = e.best()
        if best is not None:
            reasons[uid] = [
                f"no modality fits: best {best.modality} scored {best.score:g} < threshold {threshold:g} "
                f"({'; '.join(best.evidence) or 'no evidence'})"
            ]
    used_as = {s.series_instance_uid: m for m, s in chosen.items()}
    for m in missing:
        # The best-scoring series, used elsewhere or not: "t1ce: series 7 (used as t1) scored 2 (contrast
        # unknown -5)" tells the user why a post-contrast T1 without contrast evidence was not taken.
        scored = [e for e in evaluations if e.scores]
        if scored:
            top = max(scored, key=lambda e: e.scores[m].score)
            ev = top.scores[m]
            role = used_as.get(top.series.series_instance_uid)
            near_misses[m] = (
                f"{describe(top.series)}{f' (used as {role})' if role else ''} scored {ev.score:g} "
                f"< {threshold:g} ({'; '.join(ev.evidence) or 'no evidence'})"
            )

    for m in missing:
        for text in _passed_over(m, evaluations, used_as, ambiguous, excluded, threshold):
            notes.append(text)
            warnings.append(text)

    rejected = [
        (s, "; ".join(reasons.get(s.series_instance_uid, ["not used"])))
        for s in series
        if s.series_instance_uid not in chosen_uids
    ]
    modality_counts = Counter(s.modality.upper() for s in series)
    accepted = {m.upper() for m in rules.accepted_modalities}
    proposal = MappingProposal(
        series={m: chosen[m] for m in SEQUENCES if m in chosen},
        rejected=rejected,
        notes=notes,
        missing=missing,
        ambiguous=ambiguous,
        explicit_missing=explicit_missing,
        near_misses=near_misses,
        warnings=warnings,
        conflicts=tuple(conflicts),
        modality_counts=dict(modality_counts),
        has_mr=any(mod in accepted for mod in modality_counts),
        threshold=threshold,
        study_instance_uid=study_instance_uid,
    )
    log.debug(  # sequence names and counts only: no UID or description reaches the log
        "mapping of %d series: found %s; missing %s; ambiguous %s",
        len(series),
        list(proposal.series),
        list(missing),
        list(ambiguous),
    )
    return proposal


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
