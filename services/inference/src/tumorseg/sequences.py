"""The four MR sequences of a BraTS study, named once for the whole package.

``SEQUENCES`` is the canonical order (the BraTS file suffixes and the result JSON's ``series`` keys);
``SequenceName`` is the same set as a type, for pydantic models, FastAPI queries and Typer options.
A model package's own channel order is in its manifest (``Preprocessing.channels``), not here; which of
the four it needs is its ``InputPolicy`` (the manifest's ``inputs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

SequenceName = Literal["flair", "t1", "t1ce", "t2"]
SEQUENCES: tuple[str, ...] = get_args(SequenceName)


@dataclass(frozen=True)
class InputPolicy:
    """Which sequences a model needs (``required``), which it was trained to do without (``optional``),
    and groups of which at least one must be present (``any_of``: oedema needs FLAIR or T2, say). A model
    package records it (``inputs``); one without it requires all four.

    ``substitutes`` (optional sequence → another sequence): the channel of a missing sequence holds that
    other sequence's (normalised) volume when the study has it, instead of zeros (``stand_ins``). Measured
    for T1 ← T1ce on clinical heads: a network trained on complete studies only segments a study without
    T1 within 0.02 Dice of the complete one (the two differ only where contrast enhances), while a zero T1
    channel or FLAIR ↔ T2 in each other's place lose most of the whole tumour (see docs/missing-sequences.md).

    A model with fewer input channels (a published model without T1, say) names only its channels; a
    sequence it does not name is not used at all (``named``).
    """

    required: tuple[str, ...] = SEQUENCES
    optional: tuple[str, ...] = ()
    any_of: tuple[tuple[str, ...], ...] = ()
    substitutes: tuple[tuple[str, str], ...] = ()  # (missing, stand-in) pairs, in SEQUENCES order

    def __post_init__(self) -> None:
        named = [*self.required, *self.optional]
        if len(set(named)) != len(named) or not set(named) <= set(SEQUENCES):
            raise ValueError(
                f"inputs: required {list(self.required)} and optional {list(self.optional)} must name "
                f"sequences of {list(SEQUENCES)}, each once"
            )
        if not self.required and not self.any_of:
            raise ValueError("inputs: at least one sequence must be required (or one of a group)")
        for group in self.any_of:
            if not group or any(m not in self.optional for m in group):
                raise ValueError(f"inputs: any_of group {list(group)} must name optional sequences")
        missing = [m for m, _ in self.substitutes]
        for missing_one, stand_in in self.substitutes:
            if missing_one not in self.optional or stand_in not in SEQUENCES or stand_in == missing_one:
                raise ValueError(
                    f"inputs: substitutes {missing_one} -> {stand_in}: the first must be an optional sequence "
                    "and the second another of the four"
                )
        if len(set(missing)) != len(missing):
            raise ValueError(f"inputs: substitutes name a sequence twice ({missing})")

    @classmethod
    def for_channels(cls, channels: Iterable[str]) -> InputPolicy:
        """Every one of ``channels`` required (a package that does not say otherwise)."""
        return cls(required=tuple(m for m in SEQUENCES if m in set(channels)))

    @property
    def named(self) -> tuple[str, ...]:
        """The sequences the model uses (required or optional), in ``SEQUENCES`` order."""
        return tuple(m for m in SEQUENCES if m in self.required or m in self.optional)

    def problem(self, present: Iterable[str]) -> str | None:
        """Why a study with only the ``present`` sequences cannot be segmented (``None``: it can)."""
        have = set(present)
        lacking = [m for m in self.required if m not in have]
        if lacking:
            return f"no usable series for {', '.join(lacking)}"
        for group in self.any_of:
            if not have.intersection(group):
                return f"no usable series for {' or '.join(group)} (the model needs at least one of them)"
        return None

    def missing_sets(self) -> tuple[tuple[str, ...], ...]:
        """Every non-empty set of sequences a study may lack and still be segmented, each in ``SEQUENCES``
        order, smaller sets first: ``(("flair",), ("t1",), ("t2",), ("flair", "t1"), ("t1", "t2"))`` for
        the shipped model."""
        from itertools import combinations

        optional = [m for m in SEQUENCES if m in self.optional]
        return tuple(
            lacking
            for size in range(1, len(optional) + 1)
            for lacking in combinations(optional, size)
            if self.problem(m for m in SEQUENCES if m not in lacking) is None
        )

    def stand_ins(
        self, channels: Sequence[str], present: Iterable[str]
    ) -> tuple[tuple[int, int | None], ...]:
        """For each of ``channels`` (a package's channel order) whose sequence is not ``present``: (its index,
        the index of the channel standing in for it, or ``None`` for zeros). The stand-in is its
        ``substitutes`` entry when that sequence is present; what ``fill_absent`` writes."""
        have = set(present)
        chosen = dict(self.substitutes)
        return tuple(
            (c, channels.index(chosen[m]) if chosen.get(m) in have and chosen[m] in channels else None)
            for c, m in enumerate(channels)
            if m not in have
        )

    def describe(self) -> str:
        """``T1ce, and FLAIR or T2``: what the model needs, for messages."""
        parts = (
            [", ".join(m.upper() if m != "t1ce" else "T1ce" for m in self.required)] if self.required else []
        )
        parts += [" or ".join(m.upper() for m in group) for group in self.any_of]
        return " and ".join(p for p in parts if p)

    def to_json(self) -> dict[str, Any]:
        return {
            "required": list(self.required),
            "optional": list(self.optional),
            "any_of": [list(g) for g in self.any_of],
            **({"substitutes": dict(self.substitutes)} if self.substitutes else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> InputPolicy:
        if not data:
            return cls()
        return cls(
            required=tuple(str(m) for m in data.get("required", ())),
            optional=tuple(str(m) for m in data.get("optional", ())),
            any_of=tuple(tuple(str(m) for m in group) for group in data.get("any_of", ())),
            substitutes=tuple(
                sorted(
                    ((str(m), str(s)) for m, s in dict(data.get("substitutes") or {}).items()),
                    key=lambda pair: SEQUENCES.index(pair[0]) if pair[0] in SEQUENCES else len(SEQUENCES),
                )
            ),
        )


ALL_FOUR = InputPolicy()


def fill_absent(array: Any, stand_ins: Iterable[tuple[int, int | None]], channel_axis: int = 0) -> Any:
    """Write each missing channel of ``array`` (numpy or torch, channels on ``channel_axis``) in place: the
    stand-in channel's values, or zeros (``InputPolicy.stand_ins``); returns ``array``. The one place the
    service (``Predictor``) and training (modality dropout, validation) make a missing sequence's channel."""
    lead = (slice(None),) * channel_axis
    for target, source in stand_ins:
        if source is None:
            array[(*lead, target)] = 0
        else:
            array[(*lead, target)] = array[(*lead, source)]
    return array
