"""What both PACS clients share: one pooled ``httpx.Client`` and the mapping of transport failures to
the service's PACS errors (see ``tumorseg.errors``).

Error contract: connection refused/reset → ``PacsUnavailable``; read/write/pool timeout → ``PacsTimeout``;
401/403 → ``PacsRejected``; 404 → ``PacsNotFound``; any other non-2xx, non-JSON or empty answer →
``PacsProtocolError``. A connection that cannot be opened is retried by the transport
(``connect_retries``); an idempotent request is sent once more when it broke on a stale pooled keep-alive
connection. Nothing else is retried.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx

from tumorseg.errors import (
    PacsError,
    PacsNotFound,
    PacsProtocolError,
    PacsRejected,
    PacsTimeout,
    PacsUnavailable,
)
from tumorseg.validation import split_credentials

log = logging.getLogger(__name__)

# A pooled keep-alive connection the server closed between two requests fails with one of these.
_STALE_CONNECTION = (httpx.ReadError, httpx.RemoteProtocolError)
_T = TypeVar("_T")
_Self = TypeVar("_Self", bound="HttpPacs")


class HttpPacs:
    """A PACS over HTTP. Thread-safe (one ``httpx.Client`` with a connection pool).

    ``timeout`` bounds one call (connect, read, write, pool); the connect part is capped at 10 s so an
    unreachable host is reported quickly. ``transport`` is for tests (``httpx.MockTransport``).
    ``name`` and ``settings`` word the error messages ("Orthanc at …", "check TUMORSEG_ORTHANC_URL").
    """

    name = "the PACS"
    url_setting = "TUMORSEG_ORTHANC_URL"
    credentials_hint = "check TUMORSEG_ORTHANC_USERNAME/PASSWORD"

    def __init__(
        self,
        url: str,
        auth: tuple[str, str] | None = None,
        timeout: float = 60.0,
        *,
        download_workers: int = 8,
        connect_retries: int = 2,
        transport: httpx.BaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        # Credentials written into the URL (http://user:pass@host) never reach a message or a log line.
        self.url, url_auth = split_credentials(url.rstrip("/"))
        self.download_workers = download_workers
        # What a client of another API on the same server (``sibling``) is built with.
        self._auth, self._timeout = auth or url_auth, timeout
        self._connect_retries, self._transport = connect_retries, transport
        # Every download of this client, over all series fetched side by side, waits here rather than for
        # a pooled connection (whose wait counts against the timeout and turned waiting into 504s).
        self._download_slots = threading.BoundedSemaphore(download_workers)
        self._client = httpx.Client(
            base_url=self.url,
            auth=auth or url_auth,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport or httpx.HTTPTransport(retries=connect_retries),
            limits=httpx.Limits(max_connections=max(download_workers, 4) + 2),
            headers={"Accept": "application/json", **(headers or {})},
        )

    def sibling(self, cls: type[_Self], path: str) -> _Self:
        """A ``cls`` client of the API at ``path`` on this server (Orthanc's DICOMweb plugin at
        ``/dicom-web``), with this client's credentials, timeout, number of download slots and transport."""
        return cls(
            f"{self.url}{path}",
            self._auth,
            self._timeout,
            download_workers=self.download_workers,
            connect_retries=self._connect_retries,
            transport=self._transport,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport and error mapping ---------------------------------------------------------------

    @contextmanager
    def _mapped_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except PacsError:
            raise
        except httpx.ConnectTimeout as exc:
            raise PacsUnavailable(
                f"{self.name} at {self.url} cannot be reached ({what}): connect timed out"
            ) from exc
        except httpx.TimeoutException as exc:
            raise PacsTimeout(
                f"{self.name} at {self.url} did not answer in time ({what}); "
                "raise TUMORSEG_ORTHANC_TIMEOUT if it is just slow"
            ) from exc
        except httpx.TransportError as exc:
            raise PacsUnavailable(
                f"{self.name} at {self.url} cannot be reached ({what}): {type(exc).__name__}: {exc}; "
                f"check that it runs and {self.url_setting}"
            ) from exc

    def _check(self, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status < 300:
            return
        if status in (401, 403):
            raise PacsRejected(
                f"{self.name} at {self.url} refused the credentials ({what}: HTTP {status}); "
                f"{self.credentials_hint}"
            )
        if status == 404:
            raise PacsNotFound(f"{self.name} has no such resource ({what})")
        raise PacsProtocolError(f"{self.name} answered HTTP {status} to {what}: {response.text[:200]}")

    def _once_more_if_stale(self, what: str, call: Callable[[], _T]) -> _T:
        """``call()``, and once more if it broke on a stale pooled keep-alive connection.

        A read that fails on a connection the server closed between two requests ("Bad file descriptor",
        "Server disconnected") is retried once on a fresh connection; only idempotent requests come here.
        If the server is really gone, the retry fails to connect and says so."""
        try:
            return call()
        except PacsUnavailable as exc:
            if not isinstance(exc.__cause__, _STALE_CONNECTION):
                raise
            log.info("retrying %s after %s", what, type(exc.__cause__).__name__)
            return call()

    def _json(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        """One request whose answer is JSON. GET (or ``idempotent=True``) is retried on a stale connection."""
        what = f"{method} {path}"

        def send() -> httpx.Response:
            with self._mapped_errors(what):
                return self._client.request(method, path, **kwargs)

        retry = method == "GET" if idempotent is None else idempotent
        response = self._once_more_if_stale(what, send) if retry else send()
        self._check(response, what)
        try:
            return response.json()
        except ValueError as exc:
            raise PacsProtocolError(f"{self.name} answered {what} with a body that is not JSON") from exc
