"""Hardening pieces that need no Orthanc: credentials kept out of messages, downloads bounded by the
client's slots, the input limits, the overlap check, and library errors mapped into the error tree."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import SimpleITK as sitk

from tumorseg.errors import (
    BrokenSeries,
    ModelError,
    PacsRejected,
    PacsUnavailable,
    SeriesApart,
    SeriesTooLarge,
)
from tumorseg.imaging.volume import SeriesVolume, check_overlap
from tumorseg.limits import InputLimits
from tumorseg.pacs import OrthancClient
from tumorseg.pipeline import _library_errors
from tumorseg.validation import split_credentials

DICM = b"\0" * 128 + b"DICM" + b"\0" * 64


@pytest.mark.parametrize(
    ("url", "bare", "auth"),
    [
        ("http://orthanc:8042", "http://orthanc:8042", None),
        ("http://alice:s3cret@orthanc:8042/api", "http://orthanc:8042/api", ("alice", "s3cret")),
        ("https://bob:p%40ss@[::1]:443", "https://[::1]:443", ("bob", "p%40ss")),
        ("http://carol@pacs.example", "http://pacs.example", ("carol", "")),
    ],
)
def test_split_credentials(url: str, bare: str, auth: tuple[str, str] | None) -> None:
    assert split_credentials(url) == (bare, auth)


def test_credentials_in_the_url_are_used_but_never_shown() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(401)

    client = OrthancClient("http://alice:s3cret@orthanc.test", transport=httpx.MockTransport(handler))
    with client, pytest.raises(PacsRejected) as caught:
        client.system()
    assert client.url == "http://orthanc.test"
    assert seen == [httpx.BasicAuth("alice", "s3cret")._auth_header]
    assert "s3cret" not in caught.value.detail and "alice" not in caught.value.detail

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = OrthancClient("http://alice:s3cret@orthanc.test", transport=httpx.MockTransport(refuse))
    with client, pytest.raises(PacsUnavailable) as unreachable:
        client.system()
    assert "s3cret" not in unreachable.value.detail


def test_downloads_of_series_fetched_side_by_side_share_the_client_slots() -> None:
    """Four series at once through a client with 3 download slots: never more than 3 requests in flight
    (the connection pool is 3 + 2), so no request waits for a connection and times out."""
    lock, now, peak = threading.Lock(), [0], [0]

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.02)
        with lock:
            now[0] -= 1
        return httpx.Response(200, content=DICM)

    client = OrthancClient("http://orthanc.test", transport=httpx.MockTransport(handler), download_workers=3)
    with client:
        threads = [threading.Thread(target=client.download_series, args=(f"s{n}",)) for n in range(4)]
        # download_series(str) asks Orthanc for the instance list first: answer it from the handler too.
        original = client._json
        client._json = lambda method, path, **kw: (  # type: ignore[method-assign]
            {"Instances": [f"{path}-{i}" for i in range(6)]}
            if path.startswith("/series/")
            else original(method, path, **kw)
        )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert peak[0] == 3


LIMITS = InputLimits(
    max_frame_pixels=512 * 512, max_series_frames=300, max_study_bytes=2**30, max_extent_mm=300
)


@pytest.mark.parametrize(
    ("check", "setting"),
    [
        (lambda: LIMITS.check_frame("t1 'X'", 1024, 1024, (0.2, 0.2)), "TUMORSEG_MAX_FRAME_PIXELS"),
        (lambda: LIMITS.check_frame("t1 'X'", 256, 256, (25.0, 25.0)), "TUMORSEG_MAX_EXTENT_MM"),
        (lambda: LIMITS.check_frames("t1 'X'", 301), "TUMORSEG_MAX_SERIES_FRAMES"),
        (lambda: LIMITS.check_depth("t1 'X'", 200, 2.0), "TUMORSEG_MAX_EXTENT_MM"),
        (
            lambda: LIMITS.check_study({"t1 'X'": (512, 512, 300), "t2 'Y'": (512, 512, 900)}),
            "TUMORSEG_MAX_STUDY_GB",
        ),
    ],
)
def test_each_limit_names_the_series_and_its_setting(check: object, setting: str) -> None:
    with pytest.raises(SeriesTooLarge) as caught:
        check()  # type: ignore[operator]
    assert "t1 'X'" in caught.value.detail or "t2 'Y'" in caught.value.detail
    assert setting in caught.value.detail
    assert caught.value.code == "series_too_large"


def test_a_brain_protocol_passes_every_default_limit() -> None:
    limits = InputLimits()
    limits.check_frame("flair", 512, 512, (0.45, 0.45))
    limits.check_frames("t1", 192)
    limits.check_depth("t1", 192, 1.0)
    limits.check_study(dict.fromkeys(("flair", "t1", "t1ce", "t2"), (512, 512, 200)))  # 800 MiB decoded


def volume(origin: tuple[float, float, float], frame: str = "1.2.3", size: int = 40) -> SeriesVolume:
    image = sitk.Image([size, size, size], sitk.sitkFloat32)
    image.SetOrigin(origin)
    image.SetSpacing((2.0, 2.0, 2.0))
    return SeriesVolume(
        image, "1.2.9", frame, "1.2.840.10008.5.1.4.1.1.4", ("1",) * size, f"series at {origin}"
    )


def test_series_apart_from_the_reference_are_refused_and_moved_ones_pass() -> None:
    reference = volume((0.0, 0.0, 0.0))
    check_overlap({"flair": reference, "t1": volume((5.0, -3.0, 4.0))}, "flair")  # patient motion
    check_overlap({"flair": reference, "t2": volume((20.0, 20.0, 20.0), size=10)}, "flair")  # a slab inside
    with pytest.raises(SeriesApart, match="different FrameOfReferenceUIDs"):
        check_overlap({"flair": reference, "t1": volume((500.0, 0.0, 0.0), frame="9.9")}, "flair")
    with pytest.raises(SeriesApart, match="share a FrameOfReferenceUID"):
        check_overlap({"flair": reference, "t1": volume((0.0, 0.0, 70.0))}, "flair")


def test_library_errors_on_the_data_become_errors_of_the_tree() -> None:
    with pytest.raises(BrokenSeries, match="preprocessing failed on this study: ValueError: bad"):
        with _library_errors("preprocessing", BrokenSeries):
            raise ValueError("bad")
    with pytest.raises(ModelError, match="inference failed"):
        with _library_errors("inference", ModelError):
            raise RuntimeError("CUDA out of memory")
    with pytest.raises(SeriesTooLarge):  # errors of the tree pass unchanged
        with _library_errors("export", BrokenSeries):
            raise SeriesTooLarge("x")
    with pytest.raises(KeyError):  # a bug is not disguised as bad input
        with _library_errors("export", BrokenSeries):
            raise KeyError("programming error")
