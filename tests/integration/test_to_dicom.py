"""BraTS case → DICOM (``tumorseg to-dicom``): geometry, intensities, tags, determinism, validity.

The referee for geometry is ``dcm2niix``: each written series converted back must lie on the source
NIfTI's voxel lattice (up to a signed axis permutation) with the source intensities. ``dciodvfy``
judges the DICOM encoding. Cases are small synthetic BraTS-layout folders made here.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from tests.geometry import dcm2niix, index_map, onto_lattice_of
from tumorseg.cli import app
from tumorseg.errors import InvalidInput
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.dicom_options import parse_descriptions, parse_geometry
from tumorseg_devkit.synth.dicom_series import quantise
from tumorseg_devkit.synth.to_dicom import (
    ConversionOptions,
    ConvertedStudy,
    SeriesGeometry,
    convert_case,
)

# dcm2niix and dciodvfy as referees, phantom cases converted: seconds a test
pytestmark = pytest.mark.integration

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 63], [0, 0, 1.0, 0], [0, 0, 0, 1]])


# ---------------------------------------------------------------- fixtures: BraTS-layout cases


def write_case(root: Path, affine: np.ndarray, shape: tuple[int, int, int], dtype: type, case: str) -> Path:
    """Four modalities with an ellipsoid 'brain', smooth texture, a bright blob and a little noise."""
    folder = root / case
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    c = [(n - 1) / 2 for n in shape]
    brain = ((i - c[0]) / (0.42 * shape[0])) ** 2 + ((j - c[1]) / (0.45 * shape[1])) ** 2 + (
        (k - c[2]) / (0.45 * shape[2])
    ) ** 2 < 1
    blob = (i - 0.35 * shape[0]) ** 2 + (j - 0.45 * shape[1]) ** 2 + (k - 0.4 * shape[2]) ** 2 < 25
    for n, key in enumerate(SEQUENCES):
        v = (300 + 120 * n) + 60 * np.sin(i / 5) + 40 * np.cos(j / 7) + 3 * k + rng.normal(0, 4, shape)
        v = np.where(brain, v + 350 * blob, 0.0)
        if np.issubdtype(dtype, np.integer):
            v = np.rint(v)
        else:
            v = v * 0.0137 + 0.25 * brain  # non-integral floats
        nib.save(nib.Nifti1Image(v.astype(dtype), affine), folder / f"{case}_{key}.nii.gz")
    return folder


def oblique_affine() -> np.ndarray:
    """Anisotropic, axes permuted (i ~ superior, j ~ anterior, k ~ left) and rotated ~12°: a hard case."""
    perm = np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])
    a, b = math.radians(12), math.radians(-7)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ perm @ np.diag([1.2, 0.9, 1.5])
    aff[:3, 3] = [30.5, -12.25, 17.0]
    return aff


@pytest.fixture(scope="module")
def brats_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """int16, 1 mm, the BraTS affine diag(-1, -1, 1) with a translation."""
    return write_case(
        tmp_path_factory.mktemp("cases"), BRATS_AFFINE, (64, 64, 40), np.int16, "BraTS2021_00001"
    )


@pytest.fixture(scope="module")
def oblique_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """float32 (non-integral), oblique and anisotropic, stored in a different axis order."""
    return write_case(
        tmp_path_factory.mktemp("cases"), oblique_affine(), (36, 44, 30), np.float32, "BraTS2021_00002"
    )


@pytest.fixture(scope="module")
def default_brats(brats_case: Path, tmp_path_factory: pytest.TempPathFactory) -> ConvertedStudy:
    return convert_case(brats_case, "TS-0001", tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def full_exam(brats_case: Path, tmp_path_factory: pytest.TempPathFactory) -> ConvertedStudy:
    """Decoys, a prior study and a tilted, anisotropic T2."""
    options = ConversionOptions(
        geometry={"t2": SeriesGeometry(tilt_deg=15, spacing=(0.8, 1.2, 3.0))},
        decoys=True,
        prior_study=True,
        patient_name="DOE^JANE",
        study_date=ConversionOptions().study_date.replace(year=2023),
    )
    return convert_case(brats_case, "TS-0002", tmp_path_factory.mktemp("out"), options)


# ---------------------------------------------------------------- helpers


def read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("IM_*.dcm"))]


def header_affine(headers: list[pydicom.Dataset]) -> np.ndarray:
    """RAS affine of a slice stack from its files: (column, row, slice) index → mm."""
    first, last = headers[0], headers[-1]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_sp, col_sp = (float(v) for v in first.PixelSpacing)
    p0 = np.array([float(v) for v in first.ImagePositionPatient])
    p1 = np.array([float(v) for v in last.ImagePositionPatient])
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1] = iop[:3] * col_sp, iop[3:] * row_sp
    aff[:3, 2] = (p1 - p0) / max(len(headers) - 1, 1)
    aff[:3, 3] = p0
    return LPS_FROM_RAS @ aff


def dciodvfy_errors(path: Path) -> list[str]:
    assert shutil.which("dciodvfy"), "dciodvfy is required (dicom3tools; make setup installs it)"
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


# ---------------------------------------------------------------- the referee: dcm2niix round trip


def test_default_series_reproduce_source_lattice_and_intensities(
    brats_case: Path, default_brats: ConvertedStudy, tmp_path: Path
) -> None:
    for key in SEQUENCES:
        series = default_brats.get(key)
        source = nib.load(brats_case / f"{brats_case.name}_{key}.nii.gz")
        back = onto_lattice_of(source, dcm2niix(series.folder, tmp_path / key))  # type: ignore[arg-type]
        np.testing.assert_array_equal(back, np.asanyarray(source.dataobj))  # type: ignore[attr-defined]
        ds = pydicom.dcmread(series.folder / "IM_0001.dcm", stop_before_pixels=True)
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
        assert series.n_files == 40


def test_oblique_float_source_keeps_lattice_within_quantisation(oblique_case: Path, tmp_path: Path) -> None:
    result = convert_case(oblique_case, "TS-0003", tmp_path / "out")
    for key in SEQUENCES:
        series = result.get(key)
        source = nib.load(oblique_case / f"{oblique_case.name}_{key}.nii.gz")
        back = onto_lattice_of(source, dcm2niix(series.folder, tmp_path / key))  # type: ignore[arg-type]
        slope = float(pydicom.dcmread(series.folder / "IM_0001.dcm", stop_before_pixels=True).RescaleSlope)
        expected = np.asanyarray(source.dataobj).astype(np.float64)  # type: ignore[attr-defined]
        assert slope < expected.max() / 60000  # 16-bit range used
        # dcm2niix stores scl_slope as float32: allow its rounding on top of the slope / 2 bound.
        assert np.abs(back - expected).max() <= slope / 2 + 1e-6 * expected.max()


def test_planes_and_reversed_slices_keep_the_lattice(brats_case: Path, tmp_path: Path) -> None:
    geometry = parse_geometry(planes=["t1:sagittal", "t2:coronal"], reverse_slices=["t1ce,flair", "t2"])
    result = convert_case(brats_case, "TS-0004", tmp_path / "out", ConversionOptions(geometry=geometry))
    expected_iop = {"t1": [0, 1, 0, 0, 0, -1], "t2": [1, 0, 0, 0, 0, -1], "t1ce": [1, 0, 0, 0, 1, 0]}
    for key in SEQUENCES:
        series = result.get(key)
        source = nib.load(brats_case / f"{brats_case.name}_{key}.nii.gz")
        back = onto_lattice_of(source, dcm2niix(series.folder, tmp_path / key))  # type: ignore[arg-type]
        np.testing.assert_array_equal(back, np.asanyarray(source.dataobj))  # type: ignore[attr-defined]
        headers = read_series(series.folder)
        if key in expected_iop:
            np.testing.assert_allclose(
                [float(v) for v in headers[0].ImageOrientationPatient], expected_iop[key]
            )
        if key in ("flair", "t1ce"):  # axial, reversed: InstanceNumber 1 is the most superior slice
            z = [
                float(h.ImagePositionPatient[2]) for h in sorted(headers, key=lambda h: int(h.InstanceNumber))
            ]
            assert z[0] == max(z) and np.all(np.diff(z) < 0)
    assert result.get("t1").series_description == "t1_mprage_sag"
    assert result.get("t2").series_description == "t2_tse_cor"
    assert result.get("t2").n_files == 64  # 64 coronal slices of a 64×64×40 case


@pytest.mark.parametrize("transfer_syntax", ["rle", "jpeg2000"])
def test_compressed_transfer_syntaxes_are_lossless(
    transfer_syntax: str, brats_case: Path, default_brats: ConvertedStudy, tmp_path: Path
) -> None:
    result = convert_case(
        brats_case,
        "TS-0001",
        tmp_path / "out",
        ConversionOptions(transfer_syntax=transfer_syntax),  # type: ignore[arg-type]
    )
    uid = {"rle": pydicom.uid.RLELossless, "jpeg2000": pydicom.uid.JPEG2000Lossless}[transfer_syntax]
    compressed = read_series(result.get("t1ce").folder)
    plain = read_series(default_brats.get("t1ce").folder)
    for a, b in zip(compressed, plain, strict=True):
        assert a.file_meta.TransferSyntaxUID == uid
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
    source = nib.load(brats_case / f"{brats_case.name}_t1ce.nii.gz")
    back = onto_lattice_of(source, dcm2niix(result.get("t1ce").folder, tmp_path / "nii"))  # type: ignore[arg-type]
    np.testing.assert_array_equal(back, np.asanyarray(source.dataobj))  # type: ignore[attr-defined]
    assert dciodvfy_errors(result.get("t1ce").folder / "IM_0001.dcm") == []


# ---------------------------------------------------------------- resampled geometry


def lps_corners(source: nib.Nifti1Image) -> np.ndarray:
    hi = np.array(source.shape) - 1
    idx = np.array([[a, b, c, 1] for a in (0, hi[0]) for b in (0, hi[1]) for c in (0, hi[2])], dtype=float)
    return (LPS_FROM_RAS @ source.affine @ idx.T).T[:, :3]


def check_geometry(
    folder: Path, source: nib.Nifti1Image, frame: np.ndarray, spacing: tuple[float, float, float]
) -> list[pydicom.Dataset]:
    """The files carry exactly the asked frame [X Y N] and spacing, over the source extent."""
    headers = sorted(read_series(folder), key=lambda h: int(h.InstanceNumber))
    iop = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    np.testing.assert_allclose(iop, np.tile(np.r_[frame[:, 0], frame[:, 1]], (len(headers), 1)), atol=1e-9)
    for h in headers:
        assert [float(v) for v in h.PixelSpacing] == pytest.approx([spacing[1], spacing[0]])  # row\column
        assert float(h.SliceThickness) == pytest.approx(spacing[2])
        assert float(h.SpacingBetweenSlices) == pytest.approx(spacing[2])
    ipp = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    steps = np.diff(ipp, axis=0)
    np.testing.assert_allclose(steps @ frame[:, 2], spacing[2], atol=1e-6)  # along the normal
    np.testing.assert_allclose(steps @ frame[:, :2], 0, atol=1e-6)  # and nothing in-plane
    extent = np.ptp(lps_corners(source) @ frame, axis=0)
    expected = np.floor(extent / np.asarray(spacing) + 1e-6).astype(int) + 1
    assert (int(headers[0].Columns), int(headers[0].Rows), len(headers)) == tuple(expected)
    for h in headers:
        assert float(h.SliceLocation) == pytest.approx(
            float(np.array([float(v) for v in h.ImagePositionPatient]) @ frame[:, 2])
        )
    return headers


def check_pixels_match_positions(headers: list[pydicom.Dataset], source: nib.Nifti1Image) -> None:
    """Each pixel's value is the source interpolated at the pixel's position computed from the header."""
    data = np.asanyarray(source.dataobj).astype(np.float64)
    to_index = np.linalg.inv(LPS_FROM_RAS @ source.affine)
    for h in headers[len(headers) // 3 :: max(1, len(headers) // 4)]:
        iop = np.array([float(v) for v in h.ImageOrientationPatient])
        row_sp, col_sp = (float(v) for v in h.PixelSpacing)
        r, c = np.mgrid[0 : int(h.Rows), 0 : int(h.Columns)]
        pos = (
            np.array([float(v) for v in h.ImagePositionPatient])[:, None]
            + np.outer(iop[:3], c.ravel() * col_sp)
            + np.outer(iop[3:], r.ravel() * row_sp)
        )
        idx = (to_index @ np.vstack([pos, np.ones(pos.shape[1])]))[:3]
        inside = np.all((idx >= 1) & (idx <= np.array(data.shape)[:, None] - 2), axis=0)
        want = ndimage.map_coordinates(data, idx, order=1)
        got = h.pixel_array.ravel() * float(h.RescaleSlope) + float(h.RescaleIntercept)
        assert inside.sum() > 100
        assert np.abs(got[inside] - want[inside]).max() <= 0.51  # integer source: rounded


def test_tilt_and_spacing_are_written_as_asked(brats_case: Path, full_exam: ConvertedStudy) -> None:
    source = nib.load(brats_case / f"{brats_case.name}_t2.nii.gz")
    t = math.radians(15)
    frame = np.column_stack([[1, 0, 0], [0, math.cos(t), math.sin(t)], [0, -math.sin(t), math.cos(t)]])
    headers = check_geometry(full_exam.get("t2").folder, source, frame, (0.8, 1.2, 3.0))  # type: ignore[arg-type]
    check_pixels_match_positions(headers, source)  # type: ignore[arg-type]
    assert full_exam.get("flair").n_files == 40  # the other series are untouched


def test_sagittal_tilt_and_anisotropic_spacing(brats_case: Path, tmp_path: Path) -> None:
    geometry = parse_geometry(planes=["t1:sagittal"], tilts=["t1:-10"], spacings=["t1:1.5,0.7,4"])
    result = convert_case(brats_case, "TS-0005", tmp_path / "out", ConversionOptions(geometry=geometry))
    source = nib.load(brats_case / f"{brats_case.name}_t1.nii.gz")
    t = math.radians(-10)
    x, y, n = np.array([0.0, 1, 0]), np.array([0.0, 0, -1]), np.array([-1.0, 0, 0])
    frame = np.column_stack([x, math.cos(t) * y + math.sin(t) * n, math.cos(t) * n - math.sin(t) * y])
    headers = check_geometry(result.get("t1").folder, source, frame, (1.5, 0.7, 4.0))  # type: ignore[arg-type]
    check_pixels_match_positions(headers, source)  # type: ignore[arg-type]
    # dcm2niix reads the same lattice back: spacing per axis (column, row, slice) as written.
    img = dcm2niix(result.get("t1").folder, tmp_path / "nii")
    shape = (int(headers[0].Columns), int(headers[0].Rows), len(headers))
    index_map(header_affine(headers), shape, img.affine, img.shape)


# ---------------------------------------------------------------- tags, decoys, prior study


def test_sequence_tags_and_descriptions(default_brats: ConvertedStudy) -> None:
    h = {
        key: pydicom.dcmread(default_brats.get(key).folder / "IM_0001.dcm", stop_before_pixels=True)
        for key in SEQUENCES
    }
    assert h["flair"].SeriesDescription == "t2_tirm_tra_dark-fluid" and list(h["flair"].ScanningSequence) == [
        "SE",
        "IR",
    ]
    assert float(h["flair"].RepetitionTime) >= 8000 and 85 <= float(h["flair"].EchoTime) <= 120
    assert 2000 <= float(h["flair"].InversionTime) <= 2800
    assert h["t1"].MRAcquisitionType == "3D" and 2000 <= float(h["t1"].RepetitionTime) <= 2300
    assert 2 <= float(h["t1"].EchoTime) <= 3 and float(h["t1"].InversionTime) == 900
    assert h["t1ce"].ContrastBolusAgent == "Gadobutrol" and h["t1ce"].SeriesDescription == "t1_mprage_tra_KM"
    assert "ContrastBolusAgent" not in h["t1"]
    assert 4000 <= float(h["t2"].RepetitionTime) <= 6000 and 90 <= float(h["t2"].EchoTime) <= 110
    uids = {ds.SeriesInstanceUID for ds in h.values()}
    assert len(uids) == 4
    for ds in h.values():
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert list(ds.ImageType)[:4] == ["ORIGINAL", "PRIMARY", "M", "ND"]
        assert ds.StudyInstanceUID == default_brats.study_instance_uid
        assert ds.FrameOfReferenceUID == h["t1"].FrameOfReferenceUID
        assert ds.PatientID == "TS-0001" and str(ds.PatientName) == "PHANTOM^DEMO"
        assert ds.StudyDate == "20240312" and ds.AccessionNumber and ds.StudyID
        assert float(ds.MagneticFieldStrength) == 3.0 and int(ds.EchoTrainLength) >= 1
        assert ds.ProtocolName == ds.SeriesDescription


def test_ge_style_descriptions_follow_plane_and_tilt(brats_case: Path, tmp_path: Path) -> None:
    options = ConversionOptions(
        geometry=parse_geometry(planes=["t1ce:coronal"], tilts=["flair:12"]),
        descriptions=parse_descriptions(["t2:AX T2 PROPELLER"]),
        vendor="ge",
    )
    result = convert_case(brats_case, "TS-0006", tmp_path / "out", options)
    names = {s.key: s.series_description for s in result.series}
    assert names == {
        "t2": "AX T2 PROPELLER",
        "flair": "AX OBL T2 FLAIR",
        "t1": "AX T1",
        "t1ce": "COR T1 POST GAD",
    }
    ds = pydicom.dcmread(result.get("t1").folder / "IM_0001.dcm", stop_before_pixels=True)
    assert (
        ds.Manufacturer == "GE MEDICAL SYSTEMS"
        and float(ds.RepetitionTime) == 500
        and ds.MRAcquisitionType == "2D"
    )
    assert result.get("t2").folder.name == "2_AX_T2_PROPELLER"


def test_decoys_and_prior_study(full_exam: ConvertedStudy) -> None:
    manifest = json.loads(full_exam.manifest.read_text())
    current, prior = manifest["studies"]
    assert [s["key"] for s in current["series"]] == ["localizer", "t2", "flair", "dwi", "adc", "t1", "t1ce"]
    assert [s["key"] for s in prior["series"]] == ["t2", "flair", "t1", "t1ce"]
    assert (current["study_date"], prior["study_date"], prior["is_prior"]) == ("20230312", "20220312", True)
    assert current["study_instance_uid"] != prior["study_instance_uid"]
    for study in (current, prior):
        for s in study["series"]:
            headers = read_series(full_exam.out / s["folder"])
            assert len(headers) == s["n_files"]
            assert {h.StudyInstanceUID for h in headers} == {study["study_instance_uid"]}
            assert {h.SeriesInstanceUID for h in headers} == {s["series_instance_uid"]}
            assert {h.FrameOfReferenceUID for h in headers} == {study["frame_of_reference_uid"]}
            assert {h.StudyDate for h in headers} == {study["study_date"]}
            assert {h.PatientID for h in headers} == {"TS-0002"}
            assert sorted(int(h.InstanceNumber) for h in headers) == list(range(1, len(headers) + 1))
    loc = read_series(full_exam.get("localizer").folder)
    assert len(loc) == 9 and all(list(h.ImageType)[2] == "LOCALIZER" for h in loc)
    assert len({tuple(h.ImageOrientationPatient) for h in loc}) == 3
    dwi = read_series(full_exam.get("dwi").folder)
    assert {float(h.DiffusionBValue) for h in dwi} == {0.0, 1000.0}
    assert all(list(h.ImageType) == ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"] for h in dwi)
    assert float(dwi[0].SliceThickness) == 5.0 and dwi[0].SeriesDescription == "ep2d_diff_tra"
    adc = read_series(full_exam.get("adc").folder)
    assert all(list(h.ImageType) == ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"] for h in adc)
    values = np.stack([h.pixel_array for h in adc])
    assert values.max() <= 4000 and np.count_nonzero(values) > 0 and values[values > 0].min() >= 700
    b0, b1000 = (np.stack([h.pixel_array for h in dwi if float(h.DiffusionBValue) == b]) for b in (0, 1000))
    assert np.all(b1000 <= b0) and b1000.sum() < 0.6 * b0.sum()


def test_dciodvfy_finds_no_errors(full_exam: ConvertedStudy, default_brats: ConvertedStudy) -> None:
    series = [*full_exam.studies[0].series, default_brats.get("t2")]  # tilted t2, plain t2, decoys, t1ce
    for s in series:
        files = sorted(s.folder.glob("IM_*.dcm"))
        for path in {files[0], files[-1]}:
            assert dciodvfy_errors(path) == [], f"{s.key}: {path}"


def test_files_are_what_pydicom_would_write(full_exam: ConvertedStudy) -> None:
    """The writer encodes constant attributes once per series; the bytes must equal dcmwrite's."""
    for s in full_exam.studies[0].series:
        for path in sorted(s.folder.glob("IM_*.dcm"))[:2]:
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, pydicom.dcmread(path), enforce_file_format=True)
            assert buffer.getvalue() == path.read_bytes(), path


