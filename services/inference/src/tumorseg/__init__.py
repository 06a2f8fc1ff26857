"""tumorseg: brain-tumour segmentation next to an Orthanc PACS."""

from __future__ import annotations

__version__ = "0.1.0"
