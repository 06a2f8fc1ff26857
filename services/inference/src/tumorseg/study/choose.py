"""Choose which of a patient's studies to segment (pure logic; series are listed through a callback).

Contract:

* no study → ``PatientNotFound`` (the message names the PatientID);
* ``study_instance_uid`` given → that study or ``StudyNotFound`` (the message lists the patient's study
  UIDs and dates); its mapping must be complete, else its ``ModalityMissing``/``AmbiguousSeries``;
* otherwise the studies are tried newest first — by StudyDate then StudyTime; a study without a date
  sorts as the oldest — and the first one whose mapping the model can use wins (``InputPolicy``: all
  four sequences, or for a model trained without some, its required ones). So a newer study that lacks
  only a sequence the model does without beats an older complete one (the newest examination shows the
  tumour as it is now), while an older usable study beats a newer one without a required sequence (a
  follow-up without contrast, say);
* a study whose modalities are all present but one of them is ambiguous is the study that would have
  been chosen, so its ``AmbiguousSeries`` is raised at once: silently segmenting an older study would
  hand back a result for data the user did not mean;
* no complete study → ``ModalityMissing`` about the most complete candidate (most modalities found,
  the newest among equals), naming what it lacks, its UID and date. A study without any MR series
  says so;
* explicit series UIDs without a study UID select the newest study that holds all of them; when no
  study holds them → ``ModalityMissing`` naming the UIDs.

``choose_from`` lists series lazily (``list_series`` is called newest study first, and not again once a
complete study is found); ``choose_study`` is the same over already-listed ``(study, series)`` pairs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tumorseg.errors import ModalityMissing, PatientNotFound, StudyNotFound
from tumorseg.records import SeriesInfo, StudyInfo
from tumorseg.sequences import ALL_FOUR, InputPolicy
from tumorseg.study.mapping import MappingProposal, SeriesMapping, propose_mapping
from tumorseg.study.rules import Rules, resolve_rules

log = logging.getLogger(__name__)

_NOT_DIGITS = re.compile(r"[^0-9]")


@dataclass(frozen=True)
class AssembledStudy:
    """The study chosen for segmentation and its complete FLAIR/T1/T1ce/T2 mapping."""

    study: StudyInfo
    mapping: SeriesMapping

    def to_json(self) -> dict[str, Any]:
        return {
            **self.mapping.to_json(),
            "study_instance_uid": self.study.study_instance_uid,
            "study_date": self.study.study_date,
            "study_time": self.study.study_time,
        }


def study_sort_key(study: StudyInfo) -> tuple[int, str, str, str]:
    """Ascending = oldest first. Dates without one sort before every dated study; only the digits of
    DA/TM values count, so "2021-03-04" (a non-conformant writer) sorts like "20210304"."""
    date = _NOT_DIGITS.sub("", study.study_date)
    time = _NOT_DIGITS.sub("", study.study_time.split(".")[0]).ljust(6, "0")
    return (1 if date else 0, date, time if date else "", study.study_instance_uid)


def newest_first(studies: Sequence[StudyInfo]) -> list[StudyInfo]:
    return sorted(studies, key=study_sort_key, reverse=True)


def study_label(study: StudyInfo) -> str:
    """``study 1.2.3 (2021-03-04)``: how messages name a study (no PHI)."""
    date = _NOT_DIGITS.sub("", study.study_date)
    shown = f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else (study.study_date or "no date")
    return f"study {study.study_instance_uid} ({shown})"


def choose_from(
    patient_id: str,
    studies: Sequence[StudyInfo],
    list_series: Callable[[StudyInfo], Sequence[SeriesInfo]],
    *,
    study_instance_uid: str | None = None,
    explicit: Mapping[str, str] | None = None,
    rules: Rules | Path | None = None,
    policy: InputPolicy = ALL_FOUR,
) -> AssembledStudy:
    """Pick the study and map its series (see the module docstring for the rules and errors)."""
    if not studies:
        raise PatientNotFound(f"no study with PatientID {patient_id!r} in the PACS")
    rules = resolve_rules(rules)

    if study_instance_uid is not None and study_instance_uid.strip():
        wanted = study_instance_uid.strip()
        study = next((s for s in studies if s.study_instance_uid == wanted), None)
        if study is None:
            known = ", ".join(study_label(s) for s in newest_first(studies))
            raise StudyNotFound(f"PatientID {patient_id!r} has no study {wanted}; its studies: {known}")
        proposal = propose_mapping(
            list_series(study), explicit=explicit, rules=rules, study_instance_uid=wanted
        )
        return _chosen(study, proposal.require(study_label(study), policy), len(studies))

    best: tuple[StudyInfo, MappingProposal] | None = None
    for study in newest_first(studies):
        proposal = propose_mapping(
            list_series(study), explicit=explicit, rules=rules, study_instance_uid=study.study_instance_uid
        )
        if proposal.explicit_missing:
            continue  # the explicit series belong to another study
        if proposal.usable(policy):
            return _chosen(study, proposal.require(study_label(study), policy), len(studies))
        if policy.problem(proposal.found) is None:
            # All four present but one ambiguous: this is the study the user gets; say so, don't fall back.
            problem = proposal.error(study_label(study), policy)
            if problem is not None:
                raise problem
        if best is None or len(proposal.found) > len(best[1].found):
            best = (study, proposal)

    if best is None:
        uids = ", ".join(f"{m}={uid}" for m, uid in (explicit or {}).items())
        raise ModalityMissing(
            f"no study of PatientID {patient_id!r} holds all the series given explicitly ({uids}); "
            "check the SeriesInstanceUIDs or name the study"
        )
    study, proposal = best
    problem = proposal.error(study_label(study), policy)
    detail = problem.detail if problem is not None else f"{study_label(study)} is incomplete"
    if len(studies) == 1:
        raise ModalityMissing(f"PatientID {patient_id!r}: {detail}")
    raise ModalityMissing(
        f"none of the {len(studies)} studies of PatientID {patient_id!r} has {_needs(policy)}; "
        f"the most complete: {detail}"
    )


def _needs(policy: InputPolicy) -> str:
    if policy == ALL_FOUR:
        return "FLAIR, T1, T1ce and T2"  # the message users know
    return f"the sequences the model needs ({policy.describe()})"


def choose_study(
    patient_id: str,
    studies: Sequence[tuple[StudyInfo, Sequence[SeriesInfo]]],
    *,
    study_instance_uid: str | None = None,
    explicit: Mapping[str, str] | None = None,
    rules: Rules | Path | None = None,
    policy: InputPolicy = ALL_FOUR,
) -> AssembledStudy:
    """``choose_from`` over studies whose series are already listed."""
    series_of = {id(study): list(series) for study, series in studies}
    return choose_from(
        patient_id,
        [study for study, _ in studies],
        lambda study: series_of[id(study)],
        study_instance_uid=study_instance_uid,
        explicit=explicit,
        rules=rules,
        policy=policy,
    )


def _chosen(study: StudyInfo, mapping: SeriesMapping, count: int) -> AssembledStudy:
    # Counts and sequence names only: UIDs, dates and series descriptions identify a patient's
    # examination, so they go to the caller (the result's mapping_notes), never into the log.
    log.info(
        "chose 1 of %d studies; %s mapped, %d series unused, %d mapping note(s)",
        count,
        ", ".join(mapping.present),
        len(mapping.rejected),
        len(mapping.notes),
        extra={"fields": {"studies": count, "unused_series": len(mapping.rejected)}},
    )
    return AssembledStudy(study, mapping)