# ---------------------------------------------------------------- determinism and output management


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_rerun_rewrites_identical_files_and_options_change_uids(
    brats_case: Path, default_brats: ConvertedStudy, tmp_path: Path
) -> None:
    again = convert_case(brats_case, "TS-0001", tmp_path / "again")
    assert file_hashes(again.out) == file_hashes(default_brats.out)
    changed = convert_case(
        brats_case,
        "TS-0001",
        tmp_path / "again",
        ConversionOptions(geometry={"t1": SeriesGeometry(plane="sagittal")}),
    )
    assert changed.study_instance_uid != default_brats.study_instance_uid
    assert {s.series_instance_uid for s in changed.series}.isdisjoint(
        {s.series_instance_uid for s in default_brats.series}
    )
    # The earlier conversion's files in the same folder were replaced, not left behind.
    folders = sorted(p.name for p in (tmp_path / "again" / "study-1").iterdir())
    assert folders == ["2_t2_tse_tra", "3_t2_tirm_tra_dark-fluid", "6_t1_mprage_sag", "7_t1_mprage_tra_KM"]
    other_patient = convert_case(brats_case, "TS-9999", tmp_path / "other")
    assert other_patient.study_instance_uid != default_brats.study_instance_uid


# ---------------------------------------------------------------- units: quantisation, options, errors


