"""Contrast evidence weighed across a study (tumorseg.study.evidence, .scoring, .mapping): what tools add to
names is no evidence, twins are told apart by their agent tags before their names and by their acquisition
order when nothing else tells, a contradiction is refused, and a doubtful choice is never silent."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from tests.series_info import FLAIR2D, MPRAGE, T1SE, T2TSE, make_series
from tumorseg import functional_groups as fg
from tumorseg.errors import AmbiguousSeries, ContrastContradiction, ModalityMissing
from tumorseg.pacs.tags import describe_series
from tumorseg.records import SeriesInfo, StudyInfo
from tumorseg.sequences import InputPolicy
from tumorseg.study.choose import choose_study
from tumorseg.study.mapping import map_series, propose_mapping
from tumorseg.study.rules import default_rules, load_rules
from tumorseg.study.scoring import name_contrast

CONVERTED = " (enhanced conversion)"  # what highdicom's legacy converter appends to SeriesDescription


def siemens_study(suffix: str = "", *, t1: dict[str, Any], t1ce: dict[str, Any]) -> list[SeriesInfo]:
    """FLAIR, T2, a pre- and a post-contrast 3D T1 (``t1``/``t1ce`` set their fields), in exam order."""
    return [
        make_series("t2_tirm_tra_dark-fluid" + suffix, number="3", series_time="094000", **FLAIR2D),
        make_series("t2_tse_tra" + suffix, number="2", series_time="093500", **T2TSE),
        make_series(**{"number": "6", "series_time": "094100", **MPRAGE, **t1}),
        make_series(**{"number": "7", "series_time": "095200", **MPRAGE, **t1ce}),
    ]


def mapped(study: list[SeriesInfo], **kwargs: Any) -> dict[str, str]:
    return {m: s.series_description for m, s in map_series(study, **kwargs).series.items()}


# -- words that tools add -----------------------------------------------------------------------------


def test_a_study_converted_to_enhanced_objects_maps_as_its_classic_original() -> None:
    """The issue's case: every description ends in " (enhanced conversion)" and the pre-contrast 3D T1 is
    thinner than the post-contrast one (so a tie-break between two "post" series would pick it as T1ce)."""
    pre: dict[str, Any] = {"description": "t1_mprage_sag", "thickness": 0.9}
    post: dict[str, Any] = {"description": "t1_mprage_tra_KM", "thickness": 1.0, "agent": "Gadobutrol"}
    classic = siemens_study(t1=pre, t1ce=post)
    converted = siemens_study(
        CONVERTED,
        t1={**pre, "description": pre["description"] + CONVERTED},
        t1ce={**post, "description": post["description"] + CONVERTED},
    )
    assert mapped(classic) == {
        "flair": "t2_tirm_tra_dark-fluid",
        "t1": "t1_mprage_sag",
        "t1ce": "t1_mprage_tra_KM",
        "t2": "t2_tse_tra",
    }
    mapping = map_series(converted)
    assert {m: s.series_number for m, s in mapping.series.items()} == {
        m: s.series_number for m, s in map_series(classic).series.items()
    }
    assert mapping.warnings == []


def test_the_same_protocol_pair_converted_splits_by_its_agent() -> None:
    name = "t1_mprage_sag_p2_iso" + CONVERTED
    study = siemens_study(
        CONVERTED,
        t1={"description": name, "protocol": "t1_mprage_sag_p2_iso", "thickness": 0.9},
        t1ce={"description": name, "protocol": "t1_mprage_sag_p2_iso", "agent": "Gadovist", "thickness": 1.2},
    )
    mapping = map_series(study)
    assert (mapping.series["t1"], mapping.series["t1ce"]) == (study[2], study[3])


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("t1_mprage_sag (enhanced conversion)", "unknown"),
        ("AX FLAIR (enhanced conversion)", "unknown"),
        ("Enhanced MR FLAIR", "unknown"),  # an enhanced multi-frame object, not contrast
        ("T1 contrast enhanced", "post"),
        ("Gd-enhanced T1 3D", "post"),
        ("T1 ENH", "post"),
        ("AX ENHANCED T1", "post"),
        ("T1 post (enhanced conversion)", "post"),  # the post word still counts
        ("Copy of T1 post", "post"),
        ("T1 unenhanced", "pre"),
        ("T1 non-enhanced (enhanced conversion)", "pre"),
        ("T1 MPRAGE copy", "unknown"),
    ],
)
def test_enhanced_counts_only_next_to_a_contrast_or_t1_word(name: str, state: str) -> None:
    assert name_contrast(make_series(name), default_rules()).state == state


def test_tool_markers_are_no_sequence_evidence_but_reformats_stay_rejected() -> None:
    copy = make_series("Copy of t2_tse_tra", **T2TSE)
    assert propose_mapping([copy]).series == {"t2": copy}
    reformat = make_series(
        "t1_mprage_sag_MPR_tra", **{**MPRAGE, "image_type": ("DERIVED", "PRIMARY", "MPR", "ND")}
    )
    ((_, reason),) = propose_mapping([reformat]).rejected
    assert "derived" in reason
    assert "derived" in propose_mapping([make_series("T1 reformatted axial", **MPRAGE)]).rejected[0][1]


# -- twins told apart by their agent ----------------------------------------------------------------


def test_same_name_pair_with_the_agent_only_on_the_post_one_even_when_the_pre_one_is_thinner() -> None:
    same = {"description": "t1_mprage_sag", "protocol": "t1_mprage_sag"}
    study = siemens_study(t1={**same, "thickness": 0.9}, t1ce={**same, "agent": "Gadovist", "thickness": 1.2})
    mapping = map_series(study)
    assert (mapping.series["t1"], mapping.series["t1ce"]) == (study[2], study[3])


def test_an_enhanced_objects_usage_sequence_is_agent_evidence() -> None:
    usage = Dataset()
    usage.ContrastBolusAgentAdministered = "YES"
    shared = Dataset()
    shared.ContrastBolusUsageSequence = DicomSequence([usage])
    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    assert fg.contrast_agent(ds) == "YES"
    usage.ContrastBolusAgentAdministered = "NO"
    assert fg.contrast_agent(ds) == ""


# -- twins told apart by their acquisition order -----------------------------------------------------


def _untagged_pair(**times: dict[str, str]) -> list[SeriesInfo]:
    same = {"description": "t1_mprage_sag", "protocol": "t1_mprage_sag"}
    return siemens_study(t1={**same, **times["first"]}, t1ce={**same, **times["second"]})


@pytest.mark.parametrize(
    ("first", "second", "key"),
    [
        # The post-contrast series has the lower SeriesNumber: only the time can tell.
        (
            {"acquired": "20240312094100", "number": "8"},
            {"acquired": "20240312095200.5", "number": "5"},
            "AcquisitionDateTime",
        ),
        (
            {"acquisition_time": "094100", "number": "8"},
            {"acquisition_time": "095200", "number": "5"},
            "AcquisitionTime",
        ),
        (
            {"series_time": "094100", "number": "8"},
            {"series_time": "095200", "number": "5"},
            "SeriesDate/SeriesTime",
        ),
        ({"series_time": "", "number": "5"}, {"series_time": "", "number": "8"}, "SeriesNumber"),
    ],
)
def test_an_untagged_pair_is_told_apart_by_acquisition_order_with_a_note(
    first: dict[str, str], second: dict[str, str], key: str
) -> None:
    study = _untagged_pair(first=first, second=second)
    mapping = map_series(study)
    assert (mapping.series["t1"], mapping.series["t1ce"]) == (study[2], study[3])
    (note,) = [n for n in mapping.notes if "acquisition order" in n]
    assert key in note and study[2].series_instance_uid in note and study[3].series_instance_uid in note
    assert note in mapping.warnings
    # The input order decides nothing.
    assert map_series(list(reversed(study))).series["t1ce"] is study[3]


def test_a_pair_acquired_at_the_same_time_is_not_guessed() -> None:
    """Equal times are one acquisition reconstructed twice, not a pre/post pair: the SeriesNumber does not
    then decide, and T1ce stays missing (naming both series)."""
    study = _untagged_pair(first={"acquired": "20240312094100"}, second={"acquired": "20240312094100"})
    with pytest.raises(ModalityMissing) as info:
        map_series(study)
    assert "t1ce" in info.value.detail
    assert (
        study[2].series_instance_uid in info.value.detail
        and study[3].series_instance_uid in info.value.detail
    )


def test_a_third_twin_is_not_ordered() -> None:
    same = {"description": "t1_mprage_sag", "protocol": "t1_mprage_sag", **MPRAGE}
    study = [
        *_untagged_pair(first={"series_time": "094100"}, second={"series_time": "095200"}),
        make_series(series_time="100000", **same),
    ]
    with pytest.raises((ModalityMissing, AmbiguousSeries)):
        map_series(study)


# -- a scanner that copies the agent forward ------------------------------------------------------------


def test_an_agent_copied_into_every_later_series_is_no_evidence() -> None:
    """Agent registered before the pre-contrast T1: every series from then on carries it. The pre word still
    wins for a lone series; twins that both carry it are told apart by their names, else their order."""
    agent = {"agent": "Gadovist"}
    named = siemens_study(
        t1={"description": "t1_mprage_sag_pre", "protocol": "t1_mprage_sag", **agent},
        t1ce={"description": "t1_mprage_sag", "protocol": "t1_mprage_sag", **agent},
    )
    named[0] = replace(named[0], contrast_bolus_agent="Gadovist")  # the FLAIR after the injection
    assert mapped(named) == {
        "flair": "t2_tirm_tra_dark-fluid",
        "t1": "t1_mprage_sag_pre",
        "t1ce": "t1_mprage_sag",
        "t2": "t2_tse_tra",
    }
    same = {"description": "t1_mprage_sag", "protocol": "t1_mprage_sag", **agent}
    ordered = siemens_study(t1={**same, "series_time": "094100"}, t1ce={**same, "series_time": "095200"})
    mapping = map_series(ordered)
    assert (mapping.series["t1"], mapping.series["t1ce"]) == (ordered[2], ordered[3])
    assert any("acquisition order" in w for w in mapping.warnings)


def test_a_lone_t1_with_a_pre_word_and_a_copied_agent_is_t1() -> None:
    study = siemens_study(
        t1={"description": "AX T1 SE pre", **T1SE, "acquisition": "2D", "agent": "Dotarem"},
        t1ce={"description": "t1_mprage_sag_KM", "agent": "Dotarem"},
    )
    assert mapped(study)["t1"] == "AX T1 SE pre"


# -- contradictions --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("post_name", "pre_name", "words"),
    [
        ("t1_mprage_sag_pre", "t1_mprage_sag", "pre"),  # the agent's series named pre
        ("t1_mprage_sag", "t1_mprage_sag_post", "post"),  # the series without it named post
    ],
)
def test_tags_and_names_that_contradict_each_other_refuse_the_study(
    post_name: str, pre_name: str, words: str
) -> None:
    study = siemens_study(
        t1={"description": post_name, "protocol": "t1_mprage_sag", "agent": "Gadovist"},
        t1ce={"description": pre_name, "protocol": "t1_mprage_sag"},
    )
    with pytest.raises(ContrastContradiction) as info:
        map_series(study)
    detail = info.value.detail
    assert info.value.code == "contrast_contradiction"
    for series in study[2:]:
        assert series.series_instance_uid in detail and series.series_description in detail
    assert "ContrastBolusAgent 'Gadovist'" in detail and f"/\\b{words}\\b/" in detail
    assert "explicitly" in detail

    proposal = propose_mapping(study)
    assert not proposal.usable() and proposal.to_json()["contradictions"]
    # Pinning the series is the way out.
    pinned = {"t1": study[3].series_instance_uid, "t1ce": study[2].series_instance_uid}
    mapping = map_series(study, explicit=pinned)
    assert (mapping.series["t1"], mapping.series["t1ce"]) == (study[3], study[2])


def test_a_contradiction_in_the_newest_study_is_not_passed_over_for_an_older_one() -> None:
    contradictory = siemens_study(
        t1={"description": "t1_mprage_sag_pre", "protocol": "t1_mprage_sag", "agent": "Gadovist"},
        t1ce={"description": "t1_mprage_sag", "protocol": "t1_mprage_sag"},
    )
    older = siemens_study(
        t1={"description": "t1_mprage_sag"}, t1ce={"description": "t1_mprage_sag_KM", "agent": "X"}
    )
    studies = [(_study("new", "20250101"), contradictory), (_study("old", "20240101"), older)]
    with pytest.raises(ContrastContradiction):
        choose_study("P1", studies)


def _study(uid: str, date: str) -> StudyInfo:
    return StudyInfo(uid, uid, "P1", date, "090000", "", 4)


# -- never silent ----------------------------------------------------------------------------------------


def test_a_sequence_missing_although_a_series_was_a_candidate_is_a_warning() -> None:
    """Both T1s read post-contrast (the agent on each, different protocols): T1 stays missing, and a model
    that does without T1 is told which series were candidates and why they were not used."""
    study = siemens_study(
        t1={"description": "t1_mprage_sag", "agent": "Gadovist", "thickness": 0.9},
        t1ce={"description": "t1_mprage_tra", "agent": "Gadovist"},
    )
    policy = InputPolicy.from_json({"required": ["flair", "t1ce", "t2"], "optional": ["t1"]})
    mapping = propose_mapping(study).require(policy=policy)
    assert "t1" in mapping.missing
    texts = [w for w in mapping.warnings if w.startswith("t1: missing although")]
    assert len(texts) == 2
    for series, why in ((study[2], "used as t1ce"), (study[3], "scored")):
        (text,) = [t for t in texts if series.series_instance_uid in t]
        assert why in text and "ContrastBolusAgent 'Gadovist'" in text
    assert set(texts) <= set(mapping.notes)
    assert mapping.to_json()["warnings"] == mapping.warnings


def test_a_narrow_margin_is_a_warning_and_min_margin_is_a_rules_key(tmp_path: Path) -> None:
    thick = make_series("AX T2 FLAIR", **FLAIR2D)
    thin = make_series("FLAIR 3D SAG", **{**FLAIR2D, "thickness": 1.0})
    study = [thick, thin, make_series("t2_tse_tra", **T2TSE)]
    proposal = propose_mapping(study)
    (warning,) = proposal.warnings
    assert "flair" in warning and "margin of 0" in warning and "thinner slices" in warning
    assert thin.series_instance_uid in warning and thick.series_instance_uid in warning
    assert any(warning in note for note in proposal.notes)

    data = _shipped()
    data["min_margin"] = 0
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert propose_mapping(study, rules=path).warnings == []


def test_a_version_1_rules_file_still_loads_with_the_new_keys_defaulted(tmp_path: Path) -> None:
    data = _shipped()
    data["version"] = 1
    del data["min_margin"], data["tool_markers"]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    rules = load_rules(path)
    assert rules.min_margin == default_rules().min_margin
    assert [p.pattern for p in rules.tool_markers] == [p.pattern for p in default_rules().tool_markers]
    # A version-1 file with the old bare "enhanced" post word: the converter's suffix is still stripped.
    data["contrast"]["post_patterns"].append("\\benh(anced)?\\b")
    path.write_text(json.dumps(data), encoding="utf-8")
    assert name_contrast(make_series("t1_mprage_sag" + CONVERTED), load_rules(path)).state == "unknown"


def _shipped() -> dict[str, Any]:
    text = resources.files("tumorseg.study").joinpath("rules.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


# -- where the acquisition time comes from ---------------------------------------------------------------


def test_the_listing_reads_the_acquisition_time_classic_and_enhanced() -> None:
    classic = describe_series(
        "k",
        {"SeriesInstanceUID": "1.2"},
        {"AcquisitionDate": "20240312", "AcquisitionTime": "094100.25", "Modality": "MR"},
        instance_count=30,
    )
    assert (classic.acquisition_datetime, classic.acquisition_time) == ("20240312094100.25", "094100.25")
    frames = []
    for stamp in ("20240312095300", "20240312095200.5"):
        content = Dataset()
        content.FrameAcquisitionDateTime = stamp
        group = Dataset()
        group.FrameContentSequence = DicomSequence([content])
        frames.append(group)
    ds = pydicom.Dataset()
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    assert fg.acquisition_datetime(ds) == "20240312095200.5"  # the earliest frame
    ds.AcquisitionDateTime = "20240312095000"
    assert fg.acquisition_datetime(ds) == "20240312095000"
