"""Tiny but valid MR instances for client tests (the realistic series come from ``tumorseg to-dicom``)."""

from __future__ import annotations

import uuid

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def unique_patient_id(prefix: str = "TEST") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def mr_instance(
    patient_id: str,
    study_uid: str,
    series_uid: str,
    index: int,
    *,
    series_description: str = "AX T2 FLAIR",
    study_date: str = "20260101",
    repetition_time: str = "9000",
    echo_time: str = "100",
    inversion_time: str | None = "2500",
) -> bytes:
    """One 8×8 axial MR slice at z = index mm, as Part-10 bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = "TEST^PATIENT"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date
    ds.StudyTime = "120000"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = series_description
    ds.SeriesNumber = 1
    ds.Modality = "MR"
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.RepetitionTime = repetition_time
    ds.EchoTime = echo_time
    if inversion_time is not None:
        ds.InversionTime = inversion_time
    ds.MRAcquisitionType = "2D"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, float(index)]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 1
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame-of-reference"])
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(64, dtype=np.uint16) + index).tobytes()
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def mr_series(patient_id: str, study_uid: str, n: int = 3, **kwargs: object) -> list[bytes]:
    series_uid = generate_uid()
    return [mr_instance(patient_id, study_uid, series_uid, i, **kwargs) for i in range(n)]  # type: ignore[arg-type]


def volume_series(
    values: object,
    *,
    rows: int,
    columns: int,
    slices: int,
    origin: tuple[float, float, float],
    row_dir: tuple[float, float, float],
    col_dir: tuple[float, float, float],
    pixel_spacing: tuple[float, float],
    slice_spacing: float,
    patient_id: str = "GEOM",
    rescale: tuple[float, float] = (1.0, 0.0),
) -> list[bytes]:
    """A series whose pixel (row r, column c) of slice s holds ``values(point)`` where ``point`` is that
    pixel's LPS position, computed here from first principles: IPP_s + c·Δc·row_dir + r·Δr·col_dir, with
    IPP_s = origin + s·slice_spacing·(row_dir × col_dir). Stored = (value - intercept) / slope."""
    func = values  # a callable (N, 3) -> (N,)
    study_uid, series_uid = generate_uid(), generate_uid()
    rd, cd = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(rd, cd)
    rr, cc = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    files = []
    for s in range(slices):
        ipp = np.asarray(origin, float) + s * slice_spacing * normal
        points = ipp + cc[..., None] * pixel_spacing[1] * rd + rr[..., None] * pixel_spacing[0] * cd
        stored = (func(points.reshape(-1, 3)).reshape(rows, columns) - rescale[1]) / rescale[0]  # type: ignore[operator]
        data = mr_instance(patient_id, study_uid, series_uid, s)
        ds = pydicom_read(data)
        ds.Rows, ds.Columns = rows, columns
        ds.ImageOrientationPatient = [*map(float, rd), *map(float, cd)]
        ds.ImagePositionPatient = [float(v) for v in ipp]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_spacing
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.PixelRepresentation = 1
        ds.PixelData = np.round(stored).astype(np.int16).tobytes()
        files.append(to_bytes(ds))
    return files


def pydicom_read(data: bytes) -> Dataset:
    import pydicom

    return pydicom.dcmread(DicomBytesIO(data))


def to_bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