def test_quantise_integer_exact_and_float_error_bounded() -> None:
    ints = np.array([[0, 5, 32767], [1, 2, 3]], dtype=np.int32)
    q = quantise(ints)
    assert q.values.dtype == np.int16 and q.slope == "1.0" and np.array_equal(q.values, ints)
    assert quantise(np.array([0.0, 40000.0])).values.dtype == np.uint16  # integral, beyond int16
    q = quantise(np.array([0.0, 3.0, 1234.0], dtype=np.float32))  # float files of integers: exact
    assert q.values.dtype == np.int16 and q.slope == "1.0" and q.values.tolist() == [0, 3, 1234]
    rng = np.random.default_rng(1)
    for data in (rng.random(10_000) * 3.7, rng.normal(0, 1000, 10_000), np.array([0.0, 1e-3, 123456.789])):
        q = quantise(data)
        back = q.values.astype(np.float64) * float(q.slope) + float(q.intercept)
        assert np.abs(back - data).max() <= float(q.slope) / 2 * (1 + 1e-9)
        assert q.values.dtype == (np.int16 if data.min() < 0 else np.uint16)
        assert len(q.slope) <= 16
    assert quantise(np.array([0.0, np.nan, 2.5])).values[1] == 0


def test_parse_geometry_all_then_specific() -> None:
    geometry = parse_geometry(
        planes=["coronal", "t1:sagittal"],
        tilts=["t2:-7.5"],
        spacings=["1,1,5", "flair:0.5,0.5,3"],
        reverse_slices=["all"],
    )
    assert geometry["t1"] == SeriesGeometry("sagittal", 0.0, (1.0, 1.0, 5.0), True)
    assert geometry["t2"] == SeriesGeometry("coronal", -7.5, (1.0, 1.0, 5.0), True)
    assert geometry["flair"].spacing == (0.5, 0.5, 3.0)
    assert parse_geometry() == {}
    for bad in (
        {"planes": ["oblique"]},
        {"tilts": ["t1:steep"]},
        {"tilts": ["60"]},
        {"spacings": ["1,1"]},
        {"spacings": ["t2:1,0,1"]},
        {"reverse_slices": ["t3"]},
    ):
        with pytest.raises(InvalidInput):
            parse_geometry(**bad)
    with pytest.raises(InvalidInput):
        parse_descriptions(["no modality here"])


