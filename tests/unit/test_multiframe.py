"""Multi-frame MR (Legacy Converted Enhanced MR, frames in order or shuffled) loads into the same volume
as the classic series it came from, voxel for voxel and lattice for lattice; the mapping reads the
physics and geometry from the functional groups; broken multi-frame objects are refused by name."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence as DicomSequence

from tests.dicom_factory import volume_series
from tests.multiframe import enhanced_mr, legacy_converted, shorten_decimals, to_bytes
from tumorseg import functional_groups as fg
from tumorseg.errors import BrokenSeries
from tumorseg.export.dicom_seg import build_segmentation, read_headers
from tumorseg.imaging.volume import load_series
from tumorseg.pacs.client import series_from_orthanc


def _oblique_series() -> list[bytes]:
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    return volume_series(
        lambda p: 100 + p[:, 0] - 2 * p[:, 1] + 3 * p[:, 2],
        rows=12,
        columns=10,
        slices=9,
        origin=(-20.0, 15.0, 30.0),
        row_dir=(c, s, 0.0),
        col_dir=(0.0, 0.0, -1.0),
        pixel_spacing=(0.8, 0.9),
        slice_spacing=3.0,
        rescale=(0.5, -10.0),
    )


def _same_volume(a: sitk.Image, b: sitk.Image) -> None:
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-9)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-9)


@pytest.mark.parametrize(
    ("convert", "shuffle_seed", "sop_class"),
    [
        (legacy_converted, None, fg.LEGACY_CONVERTED_ENHANCED_MR),
        (legacy_converted, 7, fg.LEGACY_CONVERTED_ENHANCED_MR),
        (enhanced_mr, 7, fg.ENHANCED_MR),
    ],
)
def test_a_multi_frame_series_loads_as_its_classic_series(
    convert: Callable[..., Dataset], shuffle_seed: int | None, sop_class: str
) -> None:
    files = _oblique_series()
    classic = load_series(list(reversed(files)), "flair")
    converted = convert(files, shuffle_seed=shuffle_seed)
    multi = load_series([to_bytes(converted)], "flair")
    _same_volume(classic.image, multi.image)
    assert multi.sop_instance_uids == (str(converted.SOPInstanceUID),) * 9
    assert multi.sop_class_uid == sop_class
    # Slice k is the frame whose position is k-th along the normal, whatever the file's frame order.
    positions = [
        [float(v) for v in fg.find(converted, "ImagePositionPatient", n - 1)] for n in multi.frame_numbers
    ]
    normal = np.asarray(multi.image.GetDirection()).reshape(3, 3)[:, 2]
    assert np.all(np.diff(np.asarray(positions) @ normal) > 0)
    assert sorted(multi.frame_numbers) == list(range(1, 10))
    if shuffle_seed is not None:
        assert list(multi.frame_numbers) != sorted(multi.frame_numbers)


def test_a_series_mixing_classic_and_multi_frame_instances_loads() -> None:
    files = _oblique_series()
    classic = load_series(files, "t2")
    mixed = load_series([to_bytes(legacy_converted(files[:5])), *files[5:]], "t2")
    _same_volume(classic.image, mixed.image)
    assert sorted(mixed.frame_numbers[:5]) == [1, 2, 3, 4, 5] and set(mixed.frame_numbers[5:]) == {-1}


def _per_frame(converted: Dataset, macro: str, keyword: str, value: Callable[[int], object]) -> None:
    """Move the shared ``macro`` into every frame's groups, with ``keyword`` set to ``value(frame)``."""
    shared = converted.SharedFunctionalGroupsSequence[0]
    template = getattr(shared, macro)[0]
    delattr(shared, macro)
    for n, group in enumerate(converted.PerFrameFunctionalGroupsSequence):
        item = copy.deepcopy(template)
        setattr(item, keyword, value(n))
        setattr(group, macro, DicomSequence([item]))


def test_per_frame_rescale_is_applied_per_frame() -> None:
    converted = legacy_converted(_oblique_series())
    _per_frame(converted, "PixelValueTransformationSequence", "RescaleSlope", lambda n: 0.5 if n % 2 else 1.0)
    volume = load_series([to_bytes(converted)], "t1")
    stored = converted.pixel_array.astype(np.float32)
    array = sitk.GetArrayFromImage(volume.image)
    for k, number in enumerate(volume.frame_numbers):
        slope = 0.5 if (number - 1) % 2 else 1.0
        assert np.array_equal(array[k], stored[number - 1] * np.float32(slope) + np.float32(-10.0))


def test_frames_of_two_stacks_are_refused() -> None:
    converted = legacy_converted(_oblique_series())
    tilted = converted.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    axial = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    _per_frame(
        converted,
        "PlaneOrientationSequence",
        "ImageOrientationPatient",
        lambda n: axial if n >= 5 else tilted,
    )
    with pytest.raises(BrokenSeries, match="several stacks"):
        load_series([to_bytes(converted)], "flair")


def test_a_frame_without_a_position_is_refused_by_name() -> None:
    converted = legacy_converted(_oblique_series())
    del converted.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence
    with pytest.raises(BrokenSeries, match="ImagePositionPatient"):
        load_series([to_bytes(converted)], "flair")


