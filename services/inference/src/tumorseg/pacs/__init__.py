"""Talking to the PACS: the interface (``Pacs``, in DICOM terms: typed records that carry the UIDs, and the
change feed the auto-trigger follows), Orthanc's REST client and the DICOMweb client."""

from __future__ import annotations

from tumorseg.pacs.base import ChangeBatch, Pacs, UploadResult
from tumorseg.pacs.client import OrthancClient

__all__ = ["ChangeBatch", "OrthancClient", "Pacs", "UploadResult"]
