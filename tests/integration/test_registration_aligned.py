"""Registration that costs little when there is little to find (issue 43): series registered and masked
together already (BraTS-style input) are taken as aligned without a search; a series that moved, or one on
another lattice, is still searched and its motion found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg.imaging.registration import already_aligned, prepare_fixed, register, register_study
from tumorseg.sequences import SEQUENCES

pytestmark = pytest.mark.integration  # a whole BraTS phantom registered: seconds


@pytest.fixture(scope="module")
def volumes(phantom_case: Path) -> dict[str, sitk.Image]:
    return {m: sitk.ReadImage(str(next(phantom_case.glob(f"*_{m}.nii.gz")))) for m in SEQUENCES}


def shifted(image: sitk.Image, offset_mm: tuple[float, float, float]) -> sitk.Image:
    """``image``'s content moved by ``offset_mm`` on its own lattice (zeros come in at the edge of the brain,
    as when a moved series is masked on its own)."""
    transform = sitk.TranslationTransform(3, [-v for v in offset_mm])
    return sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0, image.GetPixelID())


def test_series_masked_together_are_aligned_without_a_search(volumes: dict[str, sitk.Image]) -> None:
    registrations = register_study(volumes, "flair")
    assert set(registrations) == {"t1", "t1ce", "t2"}
    for name, registration in registrations.items():
        assert registration.iterations == 0, name  # no search ran
        assert not registration.applied and not registration.failed and registration.warning is None
        assert registration.overlap > 0.99 and registration.coverage > 0.99
        assert registration.metric == registration.metric_initial < 0


def test_a_moved_series_is_searched_and_its_motion_found(volumes: dict[str, sitk.Image]) -> None:
    fixed = prepare_fixed(volumes["flair"])
    moved = shifted(volumes["t2"], (2.0, -1.5, 0.0))
    assert not already_aligned(fixed, moved)
    registration = register(fixed, moved, label="t2")
    assert registration.applied and registration.iterations > 0
    # reference → series: a point of the reference is 2 mm along x, -1.5 mm along y in the moved series
    assert np.allclose(registration.transform.GetTranslation(), (2.0, -1.5, 0.0), atol=0.3)


def test_another_lattice_is_searched(volumes: dict[str, sitk.Image]) -> None:
    fixed = prepare_fixed(volumes["flair"])
    other = sitk.Image(volumes["t1"])
    other.SetOrigin(tuple(v + 0.5 for v in other.GetOrigin()))
    assert already_aligned(fixed, volumes["t1"]) and not already_aligned(fixed, other)
