"""The fused CPU path (torch's private oneDNN operators, ``tumorseg.model.fused``) is compared with the plain
network when a package loads: broken on purpose here (every fused convolution's output shifted, or failing),
the predictor runs the plain network, logs a warning, and /health says so."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient

from tests.models import tiny_package, with_fallback
from tests.orthanc import service_settings
from tumorseg.api.main import create_app
from tumorseg.imaging.preprocess import ModelInput
from tumorseg.model import fused
from tumorseg.model.predictor import FUSED_TOLERANCE, Predictor

REAL_OPS = fused._mkldnn_ops()
pytestmark = pytest.mark.skipif(REAL_OPS is None, reason="this torch has no oneDNN fused convolutions")


class _Broken:
    """One of torch's fused convolution operators (or its overloads, ``.binary``, ``.default``) whose output
    is shifted by ``offset``, or that raises where ``offset`` is None."""

    def __init__(self, op: Any, offset: float | None) -> None:
        self._op, self._offset = op, offset

    def __call__(self, *args: Any) -> Any:
        if self._offset is None:
            raise RuntimeError("mkldnn::_convolution_pointwise() expected at most 10 argument(s)")
        return self._op(*args) + self._offset

    def __getattr__(self, name: str) -> _Broken:
        return _Broken(getattr(self._op, name), self._offset)


class _BrokenOps:
    def __init__(self, offset: float | None) -> None:
        self._offset = offset

    def __getattr__(self, name: str) -> Any:
        op = getattr(REAL_OPS, name)
        return _Broken(op, self._offset) if name.startswith("_convolution") else op


def break_fused_ops(monkeypatch: pytest.MonkeyPatch, offset: float | None) -> None:
    monkeypatch.setattr(fused, "_mkldnn_ops", lambda: _BrokenOps(offset))


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A tiny package with BatchNorm (folded: every block fusable) and a fallback network."""
    return with_fallback(tiny_package(tmp_path / "tiny", norm="BATCH"))


def networks(predictor: Predictor) -> list[Any]:
    return [predictor.network, predictor.fallback, *predictor.variants.values()]


def probabilities(predictor: Predictor) -> np.ndarray:
    array = np.random.default_rng(3).normal(size=(4, 16, 32, 32)).astype(np.float32)
    grid = sitk.Image([32, 32, 16], sitk.sitkUInt8)
    return predictor.predict(ModelInput(array=array, grid=grid, present=("flair", "t1", "t1ce", "t2")))


def test_a_fused_path_that_agrees_with_the_plain_network_is_kept(package: Path) -> None:
    predictor = Predictor.from_package(package)
    assert predictor.fast_path == "fused"
    assert all(fused.is_fused(network) for network in networks(predictor))
    assert Predictor.from_package(package, fast=False).fast_path == "off"


def test_an_offset_below_the_tolerance_passes_and_one_above_it_falls_back(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tolerance is what the check enforces: an error of a tenth of it passes, ten times it does not
    (the tiny network's logits are below 1 here, so the tolerance is FUSED_TOLERANCE itself)."""
    break_fused_ops(monkeypatch, FUSED_TOLERANCE / 10)
    assert Predictor.from_package(package).fast_path == "fused"
    break_fused_ops(monkeypatch, FUSED_TOLERANCE * 10)
    assert Predictor.from_package(package).fast_path.startswith("plain (fused output differed by")


def test_a_shifted_fused_operator_makes_the_predictor_run_the_plain_network(
    package: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reference = probabilities(Predictor.from_package(package, fast=False))
    break_fused_ops(monkeypatch, 0.5)
    with caplog.at_level(logging.WARNING, logger="tumorseg.model.predictor"):
        predictor = Predictor.from_package(package)
    assert predictor.fast_path.startswith("plain (fused output differed by "), predictor.fast_path
    assert predictor.fast_path.endswith(" at warm-up)")
    assert not any(fused.is_fused(network) for network in networks(predictor))
    assert any("the plain network runs instead" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(probabilities(predictor), reference, atol=1e-5)


def test_a_fused_operator_that_fails_makes_the_predictor_run_the_plain_network(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_fused_ops(monkeypatch, None)
    predictor = Predictor.from_package(package)
    assert predictor.fast_path == "plain (fused network failed (RuntimeError) at warm-up)"
    assert not any(fused.is_fused(network) for network in networks(predictor))
    probabilities(predictor)  # runs: no fused operator is called any more


@pytest.fixture
def broken_service(package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The API over ``package`` with the fused operators shifted, and a PACS that is not there (port 9)."""
    break_fused_ops(monkeypatch, 0.5)
    settings = service_settings(
        "http://127.0.0.1:9",
        None,
        model_path=package,
        results_dir=tmp_path / "results",
        brain_extractor="none",  # the fast path only: no extractor to load and warm up
    )
    with TestClient(create_app(settings)) as api:
        yield api


def test_health_says_the_service_fell_back_to_the_plain_network(broken_service: TestClient) -> None:
    model = broken_service.get("/health").json()["model"]
    assert model["loaded"] is True
    assert model["fast_path"].startswith("plain (fused output differed by "), model
