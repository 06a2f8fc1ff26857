"""Model grid and resampling between lattices."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from tests.geometry import lattice, rotation
from tumorseg.imaging import grid as g
from tumorseg.imaging.preprocess import Preprocessing, foreground_box, prepare
from tumorseg.sequences import SEQUENCES


def blob_labels(reference: sitk.Image) -> sitk.Image:
    """A BraTS-like tumour (ED shell, ET rim, NCR core) on a 1 mm axis-aligned lattice."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in reference.GetSize()], indexing="ij")
    r = np.sqrt((i - 40) ** 2 + 1.3 * (j - 45) ** 2 + 0.8 * (k - 30) ** 2)
    labels = np.zeros(reference.GetSize(), np.uint8)
    labels[r < 22] = 2
    labels[r < 12] = 4
    labels[r < 8] = 1
    return g.from_array(labels, reference)


def test_grid_of_an_axis_aligned_1mm_reference_is_that_lattice() -> None:
    ref = lattice((240, 240, 155), (1.0, 1.0, 1.0), np.eye(3), (0.0, -239.0, 0.0))
    grid = g.model_grid(ref)
    assert grid.GetSize() == ref.GetSize()
    assert grid.GetOrigin() == pytest.approx(ref.GetOrigin())
    assert grid.GetDirection() == g.IDENTITY


def test_grid_covers_an_oblique_reference_and_is_axis_aligned() -> None:
    ref = lattice((100, 90, 30), (0.9, 0.9, 4.0), rotation(0, 17) @ rotation(2, 90), (5.0, -3.0, 11.0))
    grid = g.model_grid(ref)
    assert grid.GetDirection() == g.IDENTITY and grid.GetSpacing() == (1.0, 1.0, 1.0)
    for corner in g.physical_corners(ref):
        index = np.asarray(grid.TransformPhysicalPointToContinuousIndex(corner.tolist()))
        assert np.all(index >= -1e-6) and np.all(index <= np.asarray(grid.GetSize()) - 1 + 1e-6)


SERIES_GEOMETRIES = [
    ((0.9, 0.9, 4.0), rotation(0, 15)),  # oblique axial 2D
    ((1.0, 1.0, 1.0), rotation(2, 90) @ rotation(1, 90)),  # sagittal 3D
    ((0.5, 0.5, 3.0), rotation(0, 90) @ np.diag([1.0, 1.0, -1.0])),  # coronal, reversed slices
]


def round_trip_loss(
    source_origin: tuple[float, float, float], spacing: tuple[float, float, float], direction: np.ndarray
) -> float:
    """Fraction of the tumour voxels of truth → series lattice that are lost on truth → model grid → series."""
    source = lattice((90, 96, 64), (1.0, 1.0, 1.0), np.eye(3), source_origin)
    truth = blob_labels(source)
    extent = np.asarray(source.GetSize()) * 1.0
    size = tuple(int(e / s) for e, s in zip(extent, spacing, strict=True))
    centre = np.asarray(source.TransformContinuousIndexToPhysicalPoint((extent - 1) / 2)) + 0.37
    origin = centre - direction @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)
    series = lattice(size, spacing, direction, tuple(origin))  # type: ignore[arg-type]

    direct = sitk.GetArrayFromImage(g.resample_labels(truth, series))
    via_grid = sitk.GetArrayFromImage(
        g.resample_labels(g.resample_labels(truth, g.model_grid(series)), series)
    )
    for label in (1, 2, 4):
        assert np.count_nonzero(via_grid == label) == pytest.approx(
            np.count_nonzero(direct == label), rel=0.05
        )
    tumour = direct > 0
    return np.count_nonzero(tumour & (via_grid == 0)) / np.count_nonzero(tumour)


@pytest.mark.parametrize(("spacing", "direction"), SERIES_GEOMETRIES)
def test_truth_survives_the_model_grid_round_trip(
    spacing: tuple[float, float, float], direction: np.ndarray
) -> None:
    """BraTS-style truth (1 mm, integer-mm origin) loses < 1 % of tumour voxels (the issue's bound)."""
    assert round_trip_loss((-12.0, 30.0, 7.0), spacing, direction) < 0.01


@pytest.mark.parametrize(("spacing", "direction"), SERIES_GEOMETRIES)
def test_round_trip_from_an_off_lattice_source_stays_small(
    spacing: tuple[float, float, float], direction: np.ndarray
) -> None:
    """A source whose lattice is off the canonical nodes pays one more interpolation: still < 3 %."""
    assert round_trip_loss((0.3, 0.5, 0.7), spacing, direction) < 0.03


