"""Model output → mask on the reference lattice."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tests.geometry import lattice, rotation
from tumorseg.imaging import grid as g
from tumorseg.imaging.postprocess import to_reference_mask
from tumorseg.labels import regions_to_labels


def full_lattice_mask(probabilities: np.ndarray, model_grid: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """The straightforward way: every reference voxel resampled (what the cropped version must equal)."""
    regions = [
        sitk.GetArrayFromImage(g.resample(g.from_array(c, model_grid), reference)) > 0.5
        for c in probabilities
    ]
    return regions_to_labels(np.stack(regions))


@pytest.mark.parametrize(
    ("spacing", "direction"),
    [((0.9, 0.9, 4.0), rotation(0, 15)), ((1.0, 1.0, 1.0), np.eye(3)), ((0.5, 0.5, 3.0), rotation(0, 90))],
)
def test_resampling_only_the_covered_box_changes_nothing(
    spacing: tuple[float, float, float], direction: np.ndarray
) -> None:
    reference = lattice((120, 110, 40), spacing, direction, (-50.0, -40.0, -30.0))
    model_grid = g.crop(g.model_grid(reference), (20, 25, 10), (48, 40, 32))
    i, j, k = np.meshgrid(*[np.arange(n) for n in model_grid.GetSize()], indexing="ij")
    r = np.sqrt((i - 24) ** 2 + (j - 20) ** 2 + (k - 16) ** 2)
    probabilities = np.stack([r < 9, r < 14, (r > 5) & (r < 9)]).astype(np.float32)
    probabilities += np.random.default_rng(0).uniform(0, 0.3, probabilities.shape).astype(np.float32)
    mask = to_reference_mask(probabilities, model_grid, reference, min_component_ml=0.0)
    assert mask.GetSize() == reference.GetSize() and mask.GetDirection() == reference.GetDirection()
    expected = full_lattice_mask(probabilities, model_grid, reference)
    assert np.count_nonzero(expected) > 100
    assert np.array_equal(sitk.GetArrayFromImage(mask), expected)


@pytest.mark.parametrize("centre", [(24, 20, 16), (2, 38, 30)], ids=["inside", "at-the-grid-edge"])
def test_resampling_only_near_the_tumour_changes_nothing(centre: tuple[int, int, int]) -> None:
    """Smooth probabilities crossing the threshold between grid nodes: the box around the voxels above
    it must hold every interpolation that can exceed it."""
    reference = lattice((120, 110, 40), (0.9, 0.9, 4.0), rotation(0, 15), (-50.0, -40.0, -30.0))
    model_grid = g.crop(g.model_grid(reference), (20, 25, 10), (48, 40, 32))
    i, j, k = np.meshgrid(*[np.arange(n) for n in model_grid.GetSize()], indexing="ij")
    r2 = (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2
    probabilities = np.stack([np.exp(-r2 / s) for s in (40.0, 120.0, 25.0)]).astype(np.float32)
    mask = to_reference_mask(probabilities, model_grid, reference, min_component_ml=0.0)
    expected = full_lattice_mask(probabilities, model_grid, reference)
    assert np.count_nonzero(expected) > 20
    assert np.array_equal(sitk.GetArrayFromImage(mask), expected)


def test_a_model_grid_outside_the_reference_gives_an_empty_mask() -> None:
    reference = lattice((20, 20, 10), (1.0, 1.0, 1.0), np.eye(3), (0.0, 0.0, 0.0))
    far = lattice((16, 16, 16), (1.0, 1.0, 1.0), np.eye(3), (500.0, 500.0, 500.0))
    mask = to_reference_mask(np.ones((3, 16, 16, 16), np.float32), far, reference)
    assert not sitk.GetArrayFromImage(mask).any()


def test_small_components_are_removed() -> None:
    reference = lattice((40, 40, 20), (1.0, 1.0, 1.0), np.eye(3), (0.0, 0.0, 0.0))
    probabilities = np.zeros((3, 40, 40, 20), np.float32)
    probabilities[1, 5:20, 5:20, 5:15] = 1.0  # 2.25 mL of oedema
    probabilities[1, 30, 30, 10] = 1.0  # one stray voxel
    mask = sitk.GetArrayFromImage(
        to_reference_mask(probabilities, reference, reference, min_component_ml=0.1)
    )
    assert np.count_nonzero(mask) == 15 * 15 * 10 and set(np.unique(mask)) == {0, 2}


@pytest.mark.parametrize(
    ("et_voxels", "spacing", "min_enhancing_ml", "enhancing_kept"),
    [
        (27, (1.0, 1.0, 1.0), 0.1, False),
        (27, (1.0, 1.0, 1.0), 0.02, True),
        (125, (1.0, 1.0, 1.0), 0.1, True),
        (125, (1.0, 1.0, 0.5), 0.1, False),  # 125 voxels of 0.5 mm³: 0.0625 mL
        (125, (1.0, 1.0, 0.5), 0.05, True),
    ],
    ids=["small-relabelled", "above-the-limit", "large-kept", "half-mm3-relabelled", "half-mm3-kept"],
)
def test_a_small_enhancing_region_becomes_necrotic_core(
    et_voxels: int, spacing: tuple[float, float, float], min_enhancing_ml: float, enhancing_kept: bool
) -> None:
    reference = lattice((40, 40, 20), spacing, np.eye(3), (0.0, 0.0, 0.0))
    probabilities = np.zeros((3, 40, 40, 20), np.float32)
    probabilities[1, 5:25, 5:25, 2:18] = 1.0  # oedema (WT)
    probabilities[0, 10:20, 10:20, 5:15] = 1.0  # tumour core (TC)
    side = round(et_voxels ** (1 / 3))
    probabilities[2, 12 : 12 + side, 12 : 12 + side, 7 : 7 + side] = 1.0  # enhancing (ET), inside TC
    plain = sitk.GetArrayFromImage(to_reference_mask(probabilities, reference, reference))
    mask = sitk.GetArrayFromImage(
        to_reference_mask(probabilities, reference, reference, min_enhancing_ml=min_enhancing_ml)
    )
    assert np.count_nonzero(plain == 4) == et_voxels
    assert np.array_equal(mask > 0, plain > 0) and np.array_equal(
        np.isin(mask, (1, 4)), np.isin(plain, (1, 4))
    )
    if enhancing_kept:
        assert np.array_equal(mask, plain)
    else:
        assert not np.any(mask == 4) and np.array_equal(mask == 1, np.isin(plain, (1, 4)))
