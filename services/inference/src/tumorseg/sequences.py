"""The four MR sequences of a BraTS study, named once for the whole package.

``SEQUENCES`` is the canonical order (the BraTS file suffixes and the result JSON's ``series`` keys);
``SequenceName`` is the same set as a type, for pydantic models, FastAPI queries and Typer options.
A model package's own channel order is in its manifest (``Preprocessing.channels``), not here; which of
the four it needs is its ``InputPolicy`` (the manifest's ``inputs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

SequenceName = Literal["flair", "t1", "t1ce", "t2"]
SEQUENCES: tuple[str, ...] = get_args(SequenceName)


@dataclass(frozen=True)
class InputPolicy:
    """Which sequences a model needs (``required``), which it was trained to do without (``optional``),
    and groups of which at least one must be present (``any_of``: oedema needs FLAIR or T2, say). A model
    package records it (``inputs``); one without it requires all four."""

    required: tuple[str, ...] = SEQUENCES
    optional: tuple[str, ...] = ()
    any_of: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        named = [*self.required, *self.optional]
        if sorted(named) != sorted(SEQUENCES):
            raise ValueError(
                f"inputs: required {list(self.required)} and optional {list(self.optional)} must name each of "
                f"{list(SEQUENCES)} once"
            )
        if not self.required and not self.any_of:
            raise ValueError("inputs: at least one sequence must be required (or one of a group)")
        for group in self.any_of:
            if not group or any(m not in self.optional for m in group):
                raise ValueError(f"inputs: any_of group {list(group)} must name optional sequences")

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

    def describe(self) -> str:
        """``T1ce, and FLAIR or T2``: what the model needs, for messages."""
        parts = (
            [", ".join(m.upper() if m != "t1ce" else "T1ce" for m in self.required)] if self.required else []
        )
        parts += [" or ".join(m.upper() for m in group) for group in self.any_of]
        return " and ".join(p for p in parts if p)

    def to_json(self) -> dict[str, list[Any]]:
        return {
            "required": list(self.required),
            "optional": list(self.optional),
            "any_of": [list(g) for g in self.any_of],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> InputPolicy:
        if not data:
            return cls()
        return cls(
            required=tuple(str(m) for m in data.get("required", ())),
            optional=tuple(str(m) for m in data.get("optional", ())),
            any_of=tuple(tuple(str(m) for m in group) for group in data.get("any_of", ())),
        )


ALL_FOUR = InputPolicy()
