"""Follow-up phantoms, the cheap parts: the pose of each visit and the truth volumes. The visits
themselves (same head, tumour scaled by the factor) are generated and segmented in
tests/integration/test_timeline.py."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from tumorseg.cli import app
from tumorseg_devkit.synth.followup import _posed_affine, followup_case, truth_ml
from tumorseg_devkit.synth.phantom import BRATS_AFFINE, SHAPE


def test_a_visit_lies_turned_and_moved_about_the_head_centre() -> None:
    assert np.allclose(_posed_affine(0.0, (0, 0, 0)), BRATS_AFFINE)
    posed = _posed_affine(10.0, (3.0, -4.0, 5.0))
    rotation = posed[:3, :3] @ np.linalg.inv(BRATS_AFFINE[:3, :3])
    assert np.allclose(rotation @ rotation.T, np.eye(3)) and np.isclose(np.linalg.det(rotation), 1.0)
    assert np.degrees(np.arccos((np.trace(rotation) - 1) / 2)) == pytest.approx(10.0)
    centre = np.append((np.asarray(SHAPE) - 1) / 2.0, 1.0)
    assert np.allclose((posed @ centre - BRATS_AFFINE @ centre)[:3], (3.0, -4.0, 5.0))


def test_truth_volumes_count_the_labels() -> None:
    seg = np.zeros((10, 10, 10), dtype=np.uint8)
    seg[0, 0, :3], seg[1, 0, :5], seg[2, 0, :7] = 1, 2, 4
    assert truth_ml(seg) == {"et": 0.007, "tc": 0.01, "wt": 0.015, "ncr": 0.003, "ed": 0.005}


def test_an_absurd_factor_is_refused() -> None:
    with pytest.raises(ValueError, match="factor"):
        followup_case(0, 0.0)
    answer = CliRunner().invoke(app, ["phantom-followup", "--out", "/nonexistent", "--factors", "1,x"])
    assert answer.exit_code == 2 and "--factors" in answer.output
