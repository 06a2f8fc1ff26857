"""The mask as a DICOM Segmentation (highdicom), built as a new series of the source study; the pipeline
stores it through the PACS client (this module does no I/O).

Geometry contract. ``mask`` is a ``SimpleITK.Image`` of BraTS labels (0/1/2/4, any integer pixel type) on
exactly the reference series' lattice (``SeriesVolume.image``): index (i, j, k) = (column, row, slice),
with slice k the pixels of source instance ``reference.sop_instance_uids[k]``. ``GetArrayFromImage``
therefore gives (k, row, column), which is the (frame, Rows, Columns) layout of the source instances, so
frame k of every segment is written against source instance k with no resampling and no flips. Before
writing, each source header's ImagePositionPatient/ImageOrientationPatient/PixelSpacing/Rows/Columns is
checked against the mask lattice, so a mismatch fails loudly instead of producing a shifted SEG.

What is written: one BINARY Segmentation instance, SOP class Segmentation Storage, in the source study
and frame of reference, a new series. Every source frame is referenced for every segment
(``omit_empty_frames=False``): an all-zero mask still gives a valid SEG with all its frames, and viewers
that place frames by their source reference cannot shift a sparse SEG (NOTES.md). Segments:

====  ======  ========================  ============================================  ==================
seg   BraTS   label                     segmented property type                       display colour
====  ======  ========================  ============================================  ==================
1     1       NCR necrotic tumor core   SCT 6574001 "Necrosis"                        red
2     2       ED peritumoral edema      SCT 79654002 "Edema"                          green
3     4       ET enhancing tumor        SCT 108369006 "Neoplasm"                      yellow
====  ======  ========================  ============================================  ==================

All three have property category SCT 49755003 "Morphologically Abnormal Structure" (CID 7150; its older
meaning was "Morphologically Altered Structure") and anatomic region SCT 12738006 "Brain". These are the
codes DICOM's own segmentation context groups offer (CID 7151/7159) for necrosis, oedema and tumour.
SNOMED has no concept for "contrast-enhancing tumour", so ET is the neoplasm itself and the enhancing
part is carried by the segment label and description (the BraTS label number is in TrackingID).
The algorithm is identified by the model package (name, version), family DCM 123110 "Artificial
Intelligence", SegmentAlgorithmType AUTOMATIC.

A multi-frame reference (one Enhanced or Legacy Converted Enhanced MR instance, ``frame_numbers``) is
referenced frame by frame the same way: SEG frame *f* is the mask slice on source frame *f* (the file's
frame order, which need not follow the slices), each source frame's position checked against its slice.
A reference series that mixes multi-frame and single-frame instances has no SEG (``ValueError``).

Source instances are only read (headers, no pixels); nothing is written back to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from tumorseg import __version__
from tumorseg import functional_groups as fg
from tumorseg.labels import LABEL_STYLE

MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
BRAIN = Code("12738006", "SCT", "Brain")
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
PROPERTY_TYPES = {
    1: Code("6574001", "SCT", "Necrosis"),
    2: Code("79654002", "SCT", "Edema"),
    4: Code("108369006", "SCT", "Neoplasm"),
}
# Segment numbers must run 1..n in DICOM; BraTS labels are 1, 2, 4.
SEGMENT_NUMBERS = {1: 1, 2: 2, 4: 3}

# Positions are written in 0.01 mm steps and direction cosines with ~6 digits.
POSITION_TOLERANCE_MM = 0.05
ORIENTATION_TOLERANCE = 1e-3
# Patient and study attributes of type 2 that highdicom copies from the source by attribute access.
_TYPE2_COPIED = (
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_LO_MAX = 64
SEG_MANUFACTURER = "tumorseg"


def algorithm_tag(algorithm_name: str, algorithm_version: str) -> str:
    """DeviceSerialNumber of the SEG: the model package that made it (how a SEG of the same model version
    is recognised in the study)."""
    return f"{algorithm_name} {algorithm_version}"[:_LO_MAX]


class SourceSeries(Protocol):
    """The reference series as the SEG references it (``tumorseg.imaging.volume.SeriesVolume`` has it):
    ``sop_instance_uids[k]`` is the source instance of slice k (``frame_numbers[k]`` its frame, for a
    multi-frame source; empty otherwise); ``label`` names the series in messages."""

    @property
    def sop_instance_uids(self) -> tuple[str, ...]: ...

    @property
    def label(self) -> str: ...

    @property
    def frame_numbers(self) -> tuple[int, ...]: ...


def read_headers(files: Sequence[bytes]) -> list[Dataset]:
    """The source instances' headers (no pixel data), as highdicom needs them to reference the sources."""
    return [pydicom.dcmread(DicomBytesIO(data), stop_before_pixels=True) for data in files]


def segment_descriptions(algorithm_name: str, algorithm_version: str) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name[:_LO_MAX],
        family=ARTIFICIAL_INTELLIGENCE,
        version=algorithm_version[:_LO_MAX],
        source="tumorseg",
    )
    descriptions = []
    for label, number in SEGMENT_NUMBERS.items():
        abbreviation, name, rgb = LABEL_STYLE[label]
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"{abbreviation} {name}",
            segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            segmented_property_type=PROPERTY_TYPES[label],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"BraTS label {label}",
            tracking_uid=generate_uid(),
            anatomic_regions=[BRAIN],
            display_color=hd.color.CIELabColor.from_rgb(*rgb),
        )
        description.SegmentDescription = f"BraTS 2021 label {label}: {name}"
        descriptions.append(description)
    return descriptions


