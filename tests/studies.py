"""Converted phantom studies for integration tests: how the clinical study is acquired, the record of an
uploaded one, and clones of a converted study under a new patient (optionally edited)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from tests.dicom_factory import unique_patient_id
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.dicom_options import CLINICAL_GEOMETRY, ConversionOptions
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

CLINICAL = ConversionOptions(geometry=CLINICAL_GEOMETRY, decoys=True, prior_study=True)


@dataclass(frozen=True)
class UploadedStudy:
    patient_id: str
    case_dir: Path
    converted: ConvertedStudy

    def folder(self, modality: str) -> Path:
        return self.converted.get(modality).folder


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
    modalities: tuple[str, ...] = SEQUENCES,
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
