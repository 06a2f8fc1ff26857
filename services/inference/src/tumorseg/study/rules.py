"""The series-mapping rules: a JSON data file, validated and compiled once.

The shipped file is ``tumorseg/study/rules.json`` (read with ``importlib.resources``); a user file
named by ``TUMORSEG_MAPPING_RULES`` replaces it whole (copy the shipped one and edit it). The code in
``scoring``/``mapping`` only interprets these values; site-specific names belong in the file.

Schema (version 2; a version-1 file still loads, its missing keys taking the defaults below); every
object may carry a free-text ``"comment"``; unknown keys are refused so that a typo cannot silently
disable a rule:

``version``                 1 or 2.
``accepted_modalities``     DICOM Modality values that may be mapped (default ``["MR"]``).
``min_instances``           a series with fewer instances is rejected as "too few slices" (default 20:
                            localizers and single-slab test images have 1–15, a brain volume ≥ 20).
``threshold``               the lowest score a series may be mapped with.
``min_margin``              a modality won by a score margin below this over the next series is named in
                            the mapping's warnings (default 0.5; 0 turns the warning off).
``physics_mismatch_weight`` added to a modality's score when TR/TE/TI are known but fit none of its
                            physics profiles (negative: a contradiction lowers the confidence).
``tie_break``               after the score, the order in which candidates for one modality are
                            compared: any of ``slice_spacing`` (thinner through-plane spacing first),
                            ``acquisition_3d`` (MRAcquisitionType 3D before 2D), ``instance_count``
                            (more slices first), ``pixel_area`` (finer in-plane pixels first).
``name_adjustments``        name patterns (see below) whose weights are added to every modality.
``tool_markers``            regexes for what tools add to names (a converter's " (enhanced conversion)", copy
                            and reformat markers): removed from the name before the modality and contrast
                            patterns read it, so they never count as evidence (the reject rules still see
                            them: a reformat stays rejected). Default ``DEFAULT_TOOL_MARKERS``.
``contrast``                ``post_patterns`` / ``pre_patterns`` (regexes) and ``agent_tag`` (bool: a
                            non-empty ContrastBolusAgent counts as post-contrast). A pre pattern wins
                            over both, because some scanners copy the agent into every later series;
                            between same-protocol twins the agent decides first (``tumorseg.study.evidence``).
``reject``                  list of ``{"reason", "name_patterns": [regex], "image_type_any": [token],
                            "image_type_at": {"index": [token]}}``; the first rule that matches a
                            series rejects it with its reason. ImageType tokens are compared upper-case,
                            ``image_type_at`` by 0-based position (``{"0": ["DERIVED"]}``).
``modalities``              exactly ``flair``, ``t1``, ``t1ce``, ``t2``, each with
                            ``name_patterns``: ``[{"pattern", "weight", "unless"?}]``,
                            ``physics``: ``[{"name", "weight", "tr"?, "te"?, "ti"?}]`` where a range is
                            ``[min, max]`` in ms and ``"ti": "absent"`` means no inversion pulse, and
                            ``contrast``: ``{"post", "pre", "unknown"}`` weights.

Name patterns are Python regexes, matched case-insensitively (``re.search``) against the normalised
text ``"<SeriesDescription> | <ProtocolName>"``: lower case, ``_`` and ``-`` turned into spaces, runs
of spaces collapsed (so ``t2_tirm_tra_dark-fluid`` reads ``t2 tirm tra dark fluid``). A pattern with
``unless`` does not count when the ``unless`` regex also matches.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from tumorseg.sequences import SEQUENCES

TieBreakKey = Literal["slice_spacing", "acquisition_3d", "instance_count", "pixel_area"]
RULES_RESOURCE = "rules.json"
# What tools append to SeriesDescription (matched on the normalised name, see above): highdicom's legacy
# converter adds " (enhanced conversion)" when the result fits 64 characters; PACS and viewers add copy
# markers; reformats carry "MPR"/"reformatted" (rejected by the reject rules all the same).
DEFAULT_TOOL_MARKERS: tuple[str, ...] = (
    r"\(?\benhanced conversion\b\)?",
    r"\(?\bcopy( of)?\b( \d+)?\)?",
    r"\bmpr\b",
    r"\breformat\w*",
)
DEFAULT_MIN_MARGIN = 0.5


def _compile(value: object) -> object:
    if isinstance(value, str):
        try:
            return re.compile(value, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
    return value


Regex = Annotated[re.Pattern[str], BeforeValidator(_compile)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    comment: str | None = None


class NamePattern(_Strict):
    pattern: Regex
    weight: float
    unless: Regex | None = None


class PhysicsProfile(_Strict):
    name: str
    weight: float
    tr: tuple[float, float] | None = None
    te: tuple[float, float] | None = None
    ti: tuple[float, float] | Literal["absent"] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> PhysicsProfile:
        for label, bounds in (("tr", self.tr), ("te", self.te), ("ti", self.ti)):
            if isinstance(bounds, tuple) and bounds[0] > bounds[1]:
                raise ValueError(f"profile {self.name!r}: {label} range {list(bounds)} has min > max")
        if self.tr is None and self.te is None and self.ti is None:
            raise ValueError(f"profile {self.name!r} constrains none of tr, te, ti")
        return self


class ContrastWeights(_Strict):
    post: float = 0.0
    pre: float = 0.0
    unknown: float = 0.0


class ModalityRules(_Strict):
    name_patterns: list[NamePattern]
    physics: list[PhysicsProfile] = Field(default_factory=list)
    contrast: ContrastWeights = Field(default_factory=ContrastWeights)


class RejectRule(_Strict):
    reason: str
    name_patterns: list[Regex] = Field(default_factory=list)
    image_type_any: list[str] = Field(default_factory=list)
    image_type_at: dict[int, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_empty(self) -> RejectRule:
        if not (self.name_patterns or self.image_type_any or self.image_type_at):
            raise ValueError(
                f"reject rule {self.reason!r} has no name_patterns, image_type_any or image_type_at"
            )
        return self


class ContrastRules(_Strict):
    post_patterns: list[Regex]
    pre_patterns: list[Regex] = Field(default_factory=list)
    agent_tag: bool = True


class Rules(_Strict):
    """The validated rules file. Build with ``load_rules``; immutable, safe to share between threads."""

    version: Literal[1, 2]
    accepted_modalities: list[str] = Field(default_factory=lambda: ["MR"])
    min_instances: int = Field(default=20, ge=1)
    threshold: float
    min_margin: float = Field(default=DEFAULT_MIN_MARGIN, ge=0)
    physics_mismatch_weight: float = Field(le=0)
    tie_break: list[TieBreakKey]
    name_adjustments: list[NamePattern] = Field(default_factory=list)
    tool_markers: list[Regex] = Field(
        default_factory=lambda: [re.compile(p, re.IGNORECASE) for p in DEFAULT_TOOL_MARKERS]
    )
    contrast: ContrastRules
    reject: list[RejectRule] = Field(default_factory=list)
    modalities: dict[str, ModalityRules]

    @model_validator(mode="after")
    def _complete(self) -> Rules:
        if set(self.modalities) != set(SEQUENCES):
            raise ValueError(
                f"modalities must have exactly the keys {list(SEQUENCES)}, not {sorted(self.modalities)}"
            )
        if len(set(self.tie_break)) != len(self.tie_break):
            raise ValueError(f"tie_break lists a key twice: {self.tie_break}")
        return self


def parse_rules(text: str, source: str) -> Rules:
    """Rules from JSON text; ``ValueError`` naming ``source`` and the offending field when unusable."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"mapping rules {source} are not valid JSON: {exc}") from exc
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise ValueError(
            f"mapping rules {source} are not usable ({problems}); "
            "start from the shipped tumorseg/study/rules.json (schema in tumorseg.study.rules)"
        ) from exc


@lru_cache(maxsize=1)
def default_rules() -> Rules:
    """The rules shipped with the package, read once."""
    text = resources.files("tumorseg.study").joinpath(RULES_RESOURCE).read_text(encoding="utf-8")
    return parse_rules(text, f"tumorseg/study/{RULES_RESOURCE}")


def load_rules(path: Path | None = None) -> Rules:
    """The rules in ``path`` (``Settings.mapping_rules``), or the shipped ones when ``None``.

    A user file replaces the shipped rules whole. Call this at start-up so a bad file fails early.
    """
    if path is None:
        return default_rules()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(
            f"mapping rules file {path} cannot be read ({exc.strerror}); fix TUMORSEG_MAPPING_RULES"
        ) from exc
    return parse_rules(text, str(path))


def resolve_rules(rules: Rules | Path | None) -> Rules:
    """Accept what callers have at hand: loaded rules, a file path, or nothing (shipped rules)."""
    if isinstance(rules, Rules):
        return rules
    return load_rules(rules)
