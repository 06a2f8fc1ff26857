"""DICOM SEG: written by highdicom, stored in the source study, read back and compared voxel for voxel.

The writer tests need no Orthanc (synthetic oblique series, shuffled instance order, an all-zero mask).
The integration tests run POST /segment?store_seg=true against a real Orthanc with the random-weight tiny
model (a non-trivial mask, which is all geometry needs) for the oblique 0.9×0.9×4 mm FLAIR of
``clinical_study`` and for a reversed-slice T1ce (a clone of it, so each study holds exactly one SEG), and
compare each segment with the NIfTI mask through the source instances' own positions.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import SegmentationStorage

from tests.dicom_factory import volume_series
from tests.orthanc import OrthancEndpoint, segment_settings, upload_folder
from tests.studies import UploadedStudy, clone_study
from tumorseg.api.main import create_app
from tumorseg.export.dicom_seg import (
    PROPERTY_TYPES,
    SEGMENT_NUMBERS,
    build_segmentation,
    encode,
    next_series_number,
    read_headers,
)
from tumorseg.imaging.volume import SeriesVolume, load_series
from tumorseg.study.assemble import assemble

pytestmark = pytest.mark.integration  # the writer tests need no Orthanc, the rest do

LABELS = tuple(SEGMENT_NUMBERS)  # BraTS 1, 2, 4 → segments 1, 2, 3


# -- helpers -------------------------------------------------------------------------------------------


def dciodvfy_errors(path: Path) -> list[str]:
    assert shutil.which("dciodvfy"), "dciodvfy is required (make setup installs dicom3tools)"
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def expected_frames(mask: sitk.Image, source: Dataset) -> NDArray[np.uint8]:
    """The mask's labels at each pixel of ``source``, found from the pixel's LPS position
    (IPP + c·Δc·row + r·Δr·column), not from any slice order; every pixel must hit a voxel centre."""
    iop = np.asarray([float(v) for v in source.ImageOrientationPatient])
    ipp = np.asarray([float(v) for v in source.ImagePositionPatient])
    d_row, d_col = (float(v) for v in source.PixelSpacing)
    rr, cc = np.meshgrid(np.arange(int(source.Rows)), np.arange(int(source.Columns)), indexing="ij")
    points = ipp + cc[..., None] * d_col * iop[:3] + rr[..., None] * d_row * iop[3:]
    matrix = np.asarray(mask.GetDirection()).reshape(3, 3) * np.asarray(mask.GetSpacing())
    index = np.linalg.solve(matrix, (points - np.asarray(mask.GetOrigin())).reshape(-1, 3).T).T
    rounded = np.rint(index).astype(int)
    assert np.abs(index - rounded).max() < 1e-2, "a source pixel is off the mask's voxel centres"
    assert (rounded >= 0).all() and (rounded < np.asarray(mask.GetSize())).all()
    labels = sitk.GetArrayViewFromImage(mask)  # (k, j, i)
    return np.asarray(labels[rounded[:, 2], rounded[:, 1], rounded[:, 0]]).reshape(rr.shape)


def assert_segments_equal_mask(seg: hd.seg.Segmentation, mask: sitk.Image, sources: list[Dataset]) -> None:
    """Each segment's frame for source instance X equals the mask's label at X's pixel positions, and the
    SEG places that frame where X lies."""
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3])
    assert frames.shape == (len(sources), int(sources[0].Rows), int(sources[0].Columns), 3)
    for n, source in enumerate(sources):
        labels = expected_frames(mask, source)
        for s, label in enumerate(LABELS):
            assert np.array_equal(frames[n, :, :, s].astype(bool), labels == label), (uids[n], label)
    source_position = {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient] for ds in sources}
    for item in seg.PerFrameFunctionalGroupsSequence:
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, source_position[uid], atol=0.01)


def synthetic_series(slices: int = 7) -> tuple[list[bytes], SeriesVolume]:
    """An oblique series (tilted 20°, anisotropic), its files shuffled, and its volume."""
    tilt = np.deg2rad(20.0)
    files = volume_series(
        lambda p: 100.0 + p[:, 0] + 2 * p[:, 1],
        rows=12,
        columns=10,
        slices=slices,
        origin=(-5.0, -7.0, 3.0),
        row_dir=(1.0, 0.0, 0.0),
        col_dir=(0.0, float(np.cos(tilt)), float(-np.sin(tilt))),
        pixel_spacing=(0.9, 1.1),
        slice_spacing=3.0,
    )
    random.Random(7).shuffle(files)
    return files, load_series(files, "synthetic")


def as_dataset(seg: hd.seg.Segmentation, tmp_path: Path) -> tuple[Path, hd.seg.Segmentation]:
    path = tmp_path / "seg.dcm"
    path.write_bytes(encode(seg))
    return path, hd.seg.segread(path)


# -- the writer on its own ------------------------------------------------------------------------------


def test_all_zero_mask_gives_a_valid_seg_referencing_every_source_frame(tmp_path: Path) -> None:
    files, volume = synthetic_series()
    mask = sitk.Image(volume.image.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(volume.image)
    path, seg = as_dataset(
        build_segmentation(
            mask, volume, read_headers(files), algorithm_name="tiny", algorithm_version="0", series_number=9
        ),
        tmp_path,
    )
    assert dciodvfy_errors(path) == []
    assert seg.SegmentationType == "BINARY" and int(seg.NumberOfFrames) == 3 * len(files)
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == set(volume.sop_instance_uids)
    sources = [pydicom.dcmread(DicomBytesIO(data)) for data in files]
    assert_segments_equal_mask(seg, mask, sources)


def test_labels_land_on_their_source_instances_in_any_file_order(tmp_path: Path) -> None:
    files, volume = synthetic_series()
    labels = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, dtype=np.uint8)  # (k, j, i)
    labels[1, 2:5, 1:3] = 1  # asymmetric in every axis, so a flip or transposition shows
    labels[4, 7, 2:8] = 2
    labels[5:7, 9:11, 6] = 4
    labels[6, 0, 0] = 2
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(volume.image)
    _, seg = as_dataset(
        build_segmentation(
            mask, volume, read_headers(files), algorithm_name="tiny", algorithm_version="0", series_number=9
        ),
        tmp_path,
    )
    sources = [pydicom.dcmread(DicomBytesIO(data)) for data in files]  # shuffled order
    assert_segments_equal_mask(seg, mask, sources)


def test_a_mask_off_the_reference_lattice_is_refused() -> None:
    files, volume = synthetic_series()
    mask = sitk.Image(volume.image.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(volume.image)
    mask.SetOrigin([v + 0.5 for v in volume.image.GetOrigin()])
    with pytest.raises(ValueError, match="does not lie on source instance"):
        build_segmentation(
            mask, volume, read_headers(files), algorithm_name="tiny", algorithm_version="0", series_number=9
        )


def test_series_number_follows_the_studys_highest() -> None:
    assert next_series_number(["3", "", "12", "x", "7.0"]) == 13
    assert next_series_number([]) == 1


# -- stored in a real Orthanc ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredCase:
    reference: str
    patient_id: str
    study_instance_uid: str
    source_folder: Path
    result: dict[str, object]
    mask: sitk.Image
    seg_path: Path
    study_files_before: int


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def api(
    orthanc: OrthancEndpoint,
    random_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    app = create_app(
        segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path_factory.mktemp("seg-results"))
    )
    with TestClient(app) as client:
        yield client


def _segment_and_fetch(
    api: TestClient,
    orthanc: OrthancEndpoint,
    reference: str,
    patient_id: str,
    study_uid: str,
    folder: Path,
    tmp: Path,
) -> StoredCase:
    with orthanc.client() as pacs:
        (study,) = [s for s in pacs.find_studies(patient_id) if s.study_instance_uid == study_uid]
        before = sum(s.instance_count for s in pacs.list_series(study.key))
        response = api.post(f"/segment/{patient_id}", params={"reference": reference, "store_seg": "true"})
        assert response.status_code == 200, response.text
        result = response.json()
        seg_path = tmp / f"{reference}_seg.dcm"
        seg_path.write_bytes(pacs.download_instance(result["dicom_seg"]["orthanc_id"]))
    mask_path = tmp / f"{reference}_mask.nii.gz"
    mask_path.write_bytes(api.get(result["mask_url"]).content)
    return StoredCase(
        reference, patient_id, study_uid, folder, result, sitk.ReadImage(str(mask_path)), seg_path, before
    )


@pytest.fixture(scope="module")
def stored(
    api: TestClient,
    orthanc: OrthancEndpoint,
    clinical_study: UploadedStudy,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, StoredCase]:
    """One SEG per reference: the oblique FLAIR of the clinical study itself (with its decoys and prior
    study), and the reversed-slice T1ce of a clone (its own study, so it holds exactly one SEG too)."""
    tmp = tmp_path_factory.mktemp("seg")
    converted = clinical_study.converted
    cases = {
        "flair": _segment_and_fetch(
            api,
            orthanc,
            "flair",
            clinical_study.patient_id,
            converted.study_instance_uid,
            clinical_study.folder("flair"),
            tmp,
        )
    }
    clone = tmp / "clone"
    patient_id = clone_study(converted, clone)
    upload_folder(orthanc, clone)
    study_uid = str(
        pydicom.dcmread(next((clone / "t1ce").glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    )
    cases["t1ce"] = _segment_and_fetch(api, orthanc, "t1ce", patient_id, study_uid, clone / "t1ce", tmp)
    return cases


@pytest.mark.integration
@pytest.mark.parametrize("reference", ["flair", "t1ce"])
def test_stored_seg_matches_the_mask_voxel_for_voxel(reference: str, stored: dict[str, StoredCase]) -> None:
    case = stored[reference]
    assert dciodvfy_errors(case.seg_path) == []
    seg = hd.seg.segread(case.seg_path)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(case.source_folder.glob("*.dcm"))]
    labels = sitk.GetArrayViewFromImage(case.mask)
    assert np.count_nonzero(labels) > 0, "the random model gave an empty mask: the comparison would be weak"
    assert_segments_equal_mask(seg, case.mask, sources)
    assert int(seg.NumberOfFrames) == 3 * len(sources)  # every source frame, empty or not


@pytest.mark.integration
@pytest.mark.parametrize("reference", ["flair", "t1ce"])
def test_stored_seg_is_a_new_series_of_the_source_study(
    reference: str, stored: dict[str, StoredCase]
) -> None:
    case = stored[reference]
    seg = pydicom.dcmread(case.seg_path)
    source = pydicom.dcmread(next(case.source_folder.glob("*.dcm")), stop_before_pixels=True)
    dicom_seg = case.result["dicom_seg"]
    assert isinstance(dicom_seg, dict)
    assert seg.SOPClassUID == SegmentationStorage and seg.Modality == "SEG"
    assert seg.SOPInstanceUID == dicom_seg["sop_instance_uid"]
    assert seg.SeriesInstanceUID == dicom_seg["series_instance_uid"] != source.SeriesInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID == case.study_instance_uid
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.PatientID == source.PatientID
    assert seg.SegmentationType == "BINARY"
    assert "tumorseg SEG (tiny" in seg.SeriesDescription
    assert int(seg.SeriesNumber) > int(source.SeriesNumber)
    assert [str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence] == [source.SeriesInstanceUID]
    for label, item in zip(LABELS, seg.SegmentSequence, strict=True):
        assert int(item.SegmentNumber) == SEGMENT_NUMBERS[label]
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == PROPERTY_TYPES[label].value
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("tiny", "0.0.1")
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"


@pytest.mark.integration
@pytest.mark.parametrize("reference", ["flair", "t1ce"])
def test_study_gains_exactly_one_seg_and_its_sources_are_unchanged(
    reference: str, stored: dict[str, StoredCase], orthanc: OrthancEndpoint
) -> None:
    case = stored[reference]
    with orthanc.client() as pacs:
        (study,) = [
            s for s in pacs.find_studies(case.patient_id) if s.study_instance_uid == case.study_instance_uid
        ]
        series = pacs.list_series(study.key)
        segs = [s for s in series if s.modality == "SEG"]
        assert [(s.series_instance_uid, s.instance_count) for s in segs] == [
            (case.result["dicom_seg"]["series_instance_uid"], 1)  # type: ignore[index]
        ]
        assert sum(s.instance_count for s in series) == case.study_files_before + 2  # the SEG and its SR
        (source_series,) = [
            s for s in series if s.series_instance_uid == case.result["reference"]["series_instance_uid"]
        ]  # type: ignore[index]
        stored_bytes = {_sha(pacs.download_instance(i)) for i in pacs.instance_ids(source_series.key)}
    assert stored_bytes == {_sha(p.read_bytes()) for p in case.source_folder.glob("*.dcm")}


@pytest.mark.integration
def test_preview_is_served_and_our_seg_does_not_disturb_series_mapping(
    stored: dict[str, StoredCase], api: TestClient, orthanc: OrthancEndpoint, tmp_path: Path
) -> None:
    case = stored["flair"]
    assert case.result["preview_url"] == f"/results/{case.result['result_id']}/preview.png"
    response = api.get(str(case.result["preview_url"]))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    (tmp_path / "preview.png").write_bytes(response.content)
    with Image.open(tmp_path / "preview.png") as image:
        assert image.format == "PNG" and image.mode == "RGB" and min(image.size) > 200
    assert api.get(f"/results/{'0' * 32}/preview.png").status_code == 404
    # Our SEG series is now in the study: the next segmentation must map the same MR series.
    with orthanc.client() as pacs:
        assembled = assemble(pacs, case.patient_id)
    assert assembled.study.study_instance_uid == case.study_instance_uid
    assert {m: s.series_instance_uid for m, s in assembled.mapping.series.items()} == {
        m: ref["series_instance_uid"]  # type: ignore[index]
        for m, ref in case.result["series"].items()  # type: ignore[attr-defined]
    }
