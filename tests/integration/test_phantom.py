"""BraTS-like phantom generator: layout, geometry, labels, contrasts, variety, determinism, speed, CLI."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage as ndi
from typer.testing import CliRunner

from tumorseg.cli import app
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.phantom import (
    BRATS_AFFINE,
    PROFILES,
    SHAPE,
    LesionPlan,
    PhantomCase,
    case_id,
    case_seed,
    generate_case,
    plan_case,
    write_case,
    write_cases,
)
from tumorseg_devkit.synth.phantom_anatomy import Anatomy
from tumorseg_devkit.synth.phantom_tumour import grow_tumour

pytestmark = pytest.mark.integration  # whole phantoms generated, the CLI in a process: seconds a test

# Seed 9: profile "full" (NCR + ET + ED), one lesion of ~32 mL: every compartment has enough voxels.
SEED = 9
FILES = ("flair", "t1", "t1ce", "t2", "seg")
# Tests on generated cases share two module fixtures: ~15 s of CPU in all (template load + 3 cases).
SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    return generate_case(SEED)


@pytest.fixture(scope="module")
def written(case: PhantomCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(case, tmp_path_factory.mktemp("phantom"), "BraTS2021_00009")


@pytest.fixture(scope="module")
def cli_run(case: PhantomCase, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    """``tumorseg phantom --out tmp --cases 1 --seed 3``, timed (templates already loaded by ``case``)."""
    out = tmp_path_factory.mktemp("cli")
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["phantom", "--out", str(out), "--cases", "1", "--seed", "3"])
    elapsed = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    return out, result.output, elapsed


def _load(folder: Path, name: str) -> nib.Nifti1Image:
    img = nib.load(folder / f"{folder.name}_{name}.nii.gz")
    assert isinstance(img, nib.Nifti1Image)
    return img


def _mean(img: NDArray[np.int16], mask: NDArray[np.bool_]) -> float:
    assert mask.sum() > 200, "too few voxels to measure a tissue mean"
    return float(img[mask].mean())


@SLOW
def test_layout_and_read_back(case: PhantomCase, written: Path) -> None:
    assert written.name == "BraTS2021_00009"
    assert sorted(p.name for p in written.iterdir()) == sorted(f"BraTS2021_00009_{n}.nii.gz" for n in FILES)
    for name in FILES:
        img = _load(written, name)
        assert img.shape == SHAPE == (240, 240, 155)
        assert img.header.get_zooms() == (1.0, 1.0, 1.0)
        np.testing.assert_array_equal(img.affine, BRATS_AFFINE)
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        np.testing.assert_allclose(img.header.get_qform(), BRATS_AFFINE, atol=1e-6)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        expected = case.seg if name == "seg" else case.image(name)
        assert img.get_data_dtype() == (np.uint8 if name == "seg" else np.int16)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), expected)


@SLOW
def test_case_arrays_follow_the_contract(case: PhantomCase) -> None:
    np.testing.assert_array_equal(case.affine, BRATS_AFFINE)
    assert case.seg.dtype == np.uint8 and case.seg.shape == SHAPE
    for m in SEQUENCES:
        assert case.image(m).dtype == np.int16 and case.image(m).shape == SHAPE
    with pytest.raises(ValueError, match="unknown modality"):
        case.image("dwi")


@SLOW
def test_labels_and_skull_stripping(case: PhantomCase) -> None:
    assert set(np.unique(case.seg).tolist()) == {0, 1, 2, 4}
    brain = case.tissue > 0
    assert 900_000 < brain.sum() < 2_000_000  # 0.9-2 L
    for m in SEQUENCES:
        img = case.image(m)
        assert img.min() >= 0
        np.testing.assert_array_equal(img > 0, brain, err_msg=f"{m}: non-zero exactly inside the brain")
    assert not np.any(case.seg[~brain]), "tumour outside the brain"
    # Skull-stripped brain centred in the box: nothing on the in-plane borders.
    assert not brain[[0, -1], :, :].any() and not brain[:, [0, -1], :].any()


@SLOW
def test_tissue_contrasts(case: PhantomCase) -> None:
    healthy = case.seg == 0
    wm, gm, csf = ((case.tissue == t) & healthy for t in (3, 2, 1))
    ncr, ed, et = (case.seg == label for label in (1, 2, 4))
    flair, t1, t1ce, t2 = (case.image(m) for m in SEQUENCES)

    assert _mean(flair, ed) > _mean(flair, gm) > _mean(flair, wm) > _mean(flair, csf)
    assert _mean(t1, wm) > _mean(t1, gm) > _mean(t1, csf)
    assert _mean(t1, wm) > _mean(t1, ed) > _mean(t1, ncr)
    assert _mean(t1ce, et) > _mean(t1ce, wm) > _mean(t1ce, gm) > _mean(t1ce, csf)
    assert _mean(t1ce, et) > 1.2 * _mean(t1ce, ncr)
    assert _mean(t2, csf) > _mean(t2, gm) > _mean(t2, wm)
    assert _mean(t2, ed) > _mean(t2, wm) and _mean(t2, ncr) > _mean(t2, wm)


@SLOW
def test_necrosis_is_wrapped_in_the_enhancing_rim(case: PhantomCase) -> None:
    ncr = case.seg == 1
    core = (case.seg == 1) | (case.seg == 4)
    # Every 6-neighbour of a necrotic voxel is tumour core: NCR never touches oedema or healthy tissue.
    reach = ndi.binary_dilation(ncr, structure=ndi.generate_binary_structure(3, 1))
    assert not np.any(reach & ~core)
    # ... and the core sits within the whole tumour as one main mass.
    labels, n = ndi.label(core)
    assert n >= 1 and np.bincount(labels.ravel())[1:].max() > 0.8 * core.sum()


@SLOW
def test_realised_volume_matches_the_plan(case: PhantomCase) -> None:
    made_ml = np.count_nonzero(case.seg) / 1000
    assert case.plan.profile == "full"
    assert made_ml == pytest.approx(case.plan.wt_ml, rel=0.1)


@pytest.mark.parametrize("start", [0, 17, 300_000])
def test_consecutive_seeds_guarantee_variety(start: int) -> None:
    plans = [plan_case(s) for s in range(start, start + 8)]
    volumes = [p.wt_ml for p in plans]
    assert min(volumes) < 30 and max(volumes) > 60
    assert all(4.0 <= v <= 155.0 for v in volumes)
    assert {"no_et", "no_ncr", "full"} <= {p.profile for p in plans}
    assert {les.site for p in plans for les in p.lesions} == {"deep", "periventricular", "cortical"}
    assert any(len(p.lesions) > 1 for p in plans)
    assert set(PROFILES) == {"full", "no_et", "no_ncr"}


def _sphere_anatomy() -> Anatomy:
    grid = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    brain = sum((g - n / 2) ** 2 for g, n in zip(grid, SHAPE, strict=True)) < 70**2
    frac = np.where(brain, np.float32(1 / 3), np.float32(0)).astype(np.float32)
    return Anatomy(brain=brain, wm=frac, gm=frac.copy(), csf=frac.copy(), voxels=np.nonzero(brain))


@pytest.mark.parametrize(
    ("enhancing", "ncr_fraction", "labels"),
    [(True, 0.4, {0, 1, 2, 4}), (True, 0.0, {0, 2, 4}), (False, 1.0, {0, 1, 2})],
)
def test_tumour_profiles(enhancing: bool, ncr_fraction: float, labels: set[int]) -> None:
    anatomy = _sphere_anatomy()
    lesion = LesionPlan("deep", wt_ml=30.0, tc_fraction=0.4, ncr_fraction=ncr_fraction, enhancing=enhancing)
    centre = np.array(SHAPE, dtype=np.float64) / 2
    tumour = grow_tumour([lesion], [centre], anatomy, np.random.default_rng(0))
    assert set(np.unique(tumour.seg).tolist()) == labels
    assert np.count_nonzero(tumour.seg) == 30_000
    assert np.count_nonzero((tumour.seg == 1) | (tumour.seg == 4)) == 12_000
    assert not np.any(tumour.seg[~anatomy.brain])


def test_seed_bookkeeping() -> None:
    assert case_id(42) == "BraTS2021_00042"
    assert case_seed(3, 0) != case_seed(0, 3)
    assert len({case_seed(s, k) for s in range(5) for k in range(5)}) == 25
    with pytest.raises(ValueError):
        case_id(100_000)
    with pytest.raises(ValueError):
        plan_case(-1)
    with pytest.raises(ValueError):
        write_cases(Path("unused"), cases=2, start_index=99_999)
    assert write_cases(Path("unused"), cases=0) == []


@SLOW
def test_cli_writes_reproducible_cases(cli_run: tuple[Path, str, float], case: PhantomCase) -> None:
    out, output, _ = cli_run
    folder = out / "BraTS2021_00000"
    assert "BraTS2021_00000" in output.replace("\n", "")
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"BraTS2021_00000_{n}.nii.gz" for n in FILES)
    # Case 0 of run seed 3 is generate_case(case_seed(3, 0)), voxel for voxel.
    again = generate_case(case_seed(3, 0))
    for name in FILES:
        expected = again.seg if name == "seg" else again.image(name)
        np.testing.assert_array_equal(np.asanyarray(_load(folder, name).dataobj), expected)
    # A different seed is a different case.
    assert not np.array_equal(again.seg, case.seg)
    assert not np.array_equal(again.flair, case.flair)


@SLOW
def test_one_case_is_fast(cli_run: tuple[Path, str, float]) -> None:
    # Generous bound for a shared 2-core machine; typically ~5 s for generation + writing.
    assert cli_run[2] < 30.0


def test_cli_rejects_bad_counts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["phantom", "--out", str(tmp_path), "--cases", "0"])
    assert result.exit_code == 2
    assert not any(tmp_path.iterdir())
