"""Writing one DICOM MR series (MR Image Storage, Part-10 files) from sampled slices.

Contract: a series is a list of :class:`Frame`, each a 2-D ``pixels[row, column]`` array of stored
values (``int16`` or ``uint16``) with its ImagePositionPatient, ImageOrientationPatient (LPS, see
:mod:`tumorseg_devkit.synth.dicom_geometry`) and PixelSpacing (row spacing, column spacing). Real-valued
intensities become stored values through :func:`quantise`, which picks one RescaleSlope/Intercept
per series. Every UID is derived from caller-given entropy (:func:`derive_uid`), so writing the same
series twice gives byte-identical files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.pixels.encoders import JPEG2000LosslessEncoder, RLELosslessEncoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from tumorseg.errors import InvalidInput
from tumorseg_devkit.synth.dicom_profiles import SCANNERS, SequenceProfile, Vendor

logger = logging.getLogger(__name__)

TransferSyntax = Literal["explicit", "rle", "jpeg2000"]
TRANSFER_SYNTAXES: tuple[TransferSyntax, ...] = get_args(TransferSyntax)
_TS_UIDS: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
}
IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["tumorseg", "synth", "to_dicom"])
IMPLEMENTATION_VERSION = "TUMORSEG_01"
J2K_MIN_SIZE = 32  # pylibjpeg-openjpeg always encodes 6 DWT resolution levels


def derive_uid(*parts: object) -> str:
    """A UID that is a pure function of ``parts`` (SHA-512 of their text under pydicom's root)."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def ds_number(value: float) -> str:
    """A Decimal String of at most 16 characters, with float noise (< 1e-9) removed."""
    return format_number_as_ds(float(round(float(value), 9)) + 0.0)


@dataclass(frozen=True, eq=False)
class StoredPixels:
    """Stored values and the rescale that maps them back: real = stored × slope + intercept."""

    values: np.ndarray  # int16 or uint16, shape of the input
    slope: str  # exactly as written to the files
    intercept: str
    window_center: str
    window_width: str

    @property
    def pixel_representation(self) -> int:
        return 1 if self.values.dtype == np.int16 else 0


def quantise(real: np.ndarray) -> StoredPixels:
    """16-bit stored values for real intensities (any shape, any numeric dtype).

    Integer-valued input that fits int16 (else uint16) is stored as is: slope 1, intercept 0,
    exact. Anything else is scaled with intercept 0 (so background stays exactly 0): non-negative
    data into uint16 with slope = max / 65535, signed data into int16 with slope = max|v| / 32767.
    The quantisation error is then at most slope / 2, i.e. max|v| / 131070 for non-negative data
    (0.00076 % of the maximum). Non-finite values become 0.
    """
    values = np.asarray(real)
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
        logger.warning("replacing %d non-finite voxels with 0", int(np.count_nonzero(~np.isfinite(values))))
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    vmin = float(values.min()) if values.size else 0.0
    vmax = float(values.max()) if values.size else 0.0
    integral = np.issubdtype(values.dtype, np.integer) or bool(np.array_equal(values, np.rint(values)))
    if integral and vmin >= -32768 and vmax <= 32767:
        stored, slope = values.astype(np.int16), "1.0"
    elif integral and vmin >= 0 and vmax <= 65535:
        stored, slope = values.astype(np.uint16), "1.0"
    else:
        signed = vmin < 0
        top = max(abs(vmin), abs(vmax)) or 1.0
        # Quantise with the slope exactly as it is read back from the DS string; the 1e-6 margin keeps
        # the extreme value inside the 16-bit range whichever way the DS text rounds.
        slope = format_number_as_ds(top / (32767 if signed else 65535) * (1 + 1e-6))
        scaled = np.rint(values / float(slope))
        stored = (
            np.clip(scaled, -32768, 32767).astype(np.int16)
            if signed
            else np.clip(scaled, 0, 65535).astype(np.uint16)
        )
    centre, width = _window(values)
    return StoredPixels(stored, slope, "0.0", ds_number(centre), ds_number(width))


def _window(values: np.ndarray) -> tuple[float, float]:
    """A VOI window over the 1st-99th percentile of the non-zero voxels (a sparse sample is enough)."""
    flat = values.reshape(-1)[:: max(1, values.size // 200_000)]
    nonzero = flat[flat != 0]
    if nonzero.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(nonzero, [1.0, 99.0])
    return (float(lo) + float(hi)) / 2, max(float(hi) - float(lo), 1.0)


@dataclass(frozen=True)
class StudyContext:
    """Patient and study attributes shared by every series of one study."""

    patient_id: str
    patient_name: str
    birth_date: date
    patient_sex: str
    study_instance_uid: str
    frame_of_reference_uid: str
    study_date: date
    study_time: time
    accession_number: str
    study_id: str
    study_description: str
    vendor: Vendor


@dataclass(frozen=True)
class SeriesSpec:
    """Series-level attributes of one written series."""

    key: str
    profile: SequenceProfile
    description: str
    series_number: int
    series_instance_uid: str
    slice_thickness: float
    spacing_between_slices: float | None
    minutes_after_start: float


@dataclass(frozen=True, eq=False)
class Frame:
    """One instance: stored ``pixels[row, column]``, its plane in LPS and per-instance extras."""

    pixels: np.ndarray
    position: np.ndarray
    orientation: Sequence[float]
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    instance_number: int
    extra: Mapping[str, object] = field(default_factory=dict)


def write_series(
    study: StudyContext,
    spec: SeriesSpec,
    frames: Sequence[Frame],
    stored: StoredPixels,
    folder: Path,
    transfer_syntax: TransferSyntax = "explicit",
) -> int:
    """Write ``frames`` as ``folder/IM_NNNN.dcm`` (NNNN = InstanceNumber); returns the file count."""
    if transfer_syntax == "jpeg2000" and min(min(f.pixels.shape) for f in frames) < J2K_MIN_SIZE:
        raise InvalidInput(
            f"{spec.key}: JPEG 2000 needs images of at least {J2K_MIN_SIZE}×{J2K_MIN_SIZE} pixels "
            "(openjpeg uses 6 resolution levels); use --transfer-syntax rle or explicit"
        )
    folder.mkdir(parents=True, exist_ok=True)
    encoder = _SeriesEncoder(_series_template(study, spec, stored))
    for frame in frames:
        sop_uid = derive_uid(spec.series_instance_uid, "instance", frame.instance_number)
        ds = Dataset()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = frame.instance_number
        ds.ImagePositionPatient = [ds_number(v) for v in frame.position]
        ds.ImageOrientationPatient = [ds_number(v) for v in frame.orientation]
        normal = np.cross(np.asarray(frame.orientation[:3]), np.asarray(frame.orientation[3:]))
        ds.SliceLocation = ds_number(float(np.dot(frame.position, normal)))
        ds.Rows, ds.Columns = (int(n) for n in frame.pixels.shape)
        ds.AcquisitionMatrix = [0, ds.Columns, ds.Rows, 0]  # frequency along rows, phase along columns
        ds.PixelSpacing = [ds_number(v) for v in frame.pixel_spacing]
        for keyword, value in frame.extra.items():
            setattr(ds, keyword, value)
        _set_pixels(ds, frame.pixels, transfer_syntax, stored.pixel_representation)
        path = folder / f"IM_{frame.instance_number:04d}.dcm"
        path.write_bytes(encoder.encode(ds, _file_meta(sop_uid, transfer_syntax)))
    return len(frames)


class _SeriesEncoder:
    """Part-10 bytes for the instances of one series, explicit VR little endian dataset encoding.

    ``pydicom.dcmwrite`` re-encodes ~100 constant attributes for every slice, which made writing the
    dominant cost of a conversion; here they are encoded once and merged, in tag order, with the
    few attributes that change per instance. The result is what ``dcmwrite(enforce_file_format=True)``
    writes (the tests compare the two).
    """

    def __init__(self, constant: Dataset) -> None:
        self._encodings = convert_encodings(constant.SpecificCharacterSet)
        self._constant = [(int(elem.tag), self._element(elem)) for elem in constant]

    def _element(self, elem: DataElement) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, elem, self._encodings)
        return fp.getvalue()

    def encode(self, varying: Dataset, meta: FileMetaDataset) -> bytes:
        parts = self._constant + [(int(elem.tag), self._element(elem)) for elem in varying]
        tags = [tag for tag, _ in parts]
        if len(set(tags)) != len(tags):
            raise ValueError("an attribute is both constant and per instance")
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        for _, data in sorted(parts, key=lambda part: part[0]):
            fp.write(data)
        return bytes(fp.getvalue())


def _file_meta(sop_instance_uid: str, transfer_syntax: TransferSyntax) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = _TS_UIDS[transfer_syntax]
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def _set_pixels(
    ds: Dataset, pixels: np.ndarray, transfer_syntax: TransferSyntax, pixel_representation: int
) -> None:
    data = np.ascontiguousarray(pixels)
    if transfer_syntax == "explicit":
        ds.PixelData = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
        ds["PixelData"].VR = "OW"
        return
    encoder = RLELosslessEncoder if transfer_syntax == "rle" else JPEG2000LosslessEncoder
    encoded = encoder.encode(
        data,
        rows=data.shape[0],
        columns=data.shape[1],
        number_of_frames=1,
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=16,
        pixel_representation=pixel_representation,
        photometric_interpretation="MONOCHROME2",
    )
    ds.PixelData = encapsulate([encoded])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _series_template(study: StudyContext, spec: SeriesSpec, stored: StoredPixels) -> Dataset:
    """The attributes every instance of the series shares (no per-instance ones: see write_series)."""
    profile = spec.profile
    scanner = SCANNERS[study.vendor]
    series_start = datetime.combine(study.study_date, study.study_time) + timedelta(
        minutes=spec.minutes_after_start
    )
    series_date, series_time = series_start.strftime("%Y%m%d"), series_start.strftime("%H%M%S.%f")[:10]

    ds = Dataset()
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = list(profile.image_type)
    ds.InstanceCreationDate = series_date
    ds.InstanceCreationTime = series_time
    ds.SOPClassUID = MRImageStorage
    # General Study / Patient / Patient Study
    ds.StudyDate = study.study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = series_date
    ds.StudyTime = study.study_time.strftime("%H%M%S")
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = series_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = "MR"
    ds.Manufacturer = scanner.manufacturer
    ds.InstitutionName = "Tumorseg Synthetic Imaging"
    ds.ReferringPhysicianName = "REFERRER^SYNTHETIC"
    ds.StationName = scanner.station
    ds.StudyDescription = study.study_description
    ds.SeriesDescription = spec.description
    ds.ManufacturerModelName = scanner.model
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date.strftime("%Y%m%d")
    ds.PatientSex = study.patient_sex
    ds.PatientAge = _age(study.birth_date, study.study_date)
    ds.PatientWeight = "70"
    # MR acquisition
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = list(profile.scanning_sequence)
    ds.SequenceVariant = list(profile.sequence_variant)
    ds.ScanOptions = list(profile.scan_options)
    ds.MRAcquisitionType = profile.acquisition_type
    ds.SequenceName = profile.sequence_name
    ds.AngioFlag = "N"
    ds.SliceThickness = ds_number(spec.slice_thickness)
    ds.RepetitionTime = ds_number(profile.repetition_time)
    ds.EchoTime = ds_number(profile.echo_time)
    if profile.inversion_time is not None:
        ds.InversionTime = ds_number(profile.inversion_time)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = ds_number(scanner.imaging_frequency)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = ds_number(scanner.field_strength)
    if spec.spacing_between_slices is not None:
        ds.SpacingBetweenSlices = ds_number(spec.spacing_between_slices)
    ds.EchoTrainLength = str(profile.echo_train_length)
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "100"
    ds.PixelBandwidth = "200"
    ds.DeviceSerialNumber = "10000"
    ds.SoftwareVersions = scanner.software
    ds.ProtocolName = spec.description
    ds.ReceiveCoilName = scanner.coil
    ds.TransmitCoilName = "Body"
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.FlipAngle = ds_number(profile.flip_angle)
    ds.PatientPosition = "HFS"
    if profile.contrast_agent is not None:
        ds.ContrastBolusAgent = profile.contrast_agent
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = "7.5"
        ds.ContrastBolusIngredient = "GADOLINIUM"
    # Series / Frame of Reference / Image Plane
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = spec.series_instance_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = str(spec.series_number)
    ds.AcquisitionNumber = "1"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = stored.pixel_representation
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = stored.window_center
    ds.WindowWidth = stored.window_width
    ds.RescaleIntercept = stored.intercept
    ds.RescaleSlope = stored.slope
    ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    return ds


def _age(birth: date, on: date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{max(years, 0):03d}Y"