def _ordered_sources(uids: Sequence[str], label: str, headers: Sequence[Dataset]) -> list[Dataset]:
    """The headers of the instances ``uids`` in that order (slice order), as copies with the type-2
    patient and study attributes highdicom reads present (empty when the source lacks them)."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in headers}
    missing = [uid for uid in uids if uid not in by_uid]
    if missing:
        raise ValueError(f"{len(missing)} source instance(s) of {label} have no header")
    ordered = []
    for uid in uids:
        ds = by_uid[uid].copy()
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
        ordered.append(ds)
    return ordered


def _multi_frame_source(reference: SourceSeries, headers: Sequence[Dataset]) -> tuple[Dataset, list[int]]:
    """The one multi-frame source instance of ``reference`` (a copy, type-2 attributes present) and, for
    each of its frames in file order, the mask slice on it."""
    uids = set(reference.sop_instance_uids)
    if len(uids) != 1 or min(reference.frame_numbers) < 1:
        raise ValueError(
            f"{reference.label} mixes multi-frame and single-frame instances (or several multi-frame ones): "
            "no DICOM SEG is written for such a series"
        )
    (source,) = _ordered_sources(tuple(uids), reference.label, headers)
    slice_of_frame = [0] * fg.frame_count(source)
    if sorted(reference.frame_numbers) != list(range(1, len(slice_of_frame) + 1)):
        raise ValueError(f"the mask's slices are not the {len(slice_of_frame)} frames of {reference.label}")
    for k, number in enumerate(reference.frame_numbers):
        slice_of_frame[number - 1] = k
    return source, slice_of_frame


def _check_lattice(
    mask: sitk.Image, sources: Sequence[Dataset], slice_of_frame: Sequence[int] | None = None
) -> None:
    """Fail unless slice k of ``mask`` lies exactly on source instance k, or, for one multi-frame source,
    slice ``slice_of_frame[f]`` on its frame f (see the module docstring)."""
    columns, rows, slices = mask.GetSize()
    planes: list[tuple[Dataset, int | None, int]] = (
        [(sources[0], f, k) for f, k in enumerate(slice_of_frame)]
        if slice_of_frame is not None
        else [(ds, None, k) for k, ds in enumerate(sources)]
    )
    if slices != len(planes):
        raise ValueError(f"the mask has {slices} slices, the reference series {len(planes)} images")
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    spacing = mask.GetSpacing()
    for ds, frame, k in planes:

        def value(keyword: str, ds: Dataset = ds, frame: int | None = frame) -> Any:
            return ds.get(keyword) if frame is None else fg.find(ds, keyword, frame)

        iop = np.asarray([float(v) for v in value("ImageOrientationPatient")])
        ipp = np.asarray([float(v) for v in value("ImagePositionPatient")])
        expected = np.asarray(mask.TransformIndexToPhysicalPoint((0, 0, k)))
        if (
            (int(ds.Rows), int(ds.Columns)) != (rows, columns)
            or np.abs(iop - direction[:, :2].T.ravel()).max() > ORIENTATION_TOLERANCE
            or np.abs(np.asarray([float(v) for v in value("PixelSpacing")]) - (spacing[1], spacing[0])).max()
            > 1e-4
            or np.abs(ipp - expected).max() > POSITION_TOLERANCE_MM
        ):
            where = f"frame {frame + 1} of " if frame is not None else ""
            raise ValueError(
                f"slice {k} of the mask does not lie on {where}source instance {ds.SOPInstanceUID}"
            )


def stacked_segments(mask: sitk.Image) -> NDArray[np.uint8]:
    """(frames, Rows, Columns, segments) 0/1 from BraTS labels, segment s+1 at [..., s] (highdicom's
    stacked-segments layout), frame k = slice k of the mask."""
    labels = sitk.GetArrayViewFromImage(mask)
    return np.stack([labels == label for label in SEGMENT_NUMBERS], axis=-1).astype(np.uint8)


def build_segmentation(
    mask: sitk.Image,
    reference: SourceSeries,
    headers: Sequence[Dataset],
    *,
    algorithm_name: str,
    algorithm_version: str,
    series_number: int,
    missing: Sequence[str] = (),
) -> hd.seg.Segmentation:
    """A BINARY SEG of ``mask`` referencing every instance of ``reference`` (see the module docstring).
    ``headers``: the reference series' instances, any order, pixel data optional. ``missing``: sequences
    the study lacked, named in ContentDescription (``... without t2``)."""
    if reference.frame_numbers:
        source, slice_of_frame = _multi_frame_source(reference, headers)
        sources = [source]
        _check_lattice(mask, sources, slice_of_frame)
        pixels = stacked_segments(mask)[slice_of_frame]  # SEG frame f on source frame f
    else:
        sources = _ordered_sources(reference.sop_instance_uids, reference.label, headers)
        _check_lattice(mask, sources)
        pixels = stacked_segments(mask)
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(algorithm_name, algorithm_version),
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=SEG_MANUFACTURER,
        manufacturer_model_name=algorithm_name[:_LO_MAX],
        software_versions=__version__,
        device_serial_number=algorithm_tag(algorithm_name, algorithm_version),
        content_label="TUMOR",
        content_description=(
            "BraTS 2021 tumour sub-regions" + (f" without {', '.join(missing)}" if missing else "")
        )[:_LO_MAX],
        series_description=f"tumorseg SEG ({algorithm_name} {algorithm_version})"[:_LO_MAX],
        omit_empty_frames=False,
    )


def encode(segmentation: Dataset) -> bytes:
    """DICOM Part-10 bytes (preamble, file meta) of a dataset."""
    buffer = DicomBytesIO()
    segmentation.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def next_series_number(existing: Sequence[str]) -> int:
    """One above the study's highest numeric SeriesNumber, so the SEG sorts after its sources."""
    numbers = []
    for value in existing:
        try:
            numbers.append(int(float(value)))
        except ValueError:
            continue
    return max(numbers, default=0) + 1
