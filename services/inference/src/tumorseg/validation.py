"""Checks on identifiers that callers send, against their DICOM value representations (PS3.5 §6.2).

PatientID is LO: at most 64 characters, no control characters, no backslash (the multi-value separator,
and an Orthanc list-matching operator). UIDs are UI: at most 64 characters of digits and dots, components
without leading zeros. Violations raise ``InvalidInput`` (422) with what is wrong.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from tumorseg.errors import InvalidInput

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def check_patient_id(value: str) -> str:
    if not value or not value.strip():
        raise InvalidInput("the PatientID is empty")
    if len(value) > 64:
        raise InvalidInput(f"a PatientID has at most 64 characters (DICOM LO); got {len(value)}")
    if "\\" in value:
        raise InvalidInput("a PatientID cannot contain a backslash (DICOM LO)")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InvalidInput("a PatientID cannot contain control characters (DICOM LO)")
    return value


def check_uid(value: str, what: str) -> str:
    if len(value) > 64 or not _UID.match(value):
        raise InvalidInput(
            f"{what} {value[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters)"
        )
    return value


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without ``user:password@`` (safe for messages and logs), and that pair if it had one."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare, (parts.username or "", parts.password or "")
