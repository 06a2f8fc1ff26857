"""Multi-frame versions of classic MR series for tests: Legacy Converted Enhanced MR (highdicom's legacy
converter, as a PACS conversion writes it) and Enhanced MR (built here from that conversion, the physics in
the MR functional-group macros as a scanner writes it), with the frames in the source's order or shuffled.
``dciodvfy`` passes both (``tests/integration/test_multiframe.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.legacy import LegacyConvertedEnhancedMRImage
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import DSfloat


def legacy_converted(
    files: Sequence[bytes], *, shuffle_seed: int | None = None, keep_description: bool = True
) -> Dataset:
    """One Legacy Converted Enhanced MR instance holding every slice of the classic series ``files`` (its
    SeriesInstanceUID and SeriesNumber kept). With ``shuffle_seed`` the frames (pixels and per-frame
    functional groups together) are put in a random order: a valid object whose frame order says nothing
    about the slice order (each frame keeps its own functional groups, dimension index included). With
    ``keep_description=False`` the converter's own description stays (the source's plus " (enhanced
    conversion)" where that fits 64 characters)."""
    datasets = [pydicom.dcmread(DicomBytesIO(data)) for data in files]
    first = datasets[0]
    converted = LegacyConvertedEnhancedMRImage(
        datasets,
        series_instance_uid=str(first.SeriesInstanceUID),
        series_number=int(first.get("SeriesNumber") or 1),
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    # highdicom appends " (enhanced conversion)" to the description; PACS converters keep it (the mapping
    # must not read that "enhanced" as contrast: tests/integration/test_mapping_evidence.py). Kept here so
    # that the classic and the converted study have the same notes.
    if keep_description and "SeriesDescription" in first:
        converted.SeriesDescription = first.SeriesDescription
    # It replaces the classic series (same SeriesInstanceUID), so it does not reference those instances as
    # another series of the study (dciodvfy: "ReferencedSeriesSequence present but ... does not reference").
    if "ReferencedSeriesSequence" in converted:
        del converted.ReferencedSeriesSequence
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(int(converted.NumberOfFrames))
        frames = converted.pixel_array
        groups = list(converted.PerFrameFunctionalGroupsSequence)
        converted.PerFrameFunctionalGroupsSequence = DicomSequence([groups[i] for i in order])
        converted.PixelData = np.ascontiguousarray(frames[order]).tobytes()
    return converted


ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _sequence(**attributes: object) -> DicomSequence:
    return DicomSequence([_item(**attributes)])


def enhanced_mr(files: Sequence[bytes], *, shuffle_seed: int | None = None) -> Dataset:
    """One Enhanced MR Image Storage instance of the classic series ``files``: geometry per frame (plane
    position) and shared (orientation, pixel measures); the physics only where Enhanced MR keeps it
    (MR Timing and Related Parameters, MR Echo, MR Modifier, ... macros; contrast in Contrast/Bolus Usage),
    none of the classic physics attributes at the top level."""
    source = pydicom.dcmread(DicomBytesIO(files[0]), stop_before_pixels=True)
    ds = legacy_converted(files, shuffle_seed=shuffle_seed)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    shared = ds.SharedFunctionalGroupsSequence[0]
    del shared.UnassignedSharedConvertedAttributesSequence
    for group in ds.PerFrameFunctionalGroupsSequence:
        for keyword in (
            "UnassignedPerFrameConvertedAttributesSequence",
            "ConversionSourceAttributesSequence",
        ):
            if keyword in group:
                delattr(group, keyword)
        content = group.FrameContentSequence[0]
        content.FrameAcquisitionDateTime = content.FrameReferenceDateTime = "20240312093500"
        content.FrameAcquisitionDuration = 1000.0
    for keyword in ("ContrastBolusAgent", "RescaleSlope", "RescaleIntercept", "RescaleType"):
        if keyword in ds:
            delattr(ds, keyword)
    inversion = source.get("InversionTime")
    spin_echo = "SE" in list(source.get("ScanningSequence") or [])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    shared.MRImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    for item in (ds, shared.MRImageFrameTypeSequence[0]):
        item.ComplexImageComponent = "MAGNITUDE"
        item.AcquisitionContrast = "UNKNOWN"
    ds.update(
        _item(
            Manufacturer=source.get("Manufacturer") or "SIEMENS",
            ManufacturerModelName=source.get("ManufacturerModelName") or "Prisma",
            DeviceSerialNumber="1234",
            SoftwareVersions="syngo MR XA30",
            PatientPosition="HFS",
            BurnedInAnnotation="NO",
            LossyImageCompression="00",
            AcquisitionDateTime="20240312093500",
            AcquisitionDuration=60.0,
            ApplicableSafetyStandardAgency="IEC",
            KSpaceFiltering="NONE",
            MagneticFieldStrength=3.0,
            ResonantNucleus="1H",
            MRAcquisitionType=source.get("MRAcquisitionType") or "3D",
            PulseSequenceName=str(source.get("SequenceName") or "tfl3d1"),
            EchoPulseSequence="SPIN" if spin_echo else "GRADIENT",
            MultiPlanarExcitation="NO",
            PhaseContrast="NO",
            TimeOfFlightContrast="NO",
            SteadyStatePulseSequence="NONE",
            EchoPlanarPulseSequence="NO",
            SaturationRecovery="NO",
            SpectrallySelectedSuppression="NONE",
            OversamplingPhase="NONE",
            GeometryOfKSpaceTraversal="RECTILINEAR",
            SegmentedKSpaceTraversal="SINGLE",
            NumberOfKSpaceTrajectories=1,
            RectilinearPhaseEncodeReordering="LINEAR",
        )
    )
    if spin_echo:
        ds.MultipleSpinEcho = "NO"
    if ds.MRAcquisitionType == "3D":
        ds.CoverageOfKSpace = "FULL"
    shared.MRTimingAndRelatedParametersSequence = _sequence(
        RepetitionTime=float(source.RepetitionTime),
        FlipAngle=float(source.get("FlipAngle") or 90),
        EchoTrainLength=int(source.get("EchoTrainLength") or 1),
        RFEchoTrainLength=1,
        GradientEchoTrainLength=1,
        OperatingModeSequence=_sequence(OperatingModeType="IEC_SAR", OperatingMode="IEC_NORMAL"),
        SpecificAbsorptionRateSequence=_sequence(
            SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=0.5
        ),
    )
    shared.MREchoSequence = _sequence(EffectiveEchoTime=float(source.EchoTime))
    modifier = _item(
        InversionRecovery="YES" if inversion is not None else "NO",
        FlowCompensation="NONE",
        T2Preparation="NO",
        SpatialPresaturation="NONE",
        PartialFourier="NO",
        ParallelAcquisition="NO",
        SpectrallySelectedExcitation="NONE",
    )
    if inversion is not None:
        modifier.InversionTimes = [float(inversion)]
    shared.MRModifierSequence = DicomSequence([modifier])
    shared.MRImagingModifierSequence = _sequence(
        MagnetizationTransfer="NONE",
        BloodSignalNulling="NO",
        Tagging="NONE",
        TransmitterFrequency=123.25,
        PixelBandwidth=200.0,
    )
    shared.MRReceiveCoilSequence = _sequence(
        ReceiveCoilName="HeadNeck_20",
        ReceiveCoilManufacturerName="",
        ReceiveCoilType="VOLUME",
        QuadratureReceiveCoil="NO",
    )
    shared.MRTransmitCoilSequence = _sequence(
        TransmitCoilName="Body", TransmitCoilManufacturerName="", TransmitCoilType="BODY"
    )
    shared.MRAveragesSequence = _sequence(NumberOfAverages=1.0)
    shared.MRFOVGeometrySequence = _sequence(
        InPlanePhaseEncodingDirection="ROW",
        MRAcquisitionFrequencyEncodingSteps=int(ds.Columns),
        MRAcquisitionPhaseEncodingStepsInPlane=int(ds.Rows),
        PercentSampling=100.0,
        PercentPhaseFieldOfView=100.0,
    )
    if "FrameAnatomySequence" not in shared:
        region = _item(CodeValue="12738006", CodingSchemeDesignator="SCT", CodeMeaning="Brain")
        shared.FrameAnatomySequence = _sequence(
            AnatomicRegionSequence=DicomSequence([region]), FrameLaterality="U"
        )
    agent = source.get("ContrastBolusAgent")
    if agent:
        code = _item(CodeValue="C-B0300", CodingSchemeDesignator="SRT", CodeMeaning=str(agent))
        ds.ContrastBolusAgentSequence = DicomSequence([code])
        code.ContrastBolusAgentNumber = 1
        code.ContrastBolusIngredientCodeSequence = DicomSequence([])
        code.ContrastBolusIngredientConcentration = None
        code.ContrastBolusVolume = None
        code.ContrastBolusAdministrationRouteSequence = DicomSequence(
            [_item(CodeValue="G-D101", CodingSchemeDesignator="SRT", CodeMeaning="Intravenous route")]
        )
        shared.ContrastBolusUsageSequence = _sequence(
            ContrastBolusAgentNumber=1, ContrastBolusAgentAdministered="YES", ContrastBolusAgentDetected="NO"
        )
    return ds


def shorten_decimals(ds: Dataset) -> Dataset:
    """``ds`` with every decimal string (DS) written in at most 16 characters, as the standard allows
    (tests' synthetic series write Python's full float digits), nested sequences included."""
    for element in ds.iterall():
        if element.VR == "DS" and element.value is not None and element.value != "":
            values = element.value if element.VM > 1 else [element.value]
            short = [DSfloat(float(v), auto_format=True) for v in values]
            element.value = short if element.VM > 1 else short[0]
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
