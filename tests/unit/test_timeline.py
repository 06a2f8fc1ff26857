"""The timeline's comparison on its own: baseline, nadir, absolute and relative change, thresholds."""

from __future__ import annotations

import pytest

from tumorseg.timeline import RESEARCH_NOTE, TimelineEntry, _compare, change


def entry(uid: str, et: float, *, current: bool = True, tc: float | None = None) -> TimelineEntry:
    return TimelineEntry(
        study_instance_uid=uid,
        study_date=f"2024-0{uid}-01",
        study_description="",
        status="segmented",
        current_model=current,
        volumes_ml={
            "et": et,
            "tc": tc if tc is not None else et + 1.0,
            "wt": et + 5.0,
            "ncr": 1.0,
            "ed": 4.0,
        },
    )


def test_changes_from_baseline_and_nadir_and_the_thresholds() -> None:
    entries = [entry("1", 10.0), entry("2", 15.0), entry("3", 3.0), entry("4", 4.5)]
    _compare(entries)
    first, grown, shrunk, regrown = entries
    assert first.baseline and first.change_from_baseline is None and first.note is None
    assert grown.change_from_baseline is not None and grown.change_from_baseline["et"].absolute_ml == 5.0
    assert grown.change_from_baseline["et"].relative == pytest.approx(0.5)
    assert grown.nadir_study_instance_uid == "1"  # the only earlier study
    assert grown.progression_threshold_crossed and not grown.response_threshold_crossed
    assert grown.note is not None and grown.note.endswith(RESEARCH_NOTE) and "+50%" in grown.note
    assert shrunk.change_from_baseline is not None and shrunk.change_from_baseline["et"].relative == -0.7
    assert shrunk.response_threshold_crossed and not shrunk.progression_threshold_crossed
    # Every region of the later study is compared with the nadir (smallest ET so far: study 3).
    assert regrown.nadir_study_instance_uid == "3"
    assert regrown.change_from_nadir is not None
    assert regrown.change_from_nadir["et"].relative == pytest.approx(0.5)
    assert regrown.change_from_nadir["wt"].reference_ml == 8.0
    assert regrown.progression_threshold_crossed
    assert regrown.change_from_baseline is not None
    assert regrown.change_from_baseline["et"].relative == pytest.approx(-0.55)
    assert not regrown.response_threshold_crossed


def test_a_baseline_without_enhancing_tumour_gives_absolute_change_only() -> None:
    entries = [entry("1", 0.0), entry("2", 2.0)]
    _compare(entries)
    later = entries[1]
    assert later.change_from_baseline is not None
    assert later.change_from_baseline["et"].absolute_ml == 2.0
    assert later.change_from_baseline["et"].relative is None  # reference under 1.0 mL
    assert later.change_from_baseline["wt"].relative == pytest.approx(2.0 / 5.0)
    assert not later.progression_threshold_crossed and later.note is None
    assert change(0.5, 0.99) is not None and change(0.5, 0.99).relative is None  # type: ignore[union-attr]
    assert change(2.0, 1.0).relative == 1.0  # type: ignore[union-attr]
    assert change(None, 1.0) is None


def test_other_models_are_listed_not_compared_and_one_study_has_no_change() -> None:
    entries = [entry("1", 5.0, current=False), entry("2", 10.0), entry("3", 20.0, current=False)]
    _compare(entries)
    assert not entries[0].baseline and entries[0].change_from_baseline is None
    assert entries[1].baseline and entries[1].change_from_baseline is None
    assert entries[2].change_from_baseline is None and not entries[2].progression_threshold_crossed
    alone = [entry("1", 5.0)]
    _compare(alone)
    assert alone[0].baseline and alone[0].change_from_nadir is None
