"""What mapping produces: ``SeriesMapping`` (complete, the pipeline's input) and ``MappingProposal``
(best effort, possibly incomplete, with the ``StudyError`` that explains why), and their JSON.

``SeriesMapping.to_json()`` gives the CONTRACT ``series`` shape
``{"study_instance_uid"?, "series": {modality: {"series_instance_uid", "series_description",
"orthanc_id"}}, "rejected": [{"series_instance_uid", "series_description", "series_number", "reason"}],
"notes": [str], "warnings": [str]}``; ``MappingProposal.to_json()`` adds ``"missing"``, ``"ambiguous"`` and
``"contradictions"``. ``warnings`` are the choices the user should check (a modality won by a narrow
margin, a pre/post pair told apart by acquisition order, a sequence missing although a series was a
candidate); each is also among the notes.
Messages name series as ``series 5 "AX T2 FLAIR" (UID 1.2.3)`` and never carry patient names or dates
of birth.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tumorseg.errors import AmbiguousSeries, ContrastContradiction, ModalityMissing, StudyError
from tumorseg.records import SeriesInfo
from tumorseg.sequences import ALL_FOUR, SEQUENCES, InputPolicy
from tumorseg.study.evidence import ContrastConflict
from tumorseg.study.ranking import describe

_MAX_LISTED = 30


@dataclass(frozen=True)
class SeriesMapping:
    """One series per modality present (keys among ``flair``, ``t1``, ``t1ce``, ``t2``: all four unless the
    model does without some, see ``InputPolicy``), every unused series with the reason it was not used, and
    notes on the choices made. Validated when built."""

    series: dict[str, SeriesInfo]
    rejected: list[tuple[SeriesInfo, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    study_instance_uid: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.series or not set(self.series) <= set(SEQUENCES):
            raise ValueError(f"a SeriesMapping maps some of {list(SEQUENCES)}, got {sorted(self.series)}")
        uids = [s.series_instance_uid for s in self.series.values()]
        if len(set(uids)) != len(uids):
            raise ValueError(f"a series is mapped to two modalities: {self.series_uids()}")

    def series_uids(self) -> dict[str, str]:
        return {m: self.series[m].series_instance_uid for m in SEQUENCES if m in self.series}

    @property
    def present(self) -> tuple[str, ...]:
        """The sequences mapped, in the canonical order."""
        return tuple(m for m in SEQUENCES if m in self.series)

    @property
    def missing(self) -> tuple[str, ...]:
        """The sequences the study lacks (the model was trained to do without them)."""
        return tuple(m for m in SEQUENCES if m not in self.series)

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT shape: ``series`` as in the result JSON, plus ``rejected`` and ``notes``."""
        return _mapping_json(self.study_instance_uid, self.series, self.rejected, self.notes, self.warnings)


def _mapping_json(
    study_instance_uid: str | None,
    series: Mapping[str, SeriesInfo],
    rejected: Sequence[tuple[SeriesInfo, str]],
    notes: Sequence[str],
    warnings: Sequence[str],
) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if study_instance_uid is not None:
        data["study_instance_uid"] = study_instance_uid
    data["series"] = _series_json(series)
    data["rejected"] = _rejected_json(rejected)
    data["notes"] = list(notes)
    data["warnings"] = list(warnings)
    return data


def _series_json(series: Mapping[str, SeriesInfo]) -> dict[str, dict[str, str | None]]:
    return {
        m: {
            "series_instance_uid": series[m].series_instance_uid,
            "series_description": series[m].series_description,
            "orthanc_id": series[m].orthanc_id,  # null over DICOMweb
        }
        for m in SEQUENCES
        if m in series
    }


def _rejected_json(rejected: Sequence[tuple[SeriesInfo, str]]) -> list[dict[str, str]]:
    return [
        {
            "series_instance_uid": s.series_instance_uid,
            "series_description": s.series_description,
            "series_number": s.series_number,
            "reason": reason,
        }
        for s, reason in rejected
    ]


