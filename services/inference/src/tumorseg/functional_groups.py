"""Where an attribute lives in an enhanced (multi-frame) DICOM object, for the loader and the mapping.

Enhanced MR Image Storage and Legacy Converted Enhanced MR Image Storage keep one instance per series with
every slice a frame. What a classic instance has at the top level they keep in functional groups: the
shared ones (``SharedFunctionalGroupsSequence``, one item for every frame) and each frame's own
(``PerFrameFunctionalGroupsSequence``, item *f* for frame *f*), each a set of macros (a sequence with one
item: ``PlanePositionSequence`` holds ``ImagePositionPatient``, ``MREchoSequence`` holds
``EffectiveEchoTime``, ``UnassignedSharedConvertedAttributesSequence`` what a legacy converter kept). A
frame's own value wins over the shared one, and the top level over both.

The lookups work on pydicom ``Dataset``s and on Orthanc's simplified-tags JSON alike: both map a keyword to
a value and a sequence to a list of items.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

PER_FRAME = "PerFrameFunctionalGroupsSequence"
SHARED = "SharedFunctionalGroupsSequence"
# SOP classes whose instances are multi-frame MR volumes this service reads.
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_CONVERTED_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
# The classic attribute and where the enhanced objects keep it under another name.
ALIASES = {
    "EchoTime": ("EffectiveEchoTime",),
    "InversionTime": ("InversionTimes",),
    "ImageType": ("FrameType",),
}


def _get(item: Any, keyword: str) -> Any:
    """``item.get(keyword)``, or None where a damaged element cannot be read (pydicom raises many types
    for a hostile value, e.g. NumberOfFrames "Infinity"): the loader then refuses the series by name."""
    try:
        return item.get(keyword)
    except Exception:
        return None


def _items(value: Any) -> list[Any]:
    """The items of a sequence value (a pydicom ``Sequence`` or a JSON list of objects); [] otherwise."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Sequence":
        items = list(value)
        if items and all(hasattr(item, "get") and not isinstance(item, str) for item in items):
            return items
    return []


def _present(value: Any) -> bool:
    return value is not None and value != "" and not (hasattr(value, "__len__") and len(value) == 0)


def _macros(group: Any) -> Iterator[Any]:
    """The first item of every sequence in a functional-group item (its macros)."""
    if group is None:
        return
    try:
        if isinstance(group, dict):
            values = list(group.values())
        else:  # a pydicom Dataset: its elements
            values = [element.value for element in group if getattr(element, "VR", None) == "SQ"]
    except Exception:  # a damaged element in the group: nothing to read from it
        return
    for value in values:
        items = _items(value)
        if items:
            yield items[0]


def is_multi_frame(ds: Any) -> bool:
    """Whether ``ds`` keeps its frames' geometry in functional groups (an enhanced object)."""
    return bool(_items(_get(ds, PER_FRAME))) or bool(_items(_get(ds, SHARED)))


def frame_count(ds: Any) -> int:
    """``NumberOfFrames`` (1 when absent or not a positive integer)."""
    try:
        value = int(str(_get(ds, "NumberOfFrames") or 1).strip())
    except (ValueError, OverflowError):
        return 1
    return max(value, 1)


def per_frame_groups(ds: Any) -> list[Any]:
    return _items(_get(ds, PER_FRAME))


def find(ds: Any, keyword: str, frame: int = 0, *, top_level: bool = True) -> Any:
    """The value of ``keyword`` (or of its enhanced alias) for frame ``frame`` (0-based): at the top level
    (when ``top_level``), else in that frame's functional groups, else in the shared ones; None if nowhere."""
    names = (keyword, *ALIASES.get(keyword, ()))
    if top_level:
        for name in names:
            value = _get(ds, name)
            if _present(value):
                return value
    frames = _items(_get(ds, PER_FRAME))
    shared = _items(_get(ds, SHARED))
    groups = [frames[frame] if 0 <= frame < len(frames) else None, shared[0] if shared else None]
    for group in groups:
        for macro in _macros(group):
            for name in names:
                value = _get(macro, name)
                if _present(value):
                    return value
    return None


def contrast_agent(ds: Any) -> str:
    """The contrast agent an enhanced object names: ``ContrastBolusAgent``, the code meaning of its
    ``ContrastBolusAgentSequence``, or "YES" when a frame's ``ContrastBolusUsageSequence`` says one was
    administered; "" when none."""
    agent = find(ds, "ContrastBolusAgent")
    if _present(agent):
        return str(agent)
    for item in _items(_get(ds, "ContrastBolusAgentSequence")):
        meaning = _get(item, "CodeMeaning")
        if _present(meaning):
            return str(meaning)
    administered = find(ds, "ContrastBolusAgentAdministered", top_level=False)
    return "YES" if str(administered or "").strip().upper() == "YES" else ""


def acquisition_datetime(ds: Any) -> str:
    """When the series was acquired, as a DICOM DT string: ``AcquisitionDateTime``, else the earliest
    ``FrameAcquisitionDateTime`` of its frames (an enhanced object's Frame Content macro), else
    ``AcquisitionDate`` with ``AcquisitionTime``; "" when none is known. Study mapping orders a pre- and
    a post-contrast series that nothing else tells apart by it."""
    value = _get(ds, "AcquisitionDateTime")
    if _present(value):
        return str(value).strip()
    frames = [
        str(stamp).strip()
        for group in per_frame_groups(ds)
        for macro in _macros(group)
        if _present(stamp := _get(macro, "FrameAcquisitionDateTime"))
    ]
    if frames:
        return min(frames)
    date, time = _get(ds, "AcquisitionDate"), _get(ds, "AcquisitionTime")
    if _present(date) and _present(time):
        return f"{str(date).strip()}{str(time).strip()}"
    return ""
