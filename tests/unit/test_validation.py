from __future__ import annotations

import pytest
from pydantic import ValidationError

from tumorseg.config import Settings, is_weak_key
from tumorseg.errors import InvalidInput
from tumorseg.pipeline import SegmentRequest
from tumorseg.validation import check_patient_id, check_uid


@pytest.mark.parametrize("value", ["DEMO-0001", "P*1", "a b c", "Ü-123", "x" * 64])
def test_valid_patient_ids_pass(value: str) -> None:
    assert check_patient_id(value) == value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 65, "64"),
        ("A\\B", "backslash"),
        ("A\nB", "control"),
        ("A\x00", "control"),
    ],
)
def test_invalid_patient_ids_are_refused(value: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        check_patient_id(value)


@pytest.mark.parametrize("value", ["1.2.840.10008.5.1.4.1.1.4", "0", "2.25.1234567890"])
def test_valid_uids_pass(value: str) -> None:
    assert check_uid(value, "study") == value


@pytest.mark.parametrize("value", ["", "1.02.3", "1..2", "1.2.", "abc", "1.2;DROP", "1." + "1" * 64])
def test_invalid_uids_are_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="not a DICOM UID"):
        check_uid(value, "study")


def test_segment_request_validates_everything() -> None:
    with pytest.raises(InvalidInput, match="backslash"):
        SegmentRequest(patient_id="A\\B")
    with pytest.raises(InvalidInput, match="study"):
        SegmentRequest(patient_id="A", study_instance_uid="../../x")
    with pytest.raises(InvalidInput, match="flair SeriesInstanceUID"):
        SegmentRequest(patient_id="A", explicit_series={"flair": "x"})
    with pytest.raises(InvalidInput, match="reference"):
        SegmentRequest(patient_id="A", reference="dwi")


@pytest.mark.parametrize("key", ["short", "changeme", "a" * 40, "tumorseg123", "ab" * 20])
def test_weak_keys(key: str) -> None:
    assert is_weak_key(key)


def test_strong_key_is_not_weak() -> None:
    assert not is_weak_key("kQ3v9zLx_2TfPw8yHn4RbJm6")


def test_production_refuses_open_or_weak_keys() -> None:
    with pytest.raises(ValidationError, match="needs TUMORSEG_API_KEY"):
        Settings(_env_file=None, environment="production")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="too weak"):
        Settings(_env_file=None, environment="production", api_key="changeme")  # type: ignore[call-arg]
    ok = Settings(_env_file=None, environment="production", api_key="kQ3v9zLx_2TfPw8yHn4RbJm6")  # type: ignore[call-arg]
    assert ok.api_key is not None
    assert Settings(_env_file=None, api_key="weak").api_key is not None  # development allows it  # type: ignore[call-arg]