def test_unusable_inputs_are_refused(brats_case: Path, tmp_path: Path) -> None:
    case = tmp_path / "BraTS2021_00009"
    shutil.copytree(brats_case, case)
    for p in case.iterdir():
        p.rename(case / p.name.replace("BraTS2021_00001", "BraTS2021_00009"))
    (case / "BraTS2021_00009_t1ce.nii.gz").unlink()
    with pytest.raises(InvalidInput, match="t1ce"):
        convert_case(case, "X", tmp_path / "out")
    sheared = np.array([[1.0, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    sheared_case = write_case(tmp_path, sheared, (8, 8, 4), np.int16, "BraTS2021_00010")
    with pytest.raises(InvalidInput, match="shear"):
        convert_case(sheared_case, "X", tmp_path / "out")
    small_case = write_case(tmp_path, BRATS_AFFINE, (40, 24, 6), np.int16, "BraTS2021_00011")
    with pytest.raises(InvalidInput, match="JPEG 2000"):
        convert_case(small_case, "X", tmp_path / "small", ConversionOptions(transfer_syntax="jpeg2000"))
    with pytest.raises(InvalidInput):
        ConversionOptions(patient_sex="X")
    with pytest.raises(InvalidInput):
        ConversionOptions(geometry={"dwi": SeriesGeometry()})


# ---------------------------------------------------------------- CLI and the phantom generator


def test_cli_to_dicom(brats_case: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["to-dicom", str(brats_case), "--patient-id", "CLI-1", "--out", str(tmp_path / "out")]
    extra = ["--plane", "t1:sagittal", "--tilt", "t2:-5", "--spacing", "t2:1,1,4", "--reverse-slices", "t1ce",
             "--description", "flair:AX FLAIR", "--patient-name", "TEST^CLI", "--birth-date", "1980-02-29",
             "--sex", "f", "--study-date", "20240229", "--prior-study"]  # fmt: skip
    result = runner.invoke(app, args + extra)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["patient_id"] == "CLI-1" and len(manifest["studies"]) == 2
    assert manifest["studies"][1]["study_date"] == "20230228"
    assert manifest["options"]["geometry"]["t2"]["tilt_deg"] == -5.0
    ds = pydicom.dcmread(
        next((tmp_path / "out" / "study-1" / "3_AX_FLAIR").glob("IM_*.dcm")), stop_before_pixels=True
    )
    assert (str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex, ds.PatientAge) == (
        "TEST^CLI",
        "19800229",
        "F",
        "044Y",
    )
    bad = runner.invoke(app, [*args, "--plane", "diagonal"])
    assert bad.exit_code == 2 and "diagonal" in bad.output


@pytest.mark.slow  # the phantom generator needs ~5-15 s for one case
def test_phantom_case_converts_onto_its_lattice(tmp_path: Path) -> None:
    phantom = pytest.importorskip("tumorseg_devkit.synth.phantom")
    case_dir = phantom.write_case(phantom.generate_case(3), tmp_path, "BraTS2021_90003")
    result = convert_case(case_dir, "PHANTOM-3", tmp_path / "out")
    for key in ("flair", "t1ce"):
        source = nib.load(case_dir / f"BraTS2021_90003_{key}.nii.gz")
        back = onto_lattice_of(source, dcm2niix(result.get(key).folder, tmp_path / key))  # type: ignore[arg-type]
        np.testing.assert_array_equal(back, np.asanyarray(source.dataobj))  # type: ignore[attr-defined]
    assert result.get("t2").n_files == 155