def test_array_round_trip_keeps_index_order() -> None:
    ref = lattice((4, 5, 6), (1.0, 2.0, 3.0), np.eye(3), (1.0, 2.0, 3.0))
    array = np.arange(120, dtype=np.float32).reshape(4, 5, 6)
    image = g.from_array(array, ref)
    assert image.GetPixel(3, 1, 2) == array[3, 1, 2]
    assert np.array_equal(g.to_array(image), array)


def test_foreground_box_is_padded_and_divisible() -> None:
    """Both uses in ``preprocess``: the tight box (margin 0, divisible by 1) of a series' field of view
    before brain extraction, and the model crop around the brain (margin, divisible by the network)."""
    mask = np.zeros((100, 100, 60), bool)
    mask[30:50, 40:45, 10:20] = True
    assert foreground_box(mask, margin=0, divisible_by=1) == ((30, 40, 10), (20, 5, 10))
    start, size = foreground_box(mask, margin=4, divisible_by=16)
    assert size == (32, 16, 32)  # the smallest multiples of 16 that hold box + margin (28, 13, 18)
    for axis, (lo, hi) in enumerate([(30, 50), (40, 45), (10, 20)]):
        assert start[axis] <= lo - 4 and start[axis] + size[axis] >= hi + 4
    assert foreground_box(np.zeros((8, 8, 8), bool), 4, 16) == ((0, 0, 0), (8, 8, 8))


def test_prepare_normalises_channels_on_the_cropped_grid() -> None:
    ref = lattice((64, 64, 40), (1.0, 1.0, 1.0), np.eye(3), (0.0, 0.0, 0.0))
    labels = blob_labels(ref)
    brain = (g.to_array(labels) > 0).astype(np.float32)
    noise = np.random.default_rng(0).uniform(1, 20, brain.shape).astype(np.float32)
    volumes = {m: g.from_array(brain * (100.0 + 50 * n + noise), ref) for n, m in enumerate(SEQUENCES)}
    model_input, cropped_labels = prepare(volumes, "flair", Preprocessing(), labels=labels)
    assert model_input.array.shape[0] == 4 and model_input.array.dtype == np.float32
    assert model_input.array.shape[1:] == tuple(model_input.grid.GetSize())
    assert cropped_labels is not None and cropped_labels.shape == model_input.array.shape[1:]
    assert np.count_nonzero(cropped_labels) == np.count_nonzero(g.to_array(labels))
    for channel in model_input.array:
        values = channel[channel != 0]
        assert abs(values.mean()) < 1e-3
    # A model may use fewer than the four sequences (an imported one without T1), never one twice or another
    assert Preprocessing(channels=("flair", "t1ce", "t2")).channels == ("flair", "t1ce", "t2")
    for wrong in (("flair", "flair"), ("flair", "dwi"), ()):
        with pytest.raises(ValueError, match="each once|must name"):
            Preprocessing(channels=wrong)
    with pytest.raises(ValueError, match="normalisation"):
        Preprocessing(normalisation="minmax")
    assert Preprocessing.from_json(Preprocessing().to_json()) == Preprocessing()


def test_voxels_outside_one_field_of_view_are_background_in_every_channel() -> None:
    ref = lattice((64, 64, 40), (1.0, 1.0, 1.0), np.eye(3), (0.0, 0.0, 0.0))
    brain = np.random.default_rng(1).uniform(10, 20, (64, 64, 40)).astype(np.float32)
    volumes = {m: g.from_array(brain, ref) for m in ("t1", "t1ce", "t2")}
    # A FLAIR slab that stops at k = 19: the upper half of the head is outside its field of view.
    slab = lattice((64, 64, 20), (1.0, 1.0, 1.0), np.eye(3), (0.0, 0.0, 0.0))
    volumes["flair"] = g.from_array(brain[:, :, :20], slab)
    # Noise has no anatomy to register or brain to extract: this is about the field of view alone.
    model_input, _ = prepare(
        volumes, "t1", Preprocessing(crop_foreground=False), registration=False, brain_extractor="none"
    )
    top = np.asarray(model_input.grid.TransformPhysicalPointToIndex((10.0, 10.0, 30.0)))
    bottom = np.asarray(model_input.grid.TransformPhysicalPointToIndex((10.0, 10.0, 10.0)))
    assert np.all(model_input.array[(slice(None), *top)] == 0)
    assert np.all(model_input.array[(slice(None), *bottom)] != 0)


