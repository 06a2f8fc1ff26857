"""Talking to Orthanc: the REST client, and a local Orthanc process for tests and the demo."""

from __future__ import annotations

from tumorseg.pacs.client import OrthancClient, UploadResult

__all__ = ["OrthancClient", "UploadResult"]
