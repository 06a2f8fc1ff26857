"""Study choice (tumorseg.study.choose) and assembly from a PACS (tumorseg.study.assemble)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from tests.series_info import FLAIR2D, MPRAGE, T2TSE, make_series
from tumorseg.errors import AmbiguousSeries, InvalidInput, ModalityMissing, PatientNotFound, StudyNotFound
from tumorseg.records import SeriesInfo, StudyInfo
from tumorseg.sequences import ALL_FOUR, InputPolicy
from tumorseg.study.assemble import assemble
from tumorseg.study.choose import choose_study, newest_first, study_label

_counter = itertools.count(1)
PATIENT = "PAT-0042"


def make_study(date: str = "20240102", time: str = "101500", uid: str | None = None) -> StudyInfo:
    n = next(_counter)
    return StudyInfo(
        key=f"study-{n}",
        study_instance_uid=uid or f"1.2.826.0.1.3680043.20.{n}",
        patient_id=PATIENT,
        study_date=date,
        study_time=time,
        study_description="MRI BRAIN",
        series_count=0,
    )


def complete_series() -> list[SeriesInfo]:
    return [
        make_series("localizer", slices=3),
        make_series("t2_tirm_tra_dark-fluid", **FLAIR2D),
        make_series("t2_tse_tra", **T2TSE),
        make_series("t1_mprage_sag", **MPRAGE),
        make_series("t1_mprage_sag", agent="Gadovist", **MPRAGE),
    ]


def without_contrast() -> list[SeriesInfo]:
    return [s for s in complete_series() if not s.contrast_bolus_agent]


class FakePacs:
    """The two StudySource calls, recorded."""

    def __init__(self, studies: Sequence[tuple[StudyInfo, list[SeriesInfo]]]) -> None:
        self.studies = list(studies)
        self.listed: list[str] = []

    def find_studies(self, patient_id: str) -> list[StudyInfo]:
        return [s for s, _ in self.studies if s.patient_id == patient_id]

    def list_series(self, study_id: str) -> list[SeriesInfo]:
        self.listed.append(study_id)
        return next(series for s, series in self.studies if s.key == study_id)


def test_newest_complete_study_wins_over_an_older_complete_one() -> None:
    old, new = make_study("20230105"), make_study("20240210")
    chosen = choose_study(PATIENT, [(old, complete_series()), (new, complete_series())])
    assert chosen.study is new
    assert chosen.mapping.study_instance_uid == new.study_instance_uid


def test_same_day_studies_are_ordered_by_time() -> None:
    morning, evening = make_study("20240210", "081500"), make_study("20240210", "183000.123")
    chosen = choose_study(PATIENT, [(evening, complete_series()), (morning, complete_series())])
    assert chosen.study is evening


def test_older_complete_study_wins_over_a_newer_incomplete_one() -> None:
    old, new = make_study("20230105"), make_study("20240210")
    chosen = choose_study(PATIENT, [(old, complete_series()), (new, without_contrast())])
    assert chosen.study is old


def test_a_study_without_date_sorts_oldest() -> None:
    undated, dated = make_study(""), make_study("19990101")
    assert newest_first([undated, dated]) == [dated, undated]
    chosen = choose_study(PATIENT, [(undated, complete_series()), (dated, complete_series())])
    assert chosen.study is dated


def test_study_uid_overrides_the_default_choice() -> None:
    old, new = make_study("20230105"), make_study("20240210")
    chosen = choose_study(
        PATIENT,
        [(old, complete_series()), (new, complete_series())],
        study_instance_uid=old.study_instance_uid,
    )
    assert chosen.study is old


def test_study_uid_not_among_the_patients_studies() -> None:
    study = make_study("20240210")
    with pytest.raises(StudyNotFound) as info:
        choose_study(PATIENT, [(study, complete_series())], study_instance_uid="9.9.9")
    assert "9.9.9" in info.value.detail and PATIENT in info.value.detail
    assert study_label(study) in info.value.detail  # the studies that do exist are listed


def test_named_study_that_is_incomplete_is_modality_missing_even_if_another_is_complete() -> None:
    old, new = make_study("20230105"), make_study("20240210")
    with pytest.raises(ModalityMissing, match="t1ce"):
        choose_study(
            PATIENT,
            [(old, complete_series()), (new, without_contrast())],
            study_instance_uid=new.study_instance_uid,
        )


def test_no_study_is_patient_not_found() -> None:
    with pytest.raises(PatientNotFound, match=PATIENT):
        choose_study(PATIENT, [])


def test_no_complete_study_names_what_the_most_complete_one_lacks() -> None:
    poorest = make_study("20240301")  # newest, but only FLAIR
    richest = make_study("20230105")
    studies = [(richest, without_contrast()), (poorest, [make_series("AX T2 FLAIR", **FLAIR2D)])]
    with pytest.raises(ModalityMissing) as info:
        choose_study(PATIENT, studies)
    message = info.value.detail
    assert "none of the 2 studies" in message and PATIENT in message
    assert f"study {richest.study_instance_uid} (2023-01-05) has no usable series for t1ce" in message


def test_among_equally_complete_studies_the_newest_is_reported() -> None:
    old, new = make_study("20230105"), make_study("20240210")
    with pytest.raises(ModalityMissing) as info:
        choose_study(PATIENT, [(old, without_contrast()), (new, without_contrast())])
    assert new.study_instance_uid in info.value.detail
    assert old.study_instance_uid not in info.value.detail


def test_non_mr_study_is_modality_missing_saying_no_mr_series() -> None:
    study = make_study()
    with pytest.raises(ModalityMissing, match=r"has no MR series \(found: CT ×1\)"):
        choose_study(PATIENT, [(study, [make_series("Head", modality="CT", slices=120)])])


def test_ambiguity_in_the_newest_study_surfaces_instead_of_falling_back() -> None:
    old, new = make_study("20230105"), make_study("20240210")
    doubled = [*complete_series(), make_series("t2_tirm_tra_dark-fluid", **FLAIR2D)]
    with pytest.raises(AmbiguousSeries, match=new.study_instance_uid):
        choose_study(PATIENT, [(old, complete_series()), (new, doubled)])


def test_explicit_series_without_study_uid_select_the_study_that_holds_them() -> None:
    old, new = make_study("20230105"), make_study("20240210")
    old_series = complete_series()
    chosen = choose_study(
        PATIENT,
        [(old, old_series), (new, complete_series())],
        explicit={"flair": old_series[1].series_instance_uid},
    )
    assert chosen.study is old
    assert chosen.mapping.series["flair"] is old_series[1]


def test_explicit_series_in_no_study() -> None:
    with pytest.raises(ModalityMissing, match=r"flair=7\.7\.7"):
        choose_study(PATIENT, [(make_study(), complete_series())], explicit={"flair": "7.7.7"})


def test_to_json_carries_the_study() -> None:
    study = make_study("20240210")
    data = choose_study(PATIENT, [(study, complete_series())]).to_json()
    assert data["study_instance_uid"] == study.study_instance_uid
    assert data["study_date"] == "20240210"
    assert set(data["series"]) == {"flair", "t1", "t1ce", "t2"}


# -- assemble: the PACS calls --------------------------------------------------------------------


def test_assemble_lists_newest_first_and_stops_at_the_first_complete_study() -> None:
    oldest, middle, newest = make_study("20210101"), make_study("20220101"), make_study("20230101")
    pacs = FakePacs([(oldest, complete_series()), (middle, complete_series()), (newest, without_contrast())])
    result = assemble(pacs, PATIENT)
    assert result.study is middle
    assert pacs.listed == [newest.key, middle.key]  # the oldest is never listed


def test_assemble_with_a_study_uid_lists_only_that_study() -> None:
    old, new = make_study("20210101"), make_study("20230101")
    pacs = FakePacs([(old, complete_series()), (new, complete_series())])
    result = assemble(pacs, PATIENT, study_instance_uid=old.study_instance_uid)
    assert result.study is old
    assert pacs.listed == [old.key]


def test_assemble_unknown_patient() -> None:
    pacs = FakePacs([(make_study(), complete_series())])
    with pytest.raises(PatientNotFound, match="NOBODY"):
        assemble(pacs, "NOBODY")
    assert pacs.listed == []


def test_assemble_refuses_an_empty_patient_id() -> None:
    with pytest.raises(InvalidInput):
        assemble(FakePacs([]), "  ")


def test_assemble_passes_explicit_series_and_rules() -> None:
    study = make_study()
    series = complete_series()
    result = assemble(FakePacs([(study, series)]), PATIENT, explicit={"t2": series[2].series_instance_uid})
    assert result.mapping.series["t2"] is series[2]
    assert any("given explicitly" in note for note in result.mapping.notes)


# ---- a model that does without some sequences (InputPolicy, issue 19) ----------------------------------

WITHOUT_T1_OR_ONE_OF_FLAIR_T2 = InputPolicy(
    required=("t1ce",), optional=("flair", "t1", "t2"), any_of=(("flair", "t2"),)
)


def test_a_study_lacking_only_what_the_model_does_without_is_chosen_and_says_so() -> None:
    no_t2 = [s for s in complete_series() if s.series_description != "t2_tse_tra"]
    chosen = choose_study(PATIENT, [(make_study(), no_t2)], policy=WITHOUT_T1_OR_ONE_OF_FLAIR_T2)
    assert chosen.mapping.present == ("flair", "t1", "t1ce") and chosen.mapping.missing == ("t2",)
    assert any("t2" in note and "without" in note for note in chosen.mapping.notes)
    with pytest.raises(ModalityMissing, match="no usable series for t2"):  # a model that needs all four
        choose_study(PATIENT, [(make_study(), no_t2)])


def test_the_newest_usable_study_wins_over_an_older_complete_one_but_not_without_a_required_sequence() -> (
    None
):
    older, newer = make_study("20230101"), make_study("20240101")
    no_t2 = [s for s in complete_series() if s.series_description != "t2_tse_tra"]
    policy = WITHOUT_T1_OR_ONE_OF_FLAIR_T2
    chosen = choose_study(PATIENT, [(older, complete_series()), (newer, no_t2)], policy=policy)
    assert chosen.study is newer and chosen.mapping.missing == ("t2",)
    chosen = choose_study(PATIENT, [(older, complete_series()), (newer, without_contrast())], policy=policy)
    assert chosen.study is older and chosen.mapping.missing == ()  # T1ce is required: the follow-up won't do


def test_a_study_missing_a_required_sequence_is_refused_naming_it() -> None:
    policy = WITHOUT_T1_OR_ONE_OF_FLAIR_T2
    with pytest.raises(ModalityMissing, match="no usable series for t1ce"):
        choose_study(PATIENT, [(make_study(), without_contrast())], policy=policy)
    neither = [
        s for s in complete_series() if s.series_description not in ("t2_tse_tra", "t2_tirm_tra_dark-fluid")
    ]
    with pytest.raises(ModalityMissing, match="flair or t2"):
        choose_study(PATIENT, [(make_study(), neither)], policy=policy)
    with pytest.raises(ModalityMissing, match="sequences the model needs"):
        choose_study(
            PATIENT, [(make_study(), neither), (make_study("20200101"), without_contrast())], policy=policy
        )


def test_an_input_policy_names_its_sequences_once_and_round_trips() -> None:
    policy = WITHOUT_T1_OR_ONE_OF_FLAIR_T2
    assert InputPolicy.from_json(policy.to_json()) == policy
    assert InputPolicy.from_json(None) == ALL_FOUR and ALL_FOUR.problem(["flair", "t1", "t1ce", "t2"]) is None
    # A model with fewer channels names only those: the others are not used, never a reason to refuse
    fewer = InputPolicy.from_json({"required": ["t1ce"], "optional": ["flair"]})
    assert fewer.named == ("flair", "t1ce") and fewer.problem(["t1ce"]) is None
    assert fewer.missing_sets() == (("flair",),)
    for wrong in (
        {"required": ["t1ce"], "optional": ["dwi"]},  # not one of the four
        {"required": ["t1ce", "t1"], "optional": ["flair", "t2", "t1"]},  # t1 twice
        {"required": [], "optional": ["flair", "t1", "t1ce", "t2"]},  # nothing required
        {
            "required": ["t1ce"],
            "optional": ["flair", "t1", "t2"],
            "any_of": [["t1ce"]],
        },  # a group of required
    ):
        with pytest.raises(ValueError):
            InputPolicy.from_json(wrong)