SIGNED_PERMUTATIONS = [
    np.eye(3),
    np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]]),  # sagittal-like
    np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),  # coronal-like, i reversed
    np.diag([1.0, 1.0, -1.0]),  # reversed slice order
]


@pytest.mark.parametrize("direction", SIGNED_PERMUTATIONS, ids=["axial", "sagittal", "coronal", "reversed"])
@pytest.mark.parametrize("shift", [(0, 0, 0), (3, -5, 7), (-10, 2, 0)])
def test_coinciding_lattices_are_copied_exactly_as_interpolation_would(
    direction: np.ndarray, shift: tuple[int, int, int]
) -> None:
    rng = np.random.default_rng(7)
    source = sitk.GetImageFromArray(rng.normal(size=(23, 31, 17)).astype(np.float32))  # (k, j, i)
    source.SetDirection(tuple(direction.ravel()))
    source.SetOrigin((10.0, -20.0, 5.0))
    # A 1 mm axis-aligned target whose centres sit on source centres, shifted partly outside the source.
    corners = g.physical_corners(source)
    low, high = corners.min(axis=0), corners.max(axis=0)
    size = tuple(int(n) + 1 for n in np.rint(high - low))
    target = lattice(size, (1.0, 1.0, 1.0), np.eye(3), tuple(low + np.asarray(shift, float)))
    assert g.lattice_map(source, target) is not None
    fast = g.resample_to_array(source, target, fill=np.nan)
    interpolated = g.to_array(sitk.Resample(source, target, sitk.Transform(), sitk.sitkLinear, np.nan))
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(interpolated))
    assert not np.isnan(fast).all() and np.isnan(fast).any() == any(shift)
    np.testing.assert_allclose(fast[~np.isnan(fast)], interpolated[~np.isnan(interpolated)], atol=1e-6)


def test_lattices_that_do_not_coincide_are_interpolated() -> None:
    rng = np.random.default_rng(8)
    source = sitk.GetImageFromArray(rng.normal(size=(12, 14, 16)).astype(np.float32))
    half_shift = lattice((10, 10, 10), (1.0, 1.0, 1.0), np.eye(3), (0.5, 0.0, 0.0))
    finer = lattice((10, 10, 10), (0.5, 0.5, 0.5), np.eye(3), (0.0, 0.0, 0.0))
    oblique = lattice((10, 10, 10), (1.0, 1.0, 1.0), rotation(2, 10), (0.0, 0.0, 0.0))
    for target in (half_shift, finer, oblique):
        assert g.lattice_map(source, target) is None
        expected = g.to_array(sitk.Resample(source, target, sitk.Transform(), sitk.sitkLinear, -1.0))
        np.testing.assert_allclose(g.resample_to_array(source, target, fill=-1.0), expected, atol=1e-6)


def test_zscore_gives_the_numbers_of_the_plain_formula() -> None:
    from tumorseg.imaging.preprocess import zscore_nonzero

    rng = np.random.default_rng(3)
    channel = rng.normal(400.0, 90.0, (30, 20, 10)).astype(np.float32)
    channel[rng.random(channel.shape) < 0.5] = 0.0
    values = channel[channel != 0]
    expected = np.zeros_like(channel)
    expected[channel != 0] = (values - float(values.mean())) / float(values.std())
    np.testing.assert_array_equal(zscore_nonzero(channel.copy()), expected)
    np.testing.assert_array_equal(zscore_nonzero(np.zeros((4, 4, 4), np.float32)), 0.0)


