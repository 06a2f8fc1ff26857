"""Error paths of the Orthanc client, with httpx.MockTransport (the happy paths run against a real Orthanc)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tumorseg.errors import (
    PacsError,
    PacsNotFound,
    PacsProtocolError,
    PacsRejected,
    PacsTimeout,
    PacsUnavailable,
)
from tumorseg.pacs import OrthancClient

Handler = Callable[[httpx.Request], httpx.Response]


def client_with(handler: Handler) -> OrthancClient:
    return OrthancClient("http://orthanc.test", ("u", "p"), transport=httpx.MockTransport(handler))


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (raising(httpx.ConnectError("refused")), PacsUnavailable),
        (raising(httpx.ConnectTimeout("slow connect")), PacsUnavailable),
        (raising(httpx.ReadError("reset")), PacsUnavailable),
        (raising(httpx.RemoteProtocolError("closed mid-answer")), PacsUnavailable),
        (raising(httpx.ReadTimeout("slow")), PacsTimeout),
        (raising(httpx.PoolTimeout("busy")), PacsTimeout),
        (lambda r: httpx.Response(401), PacsRejected),
        (lambda r: httpx.Response(403), PacsRejected),
        (lambda r: httpx.Response(404, json={"HttpError": "Not Found"}), PacsNotFound),
        (lambda r: httpx.Response(500, text="boom"), PacsProtocolError),
        (lambda r: httpx.Response(200, text="<html>proxy login</html>"), PacsProtocolError),
        (lambda r: httpx.Response(200, json={"Name": "not orthanc"}), PacsProtocolError),
    ],
)
def test_system_maps_each_failure_to_its_class(handler: Handler, error: type[PacsError]) -> None:
    with client_with(handler) as client, pytest.raises(error) as caught:
        client.system()
    assert caught.type is error
    assert "orthanc" in caught.value.detail.lower()


def test_rejected_credentials_say_what_to_fix() -> None:
    with client_with(lambda r: httpx.Response(401)) as client, pytest.raises(PacsRejected) as caught:
        client.find_studies("P1")
    assert "TUMORSEG_ORTHANC_USERNAME" in caught.value.detail


def test_timeout_says_which_setting_to_raise() -> None:
    with client_with(raising(httpx.ReadTimeout("slow"))) as client, pytest.raises(PacsTimeout) as caught:
        client.list_series("s")
    assert "TUMORSEG_ORTHANC_TIMEOUT" in caught.value.detail


DICOM = b"\0" * 128 + b"DICM" + b"\x02\x00" * 10


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b""),  # Orthanc's failed stream can be a 200 with an empty body
        httpx.Response(200, content=b"not a dicom file at all" * 10),
        httpx.Response(200, content=DICOM[:140], headers={"Content-Length": str(len(DICOM))}),
    ],
)
def test_download_refuses_empty_truncated_or_foreign_bodies(response: httpx.Response) -> None:
    with client_with(lambda r: response) as client, pytest.raises(PacsProtocolError):
        client.download_instance("i1")


def test_download_accepts_a_dicom_body() -> None:
    with client_with(lambda r: httpx.Response(200, content=DICOM)) as client:
        assert client.download_instance("i1") == DICOM


def test_find_escapes_wildcards_and_filters_exactly() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        seen.append(json.loads(request.content))
        studies = [
            {"ID": pid, "MainDicomTags": {"StudyDate": "2020"}, "PatientMainDicomTags": {"PatientID": pid}}
            for pid in ("A*B", "AXB", "A?B", "AB")
        ]
        return httpx.Response(200, json=studies)

    with client_with(handler) as client:
        assert [s.patient_id for s in client.find_studies("A*B")] == ["A*B"]
        assert [s.patient_id for s in client.find_studies("AXB")] == ["AXB"]
    assert seen[0]["Query"] == {"PatientID": "A?B"}


def test_upload_without_an_id_is_a_protocol_error() -> None:
    with client_with(lambda r: httpx.Response(200, json={"Status": "Success"})) as client:
        with pytest.raises(PacsProtocolError):
            client.upload_instance(DICOM)


@pytest.mark.parametrize("failure", [httpx.ReadError, httpx.RemoteProtocolError])
def test_a_download_broken_on_a_stale_connection_is_retried_once(failure: type[httpx.TransportError]) -> None:
    body = b"\0" * 128 + b"DICM" + b"\0" * 16
    calls: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            raise failure("[Errno 9] Bad file descriptor", request=request)
        return httpx.Response(200, content=body)

    assert client_with(flaky).download_instance("abc") == body and len(calls) == 2

    def down(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise failure("gone", request=request)

    calls.clear()
    with pytest.raises(PacsUnavailable):
        client_with(down).download_instance("abc")
    assert len(calls) == 2  # one retry, then the error


@pytest.mark.parametrize("failure", [httpx.ReadError, httpx.RemoteProtocolError])
def test_idempotent_requests_are_retried_once_on_a_stale_connection(
    failure: type[httpx.TransportError],
) -> None:
    calls: list[str] = []

    def first_read_breaks(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if len(calls) == 1:
            raise failure("[Errno 9] Bad file descriptor", request=request)
        if request.url.path == "/tools/find":
            return httpx.Response(200, json=[])
        return httpx.Response(200, json={"ID": "x", "Status": "AlreadyStored", "Instances": []})

    # queries, and the upload (Orthanc answers a re-sent instance with AlreadyStored)
    for call in (
        lambda c: c.instance_tags("x"),
        lambda c: c.find_studies("P1"),
        lambda c: c.upload_instance(DICOM),
    ):
        calls.clear()
        call(client_with(first_read_breaks))
        assert len(calls) == 2 and calls[0] == calls[1]

    # DELETE is not retried: a second try is not this client's call to make
    calls.clear()
    with pytest.raises(PacsUnavailable):
        client_with(first_read_breaks).delete("series", "x")
    assert calls == ["DELETE /series/x"]
