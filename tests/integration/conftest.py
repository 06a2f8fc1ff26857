"""Session data for integration tests: one phantom case, converted to DICOM the ways a clinic would."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import OrthancEndpoint
from tests.dicom_factory import unique_patient_id
from tests.models import tiny_package
from tumorseg.pacs.upload import upload_directory
from tumorseg.synth.dicom_options import CLINICAL_GEOMETRY, ConversionOptions
from tumorseg.synth.phantom import generate_case, write_case
from tumorseg.synth.to_dicom import ConvertedStudy, convert_case

PHANTOM_SEED = 424242  # not a training seed (those are small consecutive integers)

CLINICAL = ConversionOptions(geometry=CLINICAL_GEOMETRY, decoys=True, prior_study=True)


@dataclass(frozen=True)
class UploadedStudy:
    patient_id: str
    case_dir: Path
    converted: ConvertedStudy

    def folder(self, modality: str) -> Path:
        return self.converted.get(modality).folder


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package with random weights: a non-trivial mask for plumbing and geometry tests, fast on CPU."""
    return tiny_package(tmp_path_factory.mktemp("model") / "tiny", roi_size=(64, 64, 64))


@pytest.fixture(scope="session")
def phantom_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(generate_case(PHANTOM_SEED), tmp_path_factory.mktemp("phantom"), "BraTS2021_90001")


@pytest.fixture(scope="session")
def clinical_study(
    phantom_case: Path, orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> UploadedStudy:
    """Oblique anisotropic FLAIR, sagittal 3D T1, reversed-slice T1ce, coronal T2, localizer, DWI, ADC,
    and an older complete study — uploaded."""
    patient_id = unique_patient_id("CLIN")
    converted = convert_case(phantom_case, patient_id, tmp_path_factory.mktemp("clinical"), CLINICAL)
    with orthanc.client() as pacs:
        report = upload_directory(pacs, converted.out)
    assert not report.failed and report.stored == sum(s.n_files for s in converted.series)
    return UploadedStudy(patient_id, phantom_case, converted)


@pytest.fixture(scope="session")
def plain_study(phantom_case: Path, tmp_path_factory: pytest.TempPathFactory) -> ConvertedStudy:
    """The phantom on its own lattice, four series, not uploaded: raw material for clones."""
    return convert_case(phantom_case, "PLAIN", tmp_path_factory.mktemp("plain"))


Edit = Callable[[str, int, pydicom.Dataset], pydicom.Dataset | None]


def drop_instance(modality: str, index: int) -> Edit:
    """An ``Edit`` for ``clone_study`` that leaves out one instance (e.g. a slice in the middle)."""

    def edit(m: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset | None:
        return None if (m, n) == (modality, index) else ds

    return edit


def clone_study(
    converted: ConvertedStudy,
    out: Path,
    *,
    modalities: tuple[str, ...] = ("flair", "t1", "t1ce", "t2"),
    edit: Edit | None = None,
    duplicate: tuple[str, ...] = (),
) -> str:
    """Copy a converted study under a new PatientID and new UIDs into ``out``; ``edit(modality, n, ds)``
    may change or (returning None) drop an instance; each modality in ``duplicate`` is written twice
    as two series that differ only in their UIDs. Returns the new PatientID."""
    patient_id = unique_patient_id("CLONE")
    study_uid = generate_uid()
    copies = [(m, "") for m in modalities] + [(m, "-copy") for m in duplicate]
    for modality, suffix in copies:
        series_uid = generate_uid()
        folder = out / f"{modality}{suffix}"
        folder.mkdir(parents=True)
        for n, path in enumerate(sorted(converted.get(modality).folder.glob("*.dcm"))):
            ds = pydicom.dcmread(path)
            ds.PatientID = patient_id
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            edited = edit(modality, n, ds) if edit else ds
            if edited is not None:
                edited.save_as(folder / path.name, enforce_file_format=True)
    return patient_id