def plain_prepare(volumes: dict[str, sitk.Image], grid: sitk.Image) -> np.ndarray:
    """The straightforward implementation the optimised ``prepare`` must equal on the same cropped grid:
    SimpleITK resampling per volume, the field of view by nearest-neighbour resampling of ones, z-score by
    writing back through the non-zero mask."""
    channels, covered = [], np.ones(grid.GetSize(), dtype=bool)
    for m in SEQUENCES:
        resampled = sitk.Resample(volumes[m], grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        channels.append(g.to_array(resampled).astype(np.float32))
        ones = sitk.Image(volumes[m].GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(volumes[m])
        inside = sitk.Resample(ones, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        covered &= g.to_array(inside).astype(bool)
    array = np.stack(channels)
    array[:, ~covered] = 0.0
    for channel in array:
        nonzero = channel != 0
        values = channel[nonzero]
        channel[nonzero] = (values - float(values.mean())) / float(values.std())
    return array


def test_prepare_equals_the_plain_implementation_on_mixed_lattices() -> None:
    """Oblique thick slices, a 1 mm sagittal series on the grid's nodes, a reversed fine series and a
    slab that misses the top of the head: the optimised paths must give the plain numbers."""
    rng = np.random.default_rng(11)

    def head(
        size: tuple[int, int, int],
        spacing: tuple[float, float, float],
        direction: np.ndarray,
        origin: tuple[float, float, float],
    ) -> sitk.Image:
        image = lattice(size, spacing, direction, origin)
        points = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).reshape(
            -1, 3
        ) * np.asarray(spacing)
        lps = points @ direction.T + np.asarray(origin)
        inside = np.linalg.norm((lps - (40.0, 45.0, 30.0)) / (32.0, 36.0, 26.0), axis=1) < 1
        values = np.where(inside, 100 + 20 * np.sin(lps[:, 0] / 7) + rng.normal(0, 2, len(lps)), 0.0)
        out = g.from_array(values.reshape(size).astype(np.float32), image)
        return out

    sagittal = np.array([[0.0, 0, 1], [1, 0, 0], [0, -1, 0]])
    volumes = {
        "flair": head((90, 100, 16), (0.9, 0.9, 4.0), rotation(0, 12), (0.0, 0.0, 0.0)),
        "t1": head((64, 96, 82), (1.0, 1.0, 1.0), sagittal, (4.0, -2.0, 62.0)),
        "t1ce": head((100, 112, 20), (0.8, 0.8, 3.0), np.diag([1.0, 1.0, -1.0]), (0.0, 0.0, 60.0)),
        "t2": head((80, 90, 10), (1.0, 1.0, 3.0), np.eye(3), (0.0, 0.0, 0.0)),  # stops at z = 27 mm
    }
    # The resampling paths against the plain ones; co-registration is tested in test_registration.py.
    model_input, _ = prepare(volumes, "flair", Preprocessing(), registration=False)
    assert g.lattice_map(volumes["t1"], model_input.grid) is not None  # the copy path is exercised
    expected = plain_prepare(volumes, model_input.grid)
    assert (expected == 0).any() and (expected != 0).mean() > 0.05
    np.testing.assert_array_equal(model_input.array == 0, expected == 0)
    np.testing.assert_allclose(model_input.array, expected, atol=2e-6)


@pytest.mark.parametrize("turn_deg", [0.0, 12.0])
def test_the_brain_extractions_window_holds_every_voxel_its_series_reaches(turn_deg: float) -> None:
    """``fov_window``: resampling the window gives the voxels a resampling of the whole grid gives there,
    and nothing the series reaches lies outside it; ``series_on`` puts them back on any region."""
    from tumorseg.imaging.preprocess import BrainExtraction, fov_window

    reference = lattice((120, 130, 30), (0.9, 0.9, 4.0), rotation(0, 15), (-50.0, -60.0, -40.0))
    series = lattice((90, 100, 28), (0.8, 0.8, 3.0), rotation(2, 5), (-30.0, -40.0, -30.0))
    rng = np.random.default_rng(3)
    series = g.from_array(rng.random(series.GetSize(), dtype=np.float32) + 1.0, series)
    turn = sitk.Euler3DTransform()
    turn.SetCenter((0.0, 0.0, 0.0))
    turn.SetRotation(np.radians(turn_deg), 0.0, np.radians(turn_deg / 2))
    turn.SetTranslation((3.0, -2.0, 4.0))
    full = g.model_grid(reference)
    whole = g.resample_to_array(series, full, fill=np.nan, transform=turn)
    window = fov_window(series, full, turn)
    outside = np.ones(whole.shape, dtype=bool)
    outside[window] = False
    assert np.isnan(whole[outside]).all() and not np.isnan(whole[window]).all()
    first, size = [w.start for w in window], [w.stop - w.start for w in window]
    block = g.resample_to_array(series, g.crop(full, (*first,), (*size,)), fill=np.nan, transform=turn)  # type: ignore[arg-type]
    np.testing.assert_array_equal(block, whole[window])
    extraction = BrainExtraction(
        np.zeros(whole.shape, bool), "t1ce", "deepbet", ((0, 0, 0), whole.shape), block, window
    )
    for region in [
        window,
        tuple(slice(0, n) for n in whole.shape),
        (slice(5, 60), slice(0, 7), slice(10, 11)),
    ]:
        np.testing.assert_array_equal(extraction.series_on(region), whole[region])
