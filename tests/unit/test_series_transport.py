"""How the Orthanc client decides to download series through Orthanc's DICOMweb plugin (the real plugin's
path is tests/integration/test_pacs_client.py): an Orthanc without it, or whose plugin does not answer,
gets one request per instance."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tumorseg.pacs import OrthancClient
from tumorseg.pacs.client import _plugin_root


def orthanc(routes: dict[str, Callable[[], httpx.Response]]) -> OrthancClient:
    def handler(request: httpx.Request) -> httpx.Response:
        answer = routes.get(request.url.path)
        return answer() if answer else httpx.Response(404, json={"Message": "Unknown resource"})

    return OrthancClient("http://orthanc.test", ("u", "p"), transport=httpx.MockTransport(handler))


def plugin(root_uri: str) -> dict[str, Callable[[], httpx.Response]]:
    return {
        "/plugins": lambda: httpx.Response(200, json=["explorer.js", "dicom-web"]),
        "/plugins/dicom-web": lambda: httpx.Response(200, json={"ID": "dicom-web", "RootUri": root_uri}),
    }


@pytest.mark.parametrize(
    ("root_uri", "root"),
    [
        ("../dicom-web/app/client/index.html", "/dicom-web"),
        ("../pacs/wado/app/client/index.html", "/pacs/wado"),
        ("something else", "/dicom-web"),
        (None, "/dicom-web"),
    ],
)
def test_the_plugins_root_comes_from_its_root_uri(root_uri: object, root: str) -> None:
    assert _plugin_root(root_uri) == root


def test_the_plugin_is_used_at_its_root_once_a_qido_search_answers_there() -> None:
    routes = plugin("../pacs/wado/app/client/index.html")
    routes["/pacs/wado/studies"] = lambda: httpx.Response(200, json=[])
    with orthanc(routes) as client:
        transport = client.series_transport()
        assert transport is not None and transport.url == "http://orthanc.test/pacs/wado"
        assert client.series_transport() is transport  # looked up once
        client._wado_until = 0.0  # due for a new look-up: the same root keeps the same client
        assert client.series_transport() is transport and list(client._plugin_clients) == ["/pacs/wado"]
        assert transport.url_setting == "TUMORSEG_ORTHANC_URL"  # its errors point at Orthanc's settings


@pytest.mark.parametrize(
    "routes",
    [
        {"/plugins": lambda: httpx.Response(200, json=["explorer.js"])},  # no plugin
        plugin("../dicom-web/app/client/index.html"),  # listed, but nothing answers at its root
        {"/plugins": lambda: httpx.Response(403)},  # the plugin list refused
        {"/plugins": lambda: httpx.Response(500, text="oops")},
    ],
    ids=["absent", "not-answering", "refused", "error"],
)
def test_without_a_usable_plugin_series_download_one_instance_at_a_time(
    routes: dict[str, Callable[[], httpx.Response]],
) -> None:
    with orthanc(routes) as client:
        assert client.series_transport() is None


def test_a_failed_look_up_is_tried_again_after_a_while_and_an_answer_is_kept_for_longer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tumorseg.pacs import client as module

    calls: list[str] = []
    up = False

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if not up:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json=["explorer.js"])

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    with OrthancClient("http://orthanc.test", transport=httpx.MockTransport(handler)) as client:
        assert client.series_transport() is None and calls == ["/plugins"]
        up = True
        now[0] += module.WADO_RETRY_S - 1
        assert client.series_transport() is None and calls == ["/plugins"]  # not asked again yet
        now[0] += 2
        assert client.series_transport() is None and calls == ["/plugins"] * 2  # asked again: no plugin
        now[0] += module.WADO_RECHECK_S - 1
        assert client.series_transport() is None and calls == ["/plugins"] * 2  # the answer holds ...
        now[0] += 2
        assert client.series_transport() is None and calls == ["/plugins"] * 3  # ... for WADO_RECHECK_S