@dataclass(frozen=True)
class MappingProposal:
    """The best mapping the rules allow, complete or not. ``missing``: modalities nothing fits;
    ``ambiguous``: modality → the equally good candidates; ``explicit_missing``: modality → an explicit
    UID that is not among the series; ``near_misses``: modality → the best candidate below threshold;
    ``warnings``: see the module docstring; ``conflicts``: twins whose contrast tags and names contradict
    each other (``tumorseg.study.evidence``): T1 and T1ce cannot be told, the study is refused."""

    series: dict[str, SeriesInfo]
    rejected: list[tuple[SeriesInfo, str]]
    notes: list[str]
    missing: tuple[str, ...]
    ambiguous: dict[str, tuple[SeriesInfo, ...]]
    explicit_missing: dict[str, str]
    near_misses: dict[str, str]
    modality_counts: dict[str, int]
    has_mr: bool
    threshold: float
    study_instance_uid: str | None = None
    warnings: list[str] = field(default_factory=list)
    conflicts: tuple[ContrastConflict, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing and not self.ambiguous and not self.explicit_missing and not self.conflicts

    def usable(self, policy: InputPolicy = ALL_FOUR) -> bool:
        """Complete enough for a model with this ``policy``: nothing ambiguous, no explicit UID unknown,
        and what is missing the model can do without."""
        return (
            not self.ambiguous
            and not self.explicit_missing
            and not self.conflicts
            and policy.problem(self.series) is None
        )

    @property
    def found(self) -> tuple[str, ...]:
        """Modalities with at least one fitting series (ambiguous and contradictory ones count: the data
        is there)."""
        contested = ("t1", "t1ce") if self.conflicts else ()
        return tuple(dict.fromkeys((*self.series, *self.ambiguous, *contested)))

    def error(self, study_label: str | None = None, policy: InputPolicy = ALL_FOUR) -> StudyError | None:
        """The error that makes this proposal unusable for a model with ``policy``, or ``None``. Missing
        beats ambiguous: resolving an ambiguity would not make the study usable while a modality is
        absent."""
        label = study_label or (
            f"study {self.study_instance_uid}" if self.study_instance_uid else "the study"
        )
        if self.explicit_missing:
            wanted = ", ".join(f"{m}={uid}" for m, uid in self.explicit_missing.items())
            return ModalityMissing(
                f"{label} has no series with the SeriesInstanceUID given for {wanted}; "
                f"its series are: {self._listing()}"
            )
        if self.conflicts:
            return ContrastContradiction(
                f"{label}: the contrast evidence contradicts itself, so T1 and T1ce cannot be told apart: "
                + "; ".join(c.describe() for c in self.conflicts)
                + "; pass the SeriesInstanceUIDs for t1 and t1ce explicitly"
            )
        if not self.has_mr:
            found = ", ".join(
                f"{mod or 'no Modality'} ×{n}" for mod, n in sorted(self.modality_counts.items())
            )
            return ModalityMissing(
                f"{label} has no MR series (found: {found or 'no series'}); "
                f"segmentation needs MR {policy.describe()}"
            )
        lacking = policy.problem(self.found)
        if lacking is not None:
            parts = [f"{label} has {lacking}"]
            if self.series:
                parts.append("found " + ", ".join(f"{m}: {describe(s)}" for m, s in self.series.items()))
            parts.extend(f"closest {m} candidate: {why}" for m, why in self.near_misses.items())
            if not self.series and not self.near_misses and self.rejected:
                # Nothing scored at all: say what the series were instead.
                kinds = Counter(reason.split(" (")[0] for _, reason in self.rejected)
                parts.append("its series: " + ", ".join(f"{k} ×{n}" for k, n in kinds.most_common()))
            if self.ambiguous:
                parts.append(self._ambiguity_text())
            parts.append(
                "pass the SeriesInstanceUID for a misread modality explicitly, or extend the mapping rules "
                "(TUMORSEG_MAPPING_RULES)"
            )
            return ModalityMissing("; ".join(parts))
        if self.ambiguous:
            return AmbiguousSeries(
                f"{label}: {self._ambiguity_text()}; pass the SeriesInstanceUID to use for "
                f"{', '.join(self.ambiguous)} explicitly"
            )
        return None

    def require(self, study_label: str | None = None, policy: InputPolicy = ALL_FOUR) -> SeriesMapping:
        """The ``SeriesMapping`` a model with ``policy`` can use (all four sequences, or those present
        when it does without the others), or the ``StudyError`` that explains why there is none."""
        problem = self.error(study_label, policy)
        if problem is not None:
            raise problem
        notes = list(self.notes)
        if self.missing:
            notes.append(f"no usable series for {', '.join(self.missing)}: segmented without it")
        return SeriesMapping(
            series={m: self.series[m] for m in SEQUENCES if m in self.series},
            rejected=list(self.rejected),
            notes=notes,
            study_instance_uid=self.study_instance_uid,
            warnings=list(self.warnings),
        )

    def to_json(self) -> dict[str, Any]:
        """Like ``SeriesMapping.to_json`` plus ``missing`` and ``ambiguous`` (for ``tumorseg inspect``)."""
        data = _mapping_json(self.study_instance_uid, self.series, self.rejected, self.notes, self.warnings)
        data["missing"] = list(self.missing) + list(self.explicit_missing)
        data["contradictions"] = [c.describe() for c in self.conflicts]
        data["ambiguous"] = {m: [s.series_instance_uid for s in c] for m, c in self.ambiguous.items()}
        return data

    def _ambiguity_text(self) -> str:
        return "; ".join(
            f"{m} is ambiguous: {' and '.join(describe(s) for s in candidates)} fit equally well"
            for m, candidates in self.ambiguous.items()
        )

    def _listing(self) -> str:
        every = list(self.series.values()) + [s for s, _ in self.rejected]
        every.sort(key=lambda s: (_number(s.series_number), s.series_instance_uid))
        shown = ", ".join(describe(s) for s in every[:_MAX_LISTED])
        more = f" and {len(every) - _MAX_LISTED} more" if len(every) > _MAX_LISTED else ""
        return (shown or "none") + more


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf
