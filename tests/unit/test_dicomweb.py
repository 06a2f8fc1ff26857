"""The DICOMweb client's own parsing, without a server: DICOM JSON → the simplified tags the mapping
reads, the multipart stream cut into parts however the chunks fall, STOW-RS failures, and the settings
that choose it; the change feed's stability rule. Against a real DICOMweb server: ``tests/integration/test_dicomweb.py``."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from tests.dicom_factory import mr_instance
from tumorseg.config import Settings
from tumorseg.errors import PacsProtocolError, PacsRejected
from tumorseg.pacs.dicomweb import DicomwebClient, multipart_parts, simplified
from tumorseg.pacs.tags import describe_series
from tumorseg.pacs.watch import QuietStudies


def test_dicom_json_becomes_simplified_tags() -> None:
    dataset = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]},
        "00180080": {"vr": "DS", "Value": [2300]},
        "00200037": {"vr": "DS", "Value": [1, 0, 0, 0, 0.966, -0.259]},
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "M", "NORM"]},
        "00180010": {"vr": "LO"},  # present, empty
        "7FE00010": {"vr": "OW", "BulkDataURI": "http://pacs/bulk/1"},
        "00291010": {"vr": "OB", "InlineBinary": "AAAA"},  # private: left out
        "52009229": {
            "vr": "SQ",
            "Value": [{"00189112": {"vr": "SQ", "Value": [{"00180080": {"vr": "DS", "Value": [9000]}}]}}],
        },
    }
    tags = simplified(dataset)
    assert tags["PatientName"] == "DOE^JANE"
    assert tags["RepetitionTime"] == "2300"
    assert tags["ImageOrientationPatient"] == "1\\0\\0\\0\\0.966\\-0.259"
    assert tags["ImageType"] == "ORIGINAL\\PRIMARY\\M\\NORM"
    assert tags["ContrastBolusAgent"] == ""
    assert "PixelData" not in tags and len(tags) == 6
    shared = tags["SharedFunctionalGroupsSequence"]
    assert shared == [{"MRTimingAndRelatedParametersSequence": [{"RepetitionTime": "9000"}]}]
    series = describe_series("1.2", {"SeriesInstanceUID": "1.2"}, tags, instance_count=3)
    assert series.repetition_time == 2300.0 and series.image_type[:2] == ("ORIGINAL", "PRIMARY")


def _multipart(parts: list[bytes], boundary: str = "b0und4ry") -> bytes:
    body = b"preamble to ignore\r\n"
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return body + f"--{boundary}--\r\nepilogue".encode()


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_multipart_parts_come_out_whole_however_the_chunks_fall(chunk: int) -> None:
    parts = [b"first\r\n--not-the-boundary", b"", b"x" * 3000 + b"\r\n\r\n", b"last"]
    body = _multipart(parts)
    chunks = iter(body[i : i + chunk] for i in range(0, len(body), chunk))
    assert (
        list(multipart_parts('multipart/related; type="application/dicom"; boundary=b0und4ry', chunks))
        == parts
    )


def test_a_truncated_or_foreign_answer_is_refused() -> None:
    body = _multipart([b"one", b"two"])
    with pytest.raises(PacsProtocolError, match="closing boundary"):
        list(multipart_parts("multipart/related; boundary=b0und4ry", iter([body[:-20]])))
    with pytest.raises(PacsProtocolError, match="multipart/related"):
        list(multipart_parts("application/dicom+json", iter([b"[]"])))
    with pytest.raises(PacsProtocolError, match="boundary"):
        list(multipart_parts("multipart/related; type=application/dicom", iter([body])))


def _client(handler: httpx.MockTransport) -> DicomwebClient:
    return DicomwebClient("http://pacs.example/dicom-web", token="t0ken", transport=handler)


def test_stow_rs_failures_and_refused_tokens_are_named() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/studies"):
            return httpx.Response(401)
        failed = {"00081198": {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [49442]}}]}}
        return httpx.Response(
            409, content=json.dumps(failed), headers={"Content-Type": "application/dicom+json"}
        )

    with _client(httpx.MockTransport(answer)) as pacs:
        with pytest.raises(PacsProtocolError, match="49442"):
            pacs.upload_instance(mr_instance("P", "1.2.3", "1.2.3.4", 0))
        with pytest.raises(PacsRejected, match="TUMORSEG_DICOMWEB_TOKEN"):
            pacs.version()
    stow = seen[0]
    assert stow.url.path == "/dicom-web/studies/1.2.3"
    assert stow.headers["Authorization"] == "Bearer t0ken"
    assert stow.headers["Content-Type"].startswith('multipart/related; type="application/dicom"; boundary=')


def test_no_content_is_no_match() -> None:
    with _client(httpx.MockTransport(lambda request: httpx.Response(204))) as pacs:
        assert pacs.find_studies("NOBODY") == []


def test_the_settings_choose_dicomweb_consistently() -> None:
    def settings(**values: object) -> Settings:
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    assert (
        settings(dicomweb_url="http://pacs/dicom-web/", dicomweb_token="").dicomweb_url
        == "http://pacs/dicom-web"
    )
    assert settings(dicomweb_url="", dicomweb_token="").dicomweb_token is None
    with pytest.raises(ValidationError, match="TUMORSEG_DICOMWEB_URL is not"):
        settings(dicomweb_token="t0ken")
    with pytest.raises(ValidationError, match="not both"):
        settings(dicomweb_url="http://pacs", dicomweb_token="t", orthanc_username="u", orthanc_password="p")
    assert settings(dicomweb_url="http://pacs", auto_segment=True).auto_segment  # QIDO polling
    with pytest.raises(ValidationError, match="not an http"):
        settings(dicomweb_url="ftp://pacs")


def test_a_pacs_that_cannot_send_the_stored_transfer_syntax_is_asked_for_its_default() -> None:
    """``transfer-syntax=*`` refused (406): the plain media type, which every WADO-RS server sends."""
    instance = mr_instance("P", "1.2.3", "1.2.3.4", 0)
    accepted: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/dicom-web/studies/1.2.3/series/1.2.3.4"
        accepted.append(request.headers["Accept"])
        if "transfer-syntax" in request.headers["Accept"]:
            return httpx.Response(406)
        body = b"--xyz\r\nContent-Type: application/dicom\r\n\r\n" + instance + b"\r\n--xyz--\r\n"
        return httpx.Response(200, content=body, headers={"Content-Type": "multipart/related; boundary=xyz"})

    # a record of UIDs alone, never listed by this client: its UIDs are enough to fetch it
    series = describe_series(
        "1.2.3.4", {"SeriesInstanceUID": "1.2.3.4"}, {}, instance_count=1, study_instance_uid="1.2.3"
    )
    with _client(httpx.MockTransport(answer)) as pacs:
        assert pacs.download_series(series) == [instance]
    assert accepted == [
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        'multipart/related; type="application/dicom"',
    ]


def test_a_study_is_complete_once_unchanged_for_stable_s_and_told_until_acknowledged() -> None:
    now = [0.0]
    quiet = QuietStudies(stable_s=5.0, clock=lambda: now[0])
    assert quiet.poll({"1.1": "a", "1.2": "x"}, None)[0] == []  # first seen
    now[0] = 4.0
    ready, cursor = quiet.poll({"1.1": "a", "1.2": "y"}, None)
    assert ready == []  # 1.1 too soon; 1.2 still changing
    now[0] = 5.0
    ready, cursor = quiet.poll({"1.1": "a", "1.2": "y"}, cursor)
    assert ready == ["1.1"]  # five seconds unchanged
    now[0] = 6.0
    assert quiet.poll({"1.1": "a", "1.2": "y"}, None)[0] == ["1.1"]  # not acknowledged: told again
    now[0] = 9.0
    ready, acknowledged = quiet.poll({"1.1": "a", "1.2": "y"}, "poll:another0000:9")
    assert ready == ["1.1", "1.2"]  # a cursor it did not give acknowledges nothing
    ready, cursor = quiet.poll({"1.1": "a", "1.2": "y"}, acknowledged)
    assert ready == []  # both handled
    now[0] = 10.0
    assert quiet.poll({"1.1": "b", "1.2": "y"}, cursor)[0] == []  # 1.1 gained images: watched again
    now[0] = 15.0
    ready, cursor = quiet.poll({"1.1": "b"}, cursor)
    assert ready == ["1.1"]  # complete with its new images; 1.2 left the window
    assert quiet.poll({"1.1": "b", "1.2": "y"}, cursor)[0] == []  # 1.2 back: seen anew
