"""Contrast evidence weighed across one study: which T1-weighted series is pre- and which post-contrast.

A series' own reading (``scoring.contrast_reading``: a pre word, else the agent tag or a post word) is
what a lone series gets. Between **twins** — T1-weighted series of one study that share protocol and
physics (the protocol name, or the description when there is none, without tool markers and contrast
words; TR, TE, TI within 2 %; MRAcquisitionType) — the evidence is weighed by what it can tell:

1. **The agent differs between the twins**: ContrastBolusAgent (an enhanced object's agent or
   Contrast/Bolus Usage sequence) on some and empty or absent on the others decides before any word of
   a name: those with it are post-contrast, those without pre. A name that says the opposite (a pre word
   on a series with the agent, a post word on one without) is a **contradiction**: the two readings
   would put different series into T1 and T1ce, so the study is refused (``ContrastContradiction``,
   naming both series and both pieces of evidence) unless the request pins the series.
2. **The agent is on all of them or on none** (some scanners copy it into every series after the
   injection, so it says nothing here): the names decide, as for a lone series.
3. **Nothing tells a pair apart** (no name evidence either): the acquisition order decides, the later
   one being post-contrast — AcquisitionDateTime (an enhanced object's earliest FrameAcquisitionDateTime),
   else AcquisitionTime, else SeriesDate/SeriesTime, else SeriesNumber when no time is known at all. The
   first of these that both carry decides; equal times mean one acquisition reconstructed twice, not a
   pre/post pair, and decide nothing. A note and a warning say that the order decided. Three or more
   twins are not ordered.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tumorseg.records import SeriesInfo
from tumorseg.study.ranking import describe
from tumorseg.study.rules import Rules
from tumorseg.study.scoring import (
    ContrastCall,
    agent_of,
    contrast_reading,
    evaluate,
    name_contrast,
    reject_reason,
)

_SEPARATORS = re.compile(r"[_\-]+")
_SPACES = re.compile(r"\s+")
_PHYSICS_TOLERANCE = 0.02


@dataclass(frozen=True)
class ContrastConflict:
    """Twins whose agent tags and names say opposite things: ``post`` carries the agent, ``pre`` not."""

    post: SeriesInfo
    pre: SeriesInfo
    agent: str
    names: str  # what the names say, in words

    def describe(self) -> str:
        return (
            f"{describe(self.post)} and {describe(self.pre)} share protocol and physics; ContrastBolusAgent "
            f"{self.agent!r} on the first only says it is the post-contrast one, but {self.names}"
        )


@dataclass(frozen=True)
class StudyContrast:
    """The study-level contrast reading: a ``ContrastCall`` for each twin it decided (by UID), the notes
    and warnings that say how, and the contradictions found."""

    calls: dict[str, ContrastCall] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    conflicts: list[ContrastConflict] = field(default_factory=list)

    @property
    def conflicting(self) -> set[str]:
        """The UIDs of the series in a contradiction."""
        return {s.series_instance_uid for c in self.conflicts for s in (c.post, c.pre)}


def read_contrast(series: Sequence[SeriesInfo], rules: Rules) -> StudyContrast:
    """Weigh the contrast evidence of the T1-weighted twins among ``series`` (see the module docstring)."""
    reading = StudyContrast()
    for group in _twins([s for s in series if _t1_weighted(s, rules)], rules):
        if len(group) > 1:
            _read_twins(group, rules, reading)
    return reading


def _t1_weighted(series: SeriesInfo, rules: Rules) -> bool:
    """A T1 candidate whatever its contrast: T1 is its best modality when the contrast is unknown."""
    if reject_reason(series, rules) is not None:
        return False
    best = evaluate(series, rules, ContrastCall("unknown")).best()
    return best is not None and best.modality == "t1" and best.score >= rules.threshold


def _protocol(series: SeriesInfo, rules: Rules) -> str:
    text = series.protocol_name.strip() or series.series_description.strip()
    text = _SPACES.sub(" ", _SEPARATORS.sub(" ", text.lower()))
    for pattern in (*rules.tool_markers, *rules.contrast.pre_patterns, *rules.contrast.post_patterns):
        text = pattern.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def _close(a: float | None, b: float | None) -> bool:
    a = a if a is not None and a > 0 else None
    b = b if b is not None and b > 0 else None
    if a is None or b is None:
        return a is b
    return abs(a - b) <= _PHYSICS_TOLERANCE * max(a, b)


def _same_physics(a: SeriesInfo, b: SeriesInfo) -> bool:
    return (
        _close(a.repetition_time, b.repetition_time)
        and _close(a.echo_time, b.echo_time)
        and _close(a.inversion_time, b.inversion_time)
        and a.mr_acquisition_type.strip().upper() == b.mr_acquisition_type.strip().upper()
    )


def _twins(series: Sequence[SeriesInfo], rules: Rules) -> list[list[SeriesInfo]]:
    groups: list[list[SeriesInfo]] = []
    for s in series:
        key = _protocol(s, rules)
        group = next((g for g in groups if _protocol(g[0], rules) == key and _same_physics(g[0], s)), None)
        if group is None:
            groups.append([s])
        else:
            group.append(s)
    return groups


def _read_twins(group: list[SeriesInfo], rules: Rules, reading: StudyContrast) -> None:
    agents = {s.series_instance_uid: agent_of(s, rules) for s in group}
    named = {s.series_instance_uid: name_contrast(s, rules) for s in group}
    with_agent = [s for s in group if agents[s.series_instance_uid]]
    without = [s for s in group if not agents[s.series_instance_uid]]
    if with_agent and without:
        _by_agent(rules, with_agent, without, agents, named, reading)
    elif len(group) == 2 and all(call.state == "unknown" for call in named.values()):
        _by_order(group[0], group[1], reading)


def _by_agent(
    rules: Rules,
    with_agent: list[SeriesInfo],
    without: list[SeriesInfo],
    agents: dict[str, str],
    named: dict[str, ContrastCall],
    reading: StudyContrast,
) -> None:
    conflicts = []
    for post in with_agent:
        for pre in without:
            said = [
                f"the name of {_short(s)} says {named[s.series_instance_uid].describe()}"
                for s, expected in ((post, "post"), (pre, "pre"))
                if named[s.series_instance_uid].state not in ("unknown", expected)
            ]
            if said:
                agent = agents[post.series_instance_uid]
                conflicts.append(ContrastConflict(post, pre, agent, " and ".join(said)))
    if conflicts:
        reading.conflicts.extend(conflicts)
        return
    calls = {
        post.series_instance_uid: ContrastCall(
            "post",
            f"ContrastBolusAgent {agents[post.series_instance_uid]!r}, absent on its twin {_short(without[0])}",
        )
        for post in with_agent
    }
    agent = agents[with_agent[0].series_instance_uid]
    for pre in without:
        calls[pre.series_instance_uid] = ContrastCall(
            "pre", f"no ContrastBolusAgent, unlike its twin {_short(with_agent[0])} ({agent!r})"
        )
    reading.calls.update(calls)
    # Said only where a series' own reading (a pre word beating its agent, a post word) was overruled;
    # an unknown read as pre changes no choice.
    own = {s.series_instance_uid: contrast_reading(s, rules).state for s in (*with_agent, *without)}
    if any(own[uid] not in (call.state, "unknown") for uid, call in calls.items()):
        reading.notes.append(
            f"t1/t1ce: {', '.join(describe(s) for s in without + with_agent)} share protocol and physics; "
            f"the contrast agent on {', '.join(_short(s) for s in with_agent)} only decided pre/post, "
            "before their names"
        )


def _by_order(a: SeriesInfo, b: SeriesInfo, reading: StudyContrast) -> None:
    order = acquisition_order(a, b)
    pair = f"{describe(a)} and {describe(b)} share protocol and physics and no tag tells them apart"
    if order is None:
        reading.notes.append(
            f"t1/t1ce: {pair}, nor their acquisition order: neither is taken as post-contrast"
        )
        return
    later, key, values = order
    earlier = b if later is a else a
    reading.calls[later.series_instance_uid] = ContrastCall("post", f"acquired after its twin ({key})")
    reading.calls[earlier.series_instance_uid] = ContrastCall("pre", f"acquired before its twin ({key})")
    text = (
        f"t1/t1ce: {pair}: decided by acquisition order, {_short(later)} (acquired later, {key} "
        f"{values[1]} vs {values[0]}) taken as post-contrast and {_short(earlier)} as pre-contrast; "
        "pass the series explicitly if that is wrong"
    )
    reading.notes.append(text)
    reading.warnings.append(text)


def acquisition_order(a: SeriesInfo, b: SeriesInfo) -> tuple[SeriesInfo, str, tuple[str, str]] | None:
    """(the series acquired later, the attribute that told, (earlier value, later value)), or ``None``
    when the first attribute both carry is equal (one acquisition) or none is carried by both."""
    keys = (
        ("AcquisitionDateTime", lambda s: _datetime(s.acquisition_datetime)),
        ("AcquisitionTime", lambda s: _time(s.acquisition_time)),
        (
            "SeriesDate/SeriesTime",
            lambda s: _datetime(s.series_date + s.series_time) if s.series_time else None,
        ),
    )
    for name, value in keys:
        va, vb = value(a), value(b)
        if va is not None and vb is not None:
            return _later(a, b, va, vb, name)
    na, nb = _number(a.series_number), _number(b.series_number)
    if na is not None and nb is not None:
        return _later(a, b, (na, 0.0), (nb, 0.0), "SeriesNumber")
    return None


def _later(
    a: SeriesInfo, b: SeriesInfo, va: tuple[float, float], vb: tuple[float, float], name: str
) -> tuple[SeriesInfo, str, tuple[str, str]] | None:
    if va == vb:
        return None
    shown = {id(a): _shown(a, name), id(b): _shown(b, name)}
    later, earlier = (a, b) if va > vb else (b, a)
    return later, name, (shown[id(earlier)], shown[id(later)])


def _shown(series: SeriesInfo, name: str) -> str:
    return {
        "AcquisitionDateTime": series.acquisition_datetime,
        "AcquisitionTime": series.acquisition_time,
        "SeriesDate/SeriesTime": f"{series.series_date} {series.series_time}".strip(),
    }.get(name, series.series_number)


def _datetime(text: str) -> tuple[float, float] | None:
    """A DT (or DA+TM) string as (YYYYMMDDHHMMSS, fraction); the time zone is dropped."""
    main, _, fraction = re.split(r"[+\-]", text.strip())[0].replace(":", "").partition(".")
    if not main.isdigit() or len(main) < 8:
        return None
    return float(main[:14].ljust(14, "0")), float(f"0.{fraction}") if fraction.isdigit() else 0.0


def _time(text: str) -> tuple[float, float] | None:
    main, _, fraction = text.strip().replace(":", "").partition(".")
    if not main.isdigit() or len(main) < 2:
        return None
    return float(main[:6].ljust(6, "0")), float(f"0.{fraction}") if fraction.isdigit() else 0.0


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _short(series: SeriesInfo) -> str:
    return f"series {series.series_number or '?'}"
