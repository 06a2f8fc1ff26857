"""``registration.closing``: ITK's binary closing computed on the box around the foreground gives the voxels
the closing of the whole image gives (random blobs, at the borders too, empty and full masks)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tumorseg.imaging.registration import closing


def blobs(rng: np.random.Generator, case: int) -> sitk.Image:
    shape = tuple(int(n) for n in rng.integers(6, 40, 3))
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, dtype=np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        c, r = [int(rng.integers(0, n)) for n in shape], int(rng.integers(1, 12))
        mask |= ((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 < r * r).astype(np.uint8)
    mask &= (rng.random(shape) > 0.15).astype(np.uint8)  # holes and ragged surfaces to close
    if case % 7 == 0:
        mask[:] = 0  # empty
    elif case % 7 == 1:
        mask[:] = 1  # everything
    elif case % 7 == 2:
        mask[tuple(slice(int(rng.integers(0, n)), None) for n in shape)] = 1  # against three faces
    image = sitk.GetImageFromArray(mask)
    image.SetSpacing((2.0, 1.5, 3.0))
    image.SetOrigin((4.0, -3.0, 1.0))
    return image


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_closing_on_the_foregrounds_box_is_the_closing_of_the_image(radius: int) -> None:
    rng = np.random.default_rng(radius)
    for case in range(40):
        mask = blobs(rng, case)
        whole = sitk.BinaryMorphologicalClosing(mask, [radius] * 3)
        boxed = closing(mask, radius)
        assert boxed.GetSize() == whole.GetSize() and boxed.GetOrigin() == whole.GetOrigin()
        assert boxed.GetPixelID() == whole.GetPixelID()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(boxed), sitk.GetArrayFromImage(whole), str(case))