def test_the_mapping_reads_the_physics_from_the_functional_groups() -> None:
    """Orthanc's simplified tags of a multi-frame instance: what the classic tags say is in the groups."""
    converted = legacy_converted(_oblique_series())
    tags = _simplified(converted)
    series = series_from_orthanc({"ID": "s", "MainDicomTags": {}, "Instances": ["i"]}, tags)
    assert (series.repetition_time, series.echo_time, series.inversion_time) == (9000.0, 100.0, 2500.0)
    assert series.pixel_spacing == (0.8, 0.9) and series.slice_thickness == 3.0
    assert series.image_orientation_patient is not None
    assert series.slice_count == 9 and series.instance_count == 1
    # Enhanced MR: the MR macros only, none of the classic physics attributes at the top level.
    source = _oblique_series()
    classic_tags = _simplified(pydicom.dcmread(DicomBytesIO(source[0])))
    classic = series_from_orthanc({"ID": "c", "MainDicomTags": {}, "Instances": ["i"] * 9}, classic_tags)
    enhanced_tags = _simplified(enhanced_mr(source))
    assert "RepetitionTime" not in enhanced_tags and "EchoTime" not in enhanced_tags
    built = series_from_orthanc({"ID": "c", "MainDicomTags": {}, "Instances": ["i"]}, enhanced_tags)
    same = ("repetition_time", "echo_time", "inversion_time", "pixel_spacing", "image_orientation_patient")
    assert [getattr(built, k) for k in same] == [getattr(classic, k) for k in same]
    assert built.slice_count == classic.slice_count == 9
    # A hand-written Enhanced MR listing: the contrast usage macro.
    enhanced = {
        "SOPClassUID": fg.ENHANCED_MR,
        "NumberOfFrames": "3",
        "ImageType": "ORIGINAL\\PRIMARY\\T1\\NONE",
        "SharedFunctionalGroupsSequence": [
            {
                "MRTimingAndRelatedParametersSequence": [{"RepetitionTime": "2300"}],
                "MREchoSequence": [{"EffectiveEchoTime": "2.98"}],
                "MRModifierSequence": [{"InversionTimes": "900"}],
                "ContrastBolusUsageSequence": [{"ContrastBolusAgentAdministered": "YES"}],
            }
        ],
        "PerFrameFunctionalGroupsSequence": [{}, {}, {}],
    }
    series = series_from_orthanc({"ID": "e", "MainDicomTags": {}, "Instances": ["i"]}, enhanced)
    assert (series.repetition_time, series.echo_time, series.inversion_time) == (2300.0, 2.98, 900.0)
    assert series.contrast_bolus_agent == "YES" and series.slice_count == 3


def _simplified(ds: object) -> dict[str, object]:
    """A pydicom dataset as Orthanc's simplified-tags JSON: keyword → string, sequences → lists."""
    out: dict[str, object] = {}
    for element in ds:  # type: ignore[attr-defined]
        if not element.keyword or element.keyword == "PixelData":
            continue
        if element.VR == "SQ":
            out[element.keyword] = [_simplified(item) for item in element.value]
        elif element.VM > 1:
            out[element.keyword] = "\\".join(str(v) for v in element.value)
        else:
            out[element.keyword] = "" if element.value is None else str(element.value)
    return out


def test_a_seg_of_a_multi_frame_reference_references_each_frame_where_it_lies(tmp_path: Path) -> None:
    """SEG frame f lies on source frame f (shuffled in the file) and holds the mask's labels there."""
    files = _oblique_series()
    converted = shorten_decimals(legacy_converted(files, shuffle_seed=3))
    source_bytes = to_bytes(converted)
    volume = load_series([source_bytes], "flair")
    labels = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, dtype=np.uint8)
    labels[2:7, 3:9, 2:8] = 2
    labels[3:6, 4:8, 3:7] = 1
    labels[4, 5:7, 4:6] = 4
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(volume.image)
    seg = build_segmentation(
        mask,
        volume,
        read_headers([source_bytes]),
        algorithm_name="test-model",
        algorithm_version="1.0",
        series_number=99,
    )
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    matrix = np.asarray(mask.GetDirection()).reshape(3, 3) * np.asarray(mask.GetSpacing())
    segment_of = {1: 1, 2: 2, 4: 3}
    checked = 0
    for n, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert str(reference.ReferencedSOPInstanceUID) == str(converted.SOPInstanceUID)
        frame = int(reference.ReferencedFrameNumber) - 1
        position = np.asarray([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        source_position = [float(v) for v in fg.find(converted, "ImagePositionPatient", frame)]
        assert np.allclose(position, source_position, atol=0.01)
        k = int(np.rint(np.linalg.solve(matrix, position - np.asarray(mask.GetOrigin())))[2])
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        label = next(lab for lab, s in segment_of.items() if s == segment)
        frame_pixels = seg.pixel_array[n] if seg.pixel_array.ndim == 3 else seg.pixel_array
        assert np.array_equal(frame_pixels.astype(bool), labels[k] == label), (frame, label)
        checked += 1
    assert checked == 3 * 9  # every source frame, every segment (empty frames kept)
