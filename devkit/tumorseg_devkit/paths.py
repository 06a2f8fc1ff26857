"""Where the checkout's own files are: the devkit runs from a checkout (``make setup`` installs it
editable), so they are found from this file's location (``devkit/tumorseg_devkit/paths.py``)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ORTHANC_CONFIG = REPO_ROOT / "services" / "orthanc" / "orthanc.json"
