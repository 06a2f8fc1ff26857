"""Files the service package carries itself: the shipped model package travels as package data
(``tumorseg/shipped_model/``, in the wheel), so an installed service finds it wherever it runs; nothing
here depends on a checkout (the development kit finds the checkout's files: ``tumorseg_devkit.paths``)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_MODEL = PACKAGE_DIR / "shipped_model"
"""The default model package (``TUMORSEG_MODEL_PATH`` unset): model.json, model.pt, the model card."""
