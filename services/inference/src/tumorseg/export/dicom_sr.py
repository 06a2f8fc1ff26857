"""The volumes of a result as a DICOM Structured Report (highdicom ``Comprehensive3DSR``, TID 1500
Measurement Report), built next to the DICOM SEG it measures; the pipeline stores it (this module does
no I/O).

What is written: one Comprehensive 3D SR instance in the SEG's study, a new series, whose evidence is the
SEG. The report holds one measurement group per region, each with a Volume (SCT 118565006) in ml (UCUM),
the algorithm (model name and version), a tracking identifier and a time point:

======  =====================================================  ===========================================
region  group                                                  image reference
======  =====================================================  ===========================================
ncr     TID 1411 volumetric ROI                                SEG segment 1 (``ReferencedSegment``)
ed      TID 1411 volumetric ROI                                SEG segment 2
et      TID 1411 volumetric ROI                                SEG segment 3
tc      TID 1501 measurement group (NCR ∪ ET)                  the SEG instance (``Source of Measurement``)
wt      TID 1501 measurement group (NCR ∪ ED ∪ ET)             the SEG instance
======  =====================================================  ===========================================

Why TC and WT reference the SEG instance and get no segment of their own: BraTS labels are disjoint, and
the SEG holds them as three non-overlapping segments; the unions are fully defined by those segments (the
group's tracking identifier names them), while adding two overlapping segments would enlarge every SEG by
two thirds and leave the SEGs stored by earlier versions (three segments, recognised as the same model's
and not stored again) without the segments a new SR would reference. A TID 1411 group must reference one
ROI, so the unions are TID 1501 groups whose source is the SEG instance.

Nothing in the SR depends on another study: the tracking UID of a region is derived from the PatientID
and the region alone (the same for every study of the patient, so viewers can link time points), and the
time point is the study's date. The history can therefore be segmented later, in any order, and each
study's SR stays as it was written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from tumorseg import __version__
from tumorseg.export.dicom_seg import (
    ARTIFICIAL_INTELLIGENCE,
    BRAIN,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    PROPERTY_TYPES,
    SEG_MANUFACTURER,
    algorithm_tag,
)
from tumorseg.labels import ED, ET, NCR

MILLILITRE = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
VOLUME = codes.SCT.Volume  # SCT 118565006
MR_BRAIN = hd.sr.CodedConcept("24590-2", "LN", "MR Brain")
_LO_MAX = 64


@dataclass(frozen=True)
class SrRegion:
    """A region of the report: its ``volumes_ml`` key, its name, its finding type and, for the BraTS
    labels, its segment in the SEG (``None`` for the unions, which reference the SEG instance)."""

    key: str
    name: str
    finding_type: Code
    segment_number: int | None


SR_REGIONS: tuple[SrRegion, ...] = (
    SrRegion("ncr", "NCR necrotic tumor core", PROPERTY_TYPES[NCR], 1),
    SrRegion("ed", "ED peritumoral edema", PROPERTY_TYPES[ED], 2),
    SrRegion("et", "ET enhancing tumor", PROPERTY_TYPES[ET], 3),
    SrRegion("tc", "TC tumor core (NCR + ET, SEG segments 1 and 3)", PROPERTY_TYPES[ET], None),
    SrRegion("wt", "WT whole tumor (NCR + ED + ET, SEG segments 1-3)", PROPERTY_TYPES[ET], None),
)


def tracking_uid(patient_id: str, region: str) -> str:
    """The region's tracking UID for this patient: the same in every study's SR (a 2.25 UUID-derived
    UID from a hash of the PatientID and the region), so viewers can link the time points."""
    digest = hashlib.sha256(f"tumorseg|{patient_id}|{region}".encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def time_point(study_date: str) -> str:
    """The time point of a study: its date (DICOM DA ``YYYYMMDD``) as ``YYYY-MM-DD``."""
    date = study_date.strip()
    if len(date) == 8 and date.isdigit():
        return f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return "study date unknown"


def build_report(
    segmentation: Dataset,
    volumes_ml: Mapping[str, float],
    *,
    patient_id: str,
    algorithm_name: str,
    algorithm_version: str,
    series_number: int,
) -> hd.sr.Comprehensive3DSR:
    """The SR of ``volumes_ml`` (keys ``SR_REGIONS``, millilitres) measured on ``segmentation`` (the SEG
    dataset, as built or as read back from the PACS: only its header is read). Patient and study
    attributes come from the SEG."""
    missing = [r.key for r in SR_REGIONS if volumes_ml.get(r.key) is None]
    if missing:
        raise ValueError(f"no volume for {', '.join(missing)}: the SR needs every region")
    algorithm = hd.sr.AlgorithmIdentification(
        name=algorithm_name[:_LO_MAX], version=algorithm_version[:_LO_MAX], family=ARTIFICIAL_INTELLIGENCE
    )
    when = hd.sr.TimePointContext(time_point=time_point(str(segmentation.get("StudyDate", ""))))
    groups = [
        _group(segmentation, region, float(volumes_ml[region.key]), patient_id, algorithm, when)
        for region in SR_REGIONS
    ]
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["tumorseg", algorithm_name, algorithm_version]),
            name="tumorseg",
            manufacturer_name=SEG_MANUFACTURER,
            model_name=algorithm_name[:_LO_MAX],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=MR_BRAIN,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[segmentation],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=SEG_MANUFACTURER,
        is_complete=True,
        series_description=f"tumorseg SR volumes ({algorithm_name} {algorithm_version})"[:_LO_MAX],
        manufacturer_model_name=algorithm_name[:_LO_MAX],
        software_versions=__version__,
        device_serial_number=algorithm_tag(algorithm_name, algorithm_version),
    )


def _group(
    segmentation: Dataset,
    region: SrRegion,
    volume_ml: float,
    patient_id: str,
    algorithm: hd.sr.AlgorithmIdentification,
    when: hd.sr.TimePointContext,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations:
    common: dict[str, Any] = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=tracking_uid(patient_id, region.key), identifier=region.name
        ),
        "time_point_context": when,
        "finding_type": region.finding_type,
        "finding_category": MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        "finding_sites": [hd.sr.FindingSite(BRAIN)],
        "algorithm_id": algorithm,
        "measurements": [hd.sr.Measurement(name=VOLUME, value=round(volume_ml, 3), unit=MILLILITRE)],
    }
    if region.segment_number is not None:
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            # The source series, not its instances one by one: the SR's evidence is the SEG alone.
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=str(segmentation.SOPClassUID),
                sop_instance_uid=str(segmentation.SOPInstanceUID),
                segment_number=region.segment_number,
                source_series=hd.sr.SourceSeriesForSegmentation(
                    str(segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID)
                ),
            ),
            **common,
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                str(segmentation.SOPClassUID), str(segmentation.SOPInstanceUID)
            )
        ],
        **common,
    )


@dataclass(frozen=True)
class ReadReport:
    """What a stored SR says, read back with highdicom's SR parsing: the volume of each region (ml), the
    tracking UID of each, and the (SEG SOP instance, segment number) each TID 1411 group references."""

    volumes_ml: dict[str, float]
    tracking_uids: dict[str, str]
    segments: dict[str, tuple[str, int]]
    time_points: set[str]


def read_report(dataset: Dataset) -> ReadReport:
    """Parse an SR written by ``build_report`` (``hd.sr.srread`` gives the same object from a file)."""
    # A report as built holds plain content items; parsed, the MeasurementReport template with its getters.
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset, copy=True)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport), "not a TID 1500 Measurement Report"
    by_name = {r.name: r for r in SR_REGIONS}
    volumes: dict[str, float] = {}
    uids: dict[str, str] = {}
    segments: dict[str, tuple[str, int]] = {}
    times: set[str] = set()
    groups: list[Any] = [
        *report.get_volumetric_roi_measurement_groups(),
        *report.get_image_measurement_groups(),
    ]
    for group in groups:
        region = by_name[str(group.tracking_identifier)]
        (measurement,) = group.get_measurements(name=VOLUME)
        volumes[region.key] = float(measurement.value)
        uids[region.key] = str(group.tracking_uid)
        times.update(_texts(group, "C2348792"))
        if isinstance(group, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations):
            reference = group.referenced_segment
            assert reference is not None
            segments[region.key] = (
                str(reference.referenced_sop_instance_uid),
                int((reference.referenced_segment_numbers or [0])[0]),
            )
    return ReadReport(volumes, uids, segments, times)


def _texts(group: Any, code: str) -> Iterator[str]:
    for item in group[0].ContentSequence:
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == code:
            yield str(item.TextValue)
