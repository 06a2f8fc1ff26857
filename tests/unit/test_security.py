"""Security on paper: the same-origin rule of the cross-site refusal, and the study choice's log lines,
which name no UID, date or description of the patient's examination."""

from __future__ import annotations

import logging

import pytest

from tests.series_info import FLAIR2D, FLAIR3D, MPRAGE, T2TSE, make_series
from tumorseg.api.main import same_origin
from tumorseg.records import SeriesInfo, StudyInfo
from tumorseg.study.choose import choose_study


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://testserver", "testserver"),
        ("http://127.0.0.1:8000", "127.0.0.1:8000"),
        ("https://seg.hospital.example", "seg.hospital.example"),
        ("https://seg.hospital.example", "seg.hospital.example:443"),
        ("http://seg.hospital.example:80", "seg.hospital.example"),
        ("HTTP://Seg.Hospital.Example", "seg.hospital.example"),
        ("http://[::1]:8000", "[::1]:8000"),
    ],
)
def test_same_origin(origin: str, host: str) -> None:
    assert same_origin(origin, host)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("http://evil.example", "127.0.0.1:8000"),
        ("http://127.0.0.1:8001", "127.0.0.1:8000"),
        ("http://localhost:8000", "127.0.0.1:8000"),  # another name is another origin to a browser
        ("https://seg.hospital.example:8443", "seg.hospital.example"),
        ("http://seg.hospital.example.evil.example", "seg.hospital.example"),
        ("null", "127.0.0.1:8000"),
        ("", "127.0.0.1:8000"),
        ("file://", ""),
        ("http://", ""),
        ("ftp://127.0.0.1:8000", "127.0.0.1:8000"),
        ("http://127.0.0.1:8000/path", "127.0.0.1:8000"),
        ("http://user@127.0.0.1:8000", "127.0.0.1:8000"),
        ("http://127.0.0.1:x", "127.0.0.1:x"),
        ("http://[::1]:8000", "[::2]:8000"),
        ("http://evil.example", ""),
    ],
)
def test_not_same_origin(origin: str, host: str) -> None:
    assert not same_origin(origin, host)


# ---- no PHI in the study choice's log -------------------------------------------------------------

PATIENT = "PAT-SECRET-0042"


def study(uid: str, date: str) -> StudyInfo:
    return StudyInfo(
        key=f"orthanc-{uid[-4:]}",
        study_instance_uid=uid,
        patient_id=PATIENT,
        study_date=date,
        study_time="101500",
        study_description="MRI BRAIN ROUTINE",
        series_count=0,
    )


def identifying(studies: list[tuple[StudyInfo, list[SeriesInfo]]]) -> set[str]:
    """What must not reach a log: UIDs, dates (both spellings), descriptions, Orthanc ids, the PatientID."""
    found = {PATIENT}
    for info, series in studies:
        digits = info.study_date
        found |= {info.study_instance_uid, info.key, info.study_description, digits}
        found.add(f"{digits[:4]}-{digits[4:6]}-{digits[6:]}")
        for s in series:
            found |= {s.series_instance_uid, s.key, s.series_description}
    return {text for text in found if text}


def logged(caplog: pytest.LogCaptureFixture) -> str:
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(getattr(record, "fields", "")))
    return "\n".join(parts)


def test_the_study_choice_logs_no_uid_date_or_description(caplog: pytest.LogCaptureFixture) -> None:
    # An incomplete newer study, then a complete older one with two FLAIR candidates (a note names both).
    newer = study("1.2.826.0.1.3680043.99.7001", "20250309")
    older = study("1.2.826.0.1.3680043.99.7002", "20240102")
    newer_series = [make_series("ax_t2_tse_followup", **T2TSE), make_series("mprage_sag_followup", **MPRAGE)]
    older_series = [
        make_series("localizer_3plane", slices=3),
        make_series("ax_flair_thick", **FLAIR2D),
        make_series("sag_flair_3d_iso", **FLAIR3D),
        make_series("ax_t2_tse_baseline", **T2TSE),
        make_series("mprage_sag_native", **MPRAGE),
        make_series("mprage_sag_gadovist", agent="Gadovist", **MPRAGE),
    ]
    studies = [(newer, newer_series), (older, older_series)]
    with caplog.at_level(logging.DEBUG, logger="tumorseg"):
        chosen = choose_study(PATIENT, studies)
        explicit = choose_study(PATIENT, studies, explicit={"flair": older_series[1].series_instance_uid})
    assert chosen.study is older and explicit.study is older
    assert chosen.mapping.notes and explicit.mapping.notes  # the notes do name series: in the result only
    text = logged(caplog)
    leaked = sorted(value for value in identifying(studies) if value in text)
    assert not leaked, f"the log names {leaked}:\n{text}"
    assert "chose 1 of 2 studies" in text  # the choice is still logged
