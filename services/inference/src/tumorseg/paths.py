"""Where the repository's own files are, when tumorseg runs from a checkout (editable install)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
MODELS_DIR = REPO_ROOT / "models"
