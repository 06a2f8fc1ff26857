"""Talking to the PACS: the interface (``Pacs``), Orthanc's REST client, the DICOMweb client, and a local
Orthanc process for tests and the demo."""

from __future__ import annotations

from tumorseg.pacs.base import Pacs, UploadResult
from tumorseg.pacs.client import OrthancClient

__all__ = ["OrthancClient", "Pacs", "UploadResult"]
