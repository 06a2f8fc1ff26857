"""Series → FLAIR/T1/T1ce/T2 mapping from DICOM metadata (tumorseg.study.mapping, .scoring, .rules)."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.series_info import FLAIR2D, FLAIR3D, MPRAGE, SPGR3D, T1FLAIR, T1SE, T2TSE, make_series
from tumorseg.errors import AmbiguousSeries, InvalidInput, ModalityMissing
from tumorseg.records import SeriesInfo
from tumorseg.study.mapping import SeriesMapping, map_series, propose_mapping
from tumorseg.study.rules import default_rules, load_rules

# (description, protocol, extra fields, expected modality or "reject:<words in the reason>")
TABLE: list[tuple[str, str, dict[str, Any], str]] = [
    # Siemens
    ("t2_tirm_tra_dark-fluid", "", FLAIR2D, "flair"),
    ("t2_space_dark-fluid_sag_p2_iso", "", FLAIR3D, "flair"),
    ("t1_mprage_sag_p2_iso", "", MPRAGE, "t1"),
    ("t1_mprage_tra_KM", "", MPRAGE, "t1ce"),
    ("t2_tse_tra", "", T2TSE, "t2"),
    ("t1_se_tra", "", T1SE, "t1"),
    ("t1_se_tra", "", {**T1SE, "agent": "Gadovist"}, "t1ce"),
    (
        "ep2d_diff_mddw_20_p2",
        "",
        {"tr": 5000, "te": 80, "image_type": ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE")},
        "reject:diffusion",
    ),
    (
        "ep2d_diff_mddw_20_p2_ADC",
        "",
        {"image_type": ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")},
        "reject:diffusion",
    ),
    ("AAHead_Scout_32ch-head-coil", "", {"slices": 128, "acquisition": "3D"}, "reject:localizer"),
    ("localizer", "", {"slices": 3}, "reject:localizer"),
    ("t2_swi_tra_p2_2mm", "", {"tr": 27, "te": 20, "acquisition": "3D"}, "reject:susceptibility"),
    (
        "t1_mprage_sag_p2_iso_MPR_tra",
        "",
        {**MPRAGE, "image_type": ("DERIVED", "PRIMARY", "MPR", "ND")},
        "reject:derived",
    ),
    ("t2_tirm_cor", "", {"tr": 4000, "te": 50, "ti": 150}, "reject:no modality fits"),
    ("ep2d_perf", "", {"tr": 1500, "te": 30}, "reject:perfusion"),
    ("tof_fl3d_tra", "", {"tr": 22, "te": 3.6, "acquisition": "3D"}, "reject:angiography"),
    # GE
    ("Ax T2 FLAIR", "", {"tr": 9000, "te": 120, "ti": 2250}, "flair"),
    ("Sag CUBE FLAIR", "", {**FLAIR3D, "te": 130}, "flair"),
    ("AX T1 FLAIR", "", T1FLAIR, "t1"),
    ("AX T1 FLAIR POST", "", {**T1FLAIR, "agent": "MULTIHANCE"}, "t1ce"),
    ("Ax T2 FRFSE", "", {"tr": 4500, "te": 100}, "t2"),
    ("Sag 3D BRAVO", "", SPGR3D, "t1"),
    ("Ax 3D BRAVO +C", "", SPGR3D, "t1ce"),
    ("3-Plane Loc", "", {"slices": 15}, "reject:localizer"),
    ("ASSET Calibration", "", {"slices": 40}, "reject:calibration"),
    ("Ax DWI", "", {"tr": 6000, "te": 85}, "reject:diffusion"),
    ("Ax SWAN", "", {"acquisition": "3D"}, "reject:susceptibility"),
    ("AX T1 SE", "", T1SE, "t1"),
    ("AX OBL T2 FLAIR", "", {"tr": 9500, "te": 120, "ti": 2375}, "flair"),
    ("AX T1", "", {"tr": 500, "te": 10}, "t1"),
    ("AX T2 FSE", "", {"tr": 4500, "te": 102}, "t2"),
    (
        "Apparent Diffusion Coefficient (mm2/s)",
        "",
        {"image_type": ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")},
        "reject:diffusion",
    ),
    ("T1 POST GAD", "", {}, "t1ce"),
    ("T1+C", "", T1SE, "t1ce"),
    # Philips
    ("T2W_TSE", "", {"tr": 3000, "te": 80}, "t2"),
    ("T1W_3D_TFE", "", {**SPGR3D, "ti": None}, "t1"),
    ("sT1W_3D_TFE +C", "", {**SPGR3D, "ti": None}, "t1ce"),
    ("3D_Brain_VIEW_FLAIR_SHC", "", {**FLAIR3D, "tr": 4800, "te": 300, "ti": 1650}, "flair"),
    ("Survey", "", {"slices": 9}, "reject:localizer"),
    ("DWI_SENSE", "", {}, "reject:diffusion"),
    ("T1W_SE", "", {"tr": 500, "te": 15}, "t1"),
    # Generic / site names
    ("FLAIR 3D SAG", "", FLAIR3D, "flair"),
    ("T1 MPRAGE POST", "", MPRAGE, "t1ce"),
    ("t1_mprage_sag", "", MPRAGE, "t1"),
    ("COR T2 TSE", "", {"tr": 4000, "te": 95}, "t2"),
    ("T2W", "", {}, "t2"),
    ("T1 pre", "", {**T1SE, "agent": "Gadovist"}, "t1"),
    ("T1 nativ", "", T1SE, "t1"),
    ("", "t2_tse_tra", T2TSE, "t2"),
    ("T1 3D GRE FA 12", "", SPGR3D, "t1"),  # a flip angle in the name is not a diffusion FA map
    # Physics rescues an unhelpful name
    ("Series 5", "", {"tr": 9000, "te": 100, "ti": 2500}, "flair"),
    ("Series 7", "", {**T1SE, "agent": "Dotarem"}, "t1ce"),
    ("Series 9", "", {"tr": 4500, "te": 100}, "t2"),
    ("Series 3", "", MPRAGE, "t1"),
    # Rejections
    ("Head CT", "", {"modality": "CT"}, "reject:not an MR series"),
    ("t1_mprage_sag", "", {**MPRAGE, "slices": 10}, "reject:too few slices"),
    ("MIP T1 POST", "", {"image_type": ("DERIVED", "SECONDARY")}, "reject:derived"),
    ("T1 SUB", "", {"image_type": ("DERIVED", "PRIMARY", "M", "SUB")}, "reject:derived"),
    ("ADC", "", {"image_type": ("DERIVED", "PRIMARY", "ADC")}, "reject:diffusion"),
    ("Trace", "", {}, "reject:diffusion"),
    ("FA", "", {}, "reject:diffusion"),
    ("gre_field_mapping", "", {"tr": 400, "te": 4.9}, "reject:field map"),
    ("Series 11", "", {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "reject:localizer"),
    ("Series 12", "", {"tr": 800, "te": 5000}, "reject:no modality fits"),
]


@pytest.mark.parametrize(("description", "protocol", "extra", "expected"), TABLE)
def test_single_series_is_mapped_or_rejected(
    description: str, protocol: str, extra: dict[str, Any], expected: str
) -> None:
    series = make_series(description, protocol=protocol, **extra)
    proposal = propose_mapping([series])
    if expected.startswith("reject:"):
        assert proposal.series == {}
        ((rejected, reason),) = proposal.rejected
        assert rejected is series
        assert expected.removeprefix("reject:") in reason
    else:
        assert proposal.series == {expected: series}, proposal.rejected
        assert proposal.rejected == []


def full_study(**overrides: SeriesInfo) -> list[SeriesInfo]:
    """A realistic Siemens brain-tumour study, with noise series around the four BraTS ones."""
    series = {
        "localizer": make_series("localizer", slices=3),
        "flair": make_series("t2_tirm_tra_dark-fluid", **FLAIR2D),
        "t2": make_series("t2_tse_tra", **T2TSE),
        "dwi": make_series("ep2d_diff_mddw", image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE")),
        "t1": make_series("t1_mprage_sag_p2_iso", **MPRAGE),
        "t1ce": make_series("t1_mprage_sag_p2_iso", agent="Gadovist", **MPRAGE),
    }
    series.update(overrides)
    return list(series.values())


def test_full_study_maps_each_modality_and_lists_every_other_series() -> None:
    study = full_study()
    mapping = map_series(study, study_instance_uid="1.2.3")
    assert mapping.series_uids() == {
        "flair": study[1].series_instance_uid,
        "t1": study[4].series_instance_uid,
        "t1ce": study[5].series_instance_uid,
        "t2": study[2].series_instance_uid,
    }
    assert {s.series_description: r for s, r in mapping.rejected} == {
        "localizer": "localizer/scout",
        "ep2d_diff_mddw": "diffusion (DWI/ADC/trace/FA)",
    }
    assert mapping.notes == []


def test_to_json_has_the_contract_shape() -> None:
    study = full_study()
    data = map_series(study, study_instance_uid="1.2.3").to_json()
    assert data["study_instance_uid"] == "1.2.3"
    assert list(data["series"]) == ["flair", "t1", "t1ce", "t2"]
    assert data["series"]["flair"] == {
        "series_instance_uid": study[1].series_instance_uid,
        "series_description": "t2_tirm_tra_dark-fluid",
        "orthanc_id": study[1].orthanc_id,
    }
    assert data["rejected"][0] == {
        "series_instance_uid": study[0].series_instance_uid,
        "series_description": "localizer",
        "series_number": study[0].series_number,
        "reason": "localizer/scout",
    }
    assert data["notes"] == []
    json.dumps(data)  # plain JSON types only
    assert "study_instance_uid" not in map_series(study).to_json()


def test_pre_and_post_t1_with_identical_names_split_by_contrast_agent() -> None:
    pre = make_series("t1_mprage_sag", **MPRAGE)
    post = make_series("t1_mprage_sag", agent="Gadovist", **MPRAGE)
    # The post-contrast series comes first here so that input order cannot decide.
    mapping = map_series(full_study(t1=post, t1ce=pre))
    assert mapping.series["t1"] is pre
    assert mapping.series["t1ce"] is post


def test_pre_and_post_t1_split_by_name_tokens() -> None:
    pre = make_series("AX T1 SE pre", **T1SE)
    post = make_series("AX T1 SE post", **T1SE)
    mapping = map_series(full_study(t1=pre, t1ce=post))
    assert (mapping.series["t1"], mapping.series["t1ce"]) == (pre, post)


def test_t1_without_contrast_evidence_is_never_guessed_to_be_t1ce() -> None:
    first = make_series("t1_mprage_sag", **MPRAGE)
    second = make_series("t1_mprage_sag", **MPRAGE)
    with pytest.raises(ModalityMissing) as info:
        map_series(full_study(t1=first, t1ce=second))
    message = info.value.detail
    assert "t1ce" in message
    assert "t1 is ambiguous" in message  # and the user is told why
    assert first.series_instance_uid in message and second.series_instance_uid in message


def test_physics_alone_maps_series_with_unhelpful_names() -> None:
    study = [
        make_series("Series 5", **FLAIR2D),
        make_series("Series 6", **T2TSE),
        make_series("Series 7", **MPRAGE),
        make_series("Series 8", agent="Gadovist", **MPRAGE),
    ]
    mapping = map_series(study)
    assert [mapping.series[m] for m in ("flair", "t2", "t1", "t1ce")] == study


def test_contradicting_physics_lowers_confidence() -> None:
    liar = make_series("AX FLAIR", tr=500, te=12, thickness=1.0, slices=150)  # a T1 by its physics
    honest = make_series("AX T2 FLAIR", **FLAIR2D)
    mapping = map_series(full_study(flair=liar, extra=honest))
    # The honest FLAIR wins although the other is much thinner.
    assert mapping.series["flair"] is honest
    reason = {s.series_instance_uid: r for s, r in mapping.rejected}[liar.series_instance_uid]
    assert "fit no profile" in reason and "TR 500" in reason

    with pytest.raises(ModalityMissing, match="flair") as info:
        map_series(full_study(flair=liar))
    assert "AX FLAIR" in info.value.detail  # the near miss is named


def test_two_equally_good_flairs_are_ambiguous_and_both_named() -> None:
    a = make_series("AX T2 FLAIR", number="4", **FLAIR2D)
    b = make_series("AX T2 FLAIR", number="9", **FLAIR2D)
    with pytest.raises(AmbiguousSeries) as info:
        map_series(full_study(flair=a, extra=b))
    message = info.value.detail
    for series in (a, b):
        assert f'series {series.series_number} "AX T2 FLAIR"' in message
        assert series.series_instance_uid in message
    assert "explicitly" in message


def test_thinner_flair_beats_thicker_with_a_note() -> None:
    thick = make_series("AX T2 FLAIR", **FLAIR2D)
    thin = make_series("FLAIR 3D SAG", **{**FLAIR2D, "thickness": 1.0, "slices": 30})
    mapping = map_series(full_study(flair=thick, extra=thin))
    assert mapping.series["flair"] is thin
    (note,) = mapping.notes
    assert note.startswith("flair: chose series")
    assert "thinner slices 1 mm vs 5 mm" in note
    assert thin.series_instance_uid in note and thick.series_instance_uid in note
    reasons = {s.series_instance_uid: r for s, r in mapping.rejected}
    assert "preferred" in reasons[thick.series_instance_uid]


@pytest.mark.parametrize(
    ("better", "worse", "words"),
    [
        ({"acquisition": "3D"}, {"acquisition": "2D"}, "3D acquisition over 2D"),
        # Spacing is compared before the acquisition type.
        ({"thickness": 1.0}, {"thickness": 1.2, "acquisition": "3D"}, "thinner slices 1 mm vs 1.2 mm"),
        ({"slices": 40}, {"slices": 30}, "more slices 40 vs 30"),
        ({"pixel": (0.5, 0.5)}, {"pixel": (0.9, 0.9)}, "finer pixels 0.5×0.5 mm vs 0.9×0.9 mm"),
        ({"spacing": 5.0}, {"spacing": 6.5}, "thinner slices 5 mm vs 6.5 mm"),  # a gap counts
        ({}, {"agent": "Gadovist"}, "higher match score"),  # pre-contrast FLAIR preferred
    ],
)
def test_tie_break_order(better: dict[str, Any], worse: dict[str, Any], words: str) -> None:
    good = make_series("AX T2 FLAIR", **{**FLAIR2D, **better})
    bad = make_series("AX T2 FLAIR", **{**FLAIR2D, **worse})
    mapping = map_series(full_study(flair=bad, extra=good))
    assert mapping.series["flair"] is good
    assert words in mapping.notes[0]


def test_missing_t1ce_names_t1ce_and_the_closest_candidate() -> None:
    study = [s for s in full_study() if s.contrast_bolus_agent == ""]
    with pytest.raises(ModalityMissing) as info:
        map_series(study, study_instance_uid="9.8.7")
    message = info.value.detail
    assert "study 9.8.7 has no usable series for t1ce" in message
    assert "closest t1ce candidate" in message
    assert "flair" not in message.split(";")[0]


def test_non_mr_study_says_there_is_no_mr_series() -> None:
    study = [make_series("Head", modality="CT", slices=200), make_series("Report", modality="SR", slices=1)]
    with pytest.raises(ModalityMissing, match=r"no MR series \(found: CT ×1, SR ×1\)"):
        map_series(study)


def test_a_study_of_unusable_mr_series_says_what_they_are() -> None:
    study = [
        make_series("localizer", slices=3),
        make_series("ep2d_diff", image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE")),
        make_series("DWI"),
    ]
    with pytest.raises(ModalityMissing) as info:
        map_series(study)
    assert "no usable series for flair, t1, t1ce, t2" in info.value.detail
    assert "its series: diffusion ×2, localizer/scout ×1" in info.value.detail


def test_explicit_uids_override_the_rules() -> None:
    thick = make_series("AX T2 FLAIR", **FLAIR2D)
    thin = make_series("FLAIR 3D SAG", **FLAIR3D)
    study = full_study(flair=thick, extra=thin)
    mapping = map_series(study, explicit={"FLAIR": thick.series_instance_uid})
    assert mapping.series["flair"] is thick
    assert mapping.notes == [
        f'flair: series {thick.series_number} "AX T2 FLAIR" (UID {thick.series_instance_uid}) given explicitly'
    ]
    # The explicit choice leaves the pool: the other FLAIR is not used elsewhere.
    assert thin in [s for s, _ in mapping.rejected]


def test_all_four_explicit_even_against_the_rules() -> None:
    study = full_study()
    chosen = {"flair": study[2], "t2": study[1], "t1": study[5], "t1ce": study[0]}
    mapping = map_series(study, explicit={m: s.series_instance_uid for m, s in chosen.items()})
    assert mapping.series == chosen
    assert any("although the rules would reject it (localizer/scout)" in n for n in mapping.notes)


def test_explicit_uid_not_in_study_is_modality_missing() -> None:
    with pytest.raises(ModalityMissing, match=r"t1ce=1\.2\.999") as info:
        map_series(full_study(), explicit={"t1ce": "1.2.999"}, study_instance_uid="5.5")
    assert "t1_mprage_sag_p2_iso" in info.value.detail  # the study's series are listed


@pytest.mark.parametrize(
    "explicit",
    [{"pd": "1.2.3"}, {"t1": ""}, {"t1": "1.2.3", "t1ce": "1.2.3"}],
)
def test_malformed_explicit_mapping_is_invalid_input(explicit: dict[str, str]) -> None:
    with pytest.raises(InvalidInput):
        map_series(full_study(), explicit=explicit)


def test_siemens_nd_twin_loses_to_the_distortion_corrected_series() -> None:
    corrected = make_series("t1_mprage_sag", **MPRAGE)
    uncorrected = make_series("t1_mprage_sag_ND", **MPRAGE)
    mapping = map_series(full_study(t1=uncorrected, extra=corrected))
    assert mapping.series["t1"] is corrected


def test_series_mapping_validates_itself() -> None:
    study = full_study()
    partial = SeriesMapping(series={"flair": study[1], "t1ce": study[2]})  # a model that does without some
    assert partial.present == ("flair", "t1ce") and partial.missing == ("t1", "t2")
    for wrong in ({}, {"dwi": study[1]}):
        with pytest.raises(ValueError, match="maps some of"):
            SeriesMapping(series=wrong)
    with pytest.raises(ValueError, match="two modalities"):
        SeriesMapping(series={"flair": study[1], "t1": study[1], "t1ce": study[2], "t2": study[3]})


@settings(max_examples=40, deadline=None)
@given(st.permutations(range(8)))
def test_mapping_does_not_depend_on_series_order(order: list[int]) -> None:
    study = full_study(
        extra=make_series("FLAIR 3D SAG", **FLAIR3D, uid="9.1"),
        noise=make_series("t2_swi_tra", uid="9.2"),
    )
    expected = map_series(study)
    shuffled = map_series([study[i] for i in order])
    assert shuffled.series == expected.series
    assert shuffled.notes == expected.notes


# -- the rules file -------------------------------------------------------------------------------


def test_shipped_rules_load_through_importlib_resources() -> None:
    text = resources.files("tumorseg.study").joinpath("rules.json").read_text(encoding="utf-8")
    assert json.loads(text)["version"] == 2  # 2: tool_markers and min_margin (defaults for a version-1 file)
    assert load_rules(None) is default_rules()


def _custom_rules(tmp_path: Path, edit: Any) -> Path:
    data = json.loads(resources.files("tumorseg.study").joinpath("rules.json").read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_custom_rules_file_changes_a_decision(tmp_path: Path) -> None:
    site_flair = make_series("NEURO_WATERSUPP_AX")  # a site name with no physics tags
    study = full_study(flair=site_flair)
    with pytest.raises(ModalityMissing, match="flair"):
        map_series(study)

    def add_pattern(data: dict[str, Any]) -> None:
        data["modalities"]["flair"]["name_patterns"].append({"pattern": r"\bwatersupp\b", "weight": 4})

    path = _custom_rules(tmp_path, add_pattern)
    assert map_series(study, rules=path).series["flair"] is site_flair
    assert map_series(study, rules=load_rules(path)).series["flair"] is site_flair


def test_a_custom_rules_file_can_change_the_slice_threshold(tmp_path: Path) -> None:
    short = make_series("FLAIR 3D SAG", **{**FLAIR3D, "slices": 12})
    study = full_study(flair=short)
    with pytest.raises(ModalityMissing):
        map_series(study)
    path = _custom_rules(tmp_path, lambda data: data.update(min_instances=10))
    assert map_series(study, rules=path).series["flair"] is short


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda d: d.update(threshold="high"), "threshold"),
        (lambda d: d["modalities"].pop("t2"), "exactly the keys"),
        (lambda d: d["reject"][0]["name_patterns"].append("(unclosed"), "not a valid regular expression"),
        (lambda d: d.update(tie_brake=[]), "tie_brake"),
        (lambda d: d["modalities"]["t1"]["physics"][0].update(tr=[1000, 100]), "min > max"),
    ],
)
def test_an_unusable_rules_file_is_refused_with_the_field(tmp_path: Path, edit: Any, words: str) -> None:
    path = _custom_rules(tmp_path, edit)
    with pytest.raises(ValueError, match="mapping rules") as info:
        load_rules(path)
    assert words in str(info.value)
    assert str(path) in str(info.value)


def test_a_missing_or_broken_rules_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        load_rules(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_rules(broken)


def test_zero_inversion_time_reads_as_absent() -> None:
    t2 = make_series("Series 4", tr=5000, te=100, ti=0.0)
    assert propose_mapping([t2]).series == {"t2": t2}
    assert propose_mapping([replace(t2, inversion_time=2500.0)]).series.keys() == {"flair"}
