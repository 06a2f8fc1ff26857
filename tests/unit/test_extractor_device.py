"""Brain extraction runs where the service was told to run: TUMORSEG_DEVICE=cpu keeps deepbet on the CPU even
where torch sees a GPU (a shared GPU host may reserve its cards for others)."""

from __future__ import annotations

import pytest
import torch

from tumorseg import config
from tumorseg.imaging.brain import extractor_device


@pytest.mark.parametrize(
    ("setting", "gpu", "expected"),
    [("cpu", True, "cpu"), ("auto", True, "cuda"), ("cuda", True, "cuda"), ("auto", False, "cpu")],
)
def test_deepbet_follows_the_service_device(
    monkeypatch: pytest.MonkeyPatch, setting: str, gpu: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    settings = config.Settings.model_validate({"device": setting})
    monkeypatch.setattr(config, "get_settings", lambda: settings)
    assert extractor_device() == expected
