"""The clinical phantom study with three of its series as multi-frame objects (the oblique FLAIR as Legacy
Converted Enhanced MR with its frames shuffled; the sagittal T1, frames shuffled, and the reversed-slice
T1ce with its contrast, as Enhanced MR with the physics in the MR macros only; the coronal T2 stays
classic): the same mapping and the same mask, voxel for voxel, as the classic study through POST /segment;
each multi-frame object is valid (``dciodvfy``) and ``dcm2niix`` agrees with its loaded lattice; the DICOM
SEG on the shuffled multi-frame FLAIR is valid and places each segment frame on its source frame."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from tests.geometry import as_nifti, dcm2niix, onto_lattice_of
from tests.multiframe import enhanced_mr, legacy_converted
from tests.orthanc import OrthancEndpoint, segment_settings, upload_folder
from tests.studies import UploadedStudy, clone_study
from tumorseg import functional_groups as fg
from tumorseg.api.main import create_app
from tumorseg.imaging.volume import load_series

pytestmark = pytest.mark.integration

# sequence → (how it is converted, the frame shuffle seed: None keeps the converter's order)
CONVERTED = {"flair": (legacy_converted, 11), "t1": (enhanced_mr, 5), "t1ce": (enhanced_mr, None)}


@pytest.fixture(scope="module")
def studies(
    clinical_study: UploadedStudy, orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str, Path]:
    """(classic PatientID, multi-frame PatientID, folder of the multi-frame files), both uploaded."""
    work = tmp_path_factory.mktemp("multiframe")
    classic = clone_study(clinical_study.converted, work / "classic")
    multi = clone_study(clinical_study.converted, work / "source")
    for folder in sorted((work / "source").iterdir()):
        if folder.name in CONVERTED:
            files = [path.read_bytes() for path in sorted(folder.glob("*.dcm"))]
            convert, seed = CONVERTED[folder.name]
            converted = convert(files, shuffle_seed=seed)
            (work / "multi" / folder.name).mkdir(parents=True)
            converted.save_as(work / "multi" / folder.name / "multiframe.dcm", enforce_file_format=True)
        else:
            shutil.copytree(folder, work / "multi" / folder.name)
    upload_folder(orthanc, work / "classic")
    upload_folder(orthanc, work / "multi")
    return classic, multi, work / "multi"


def test_each_multi_frame_object_is_valid_and_dcm2niix_agrees_with_its_lattice(
    studies: tuple[str, str, Path], tmp_path: Path
) -> None:
    _, _, folder = studies
    for sequence in CONVERTED:
        path = folder / sequence / "multiframe.dcm"
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (sequence, errors)
        volume = load_series([path.read_bytes()], sequence)
        referee = dcm2niix(path.parent, tmp_path / sequence)
        ours = onto_lattice_of(referee, as_nifti(volume.image))  # fails unless the lattices coincide
        assert np.allclose(ours, np.asarray(referee.get_fdata()), atol=1e-3), sequence


def test_the_multi_frame_study_gives_the_classic_mapping_and_mask(
    studies: tuple[str, str, Path], orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    classic, multi, _ = studies
    app = create_app(segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path / "results"))
    masks, results = {}, {}
    with TestClient(app) as client:
        for name, patient_id in (("classic", classic), ("multi", multi)):
            response = client.post(f"/segment/{patient_id}")
            assert response.status_code == 200, response.text
            results[name] = response.json()
            (tmp_path / f"{name}.nii.gz").write_bytes(client.get(results[name]["mask_url"]).content)
            masks[name] = nib.load(tmp_path / f"{name}.nii.gz")
    described = {
        name: {m: s["series_description"] for m, s in result["series"].items()}
        for name, result in results.items()
    }
    assert described["multi"] == described["classic"] and set(described["multi"]) == {
        "flair",
        "t1",
        "t1ce",
        "t2",
    }
    assert results["multi"]["mapping_notes"] == results["classic"]["mapping_notes"]
    assert results["multi"]["mask"] == results["classic"]["mask"]
    assert np.array_equal(masks["multi"].affine, masks["classic"].affine)
    labels = np.asarray(masks["multi"].dataobj)
    assert np.count_nonzero(labels) > 0, "empty mask: the comparison would say nothing"
    assert np.array_equal(labels, np.asarray(masks["classic"].dataobj))
    assert results["multi"]["volumes_ml"] == results["classic"]["volumes_ml"]


def test_a_seg_on_the_multi_frame_flair_is_stored_valid_and_on_its_frames(
    studies: tuple[str, str, Path], orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path
) -> None:
    _, multi, folder = studies
    app = create_app(segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path / "results"))
    with TestClient(app) as client:
        response = client.post(f"/segment/{multi}", params={"reference": "flair", "store_seg": "true"})
    assert response.status_code == 200, response.text
    stored = response.json()["dicom_seg"]
    with orthanc.client() as pacs:
        (tmp_path / "seg.dcm").write_bytes(pacs.download_instance(stored["orthanc_id"]))
    run = subprocess.run(["dciodvfy", str(tmp_path / "seg.dcm")], capture_output=True, text=True)
    assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    source = pydicom.dcmread(folder / "flair" / "multiframe.dcm", stop_before_pixels=True)
    frames = int(source.NumberOfFrames)
    assert int(seg.NumberOfFrames) == 3 * frames  # every frame, every segment
    for item in seg.PerFrameFunctionalGroupsSequence:
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert str(reference.ReferencedSOPInstanceUID) == str(source.SOPInstanceUID)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        expected = fg.find(source, "ImagePositionPatient", int(reference.ReferencedFrameNumber) - 1)
        assert np.allclose(position, [float(v) for v in expected], atol=0.01)
