"""Options of the BraTS → DICOM conversion, and their command-line spelling.

Per-series options are written ``VALUE`` (all four MR series) or ``MOD:VALUE`` with MOD one of
flair, t1, t1ce, t2 (``all:VALUE`` is also accepted); repeated options apply left to right, so a
later, more specific one wins. ``--reverse-slices`` takes the modalities it applies to
(``t1ce``, ``t1,t2`` or ``all``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date
from typing import Any

from tumorseg.errors import InvalidInput
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.dicom_geometry import PLANES, SeriesGeometry
from tumorseg_devkit.synth.dicom_profiles import DECOY_KINDS, VENDORS, Vendor
from tumorseg_devkit.synth.dicom_series import TRANSFER_SYNTAXES, TransferSyntax

PATIENT_SEXES = ("M", "F", "O")
# The clinical acquisition the tests, `make accuracy-clinical` and `make demo` convert to: an oblique 2D
# FLAIR (0.9×0.9×4 mm, 15° tilt), a sagittal 3D T1, a T1ce stored in reversed slice order and a coronal
# T2 (0.8×0.8×3 mm).
CLINICAL_GEOMETRY: Mapping[str, SeriesGeometry] = {
    "flair": SeriesGeometry(plane="axial", tilt_deg=15.0, spacing=(0.9, 0.9, 4.0)),
    "t1": SeriesGeometry(plane="sagittal"),
    "t1ce": SeriesGeometry(reverse_slices=True),
    "t2": SeriesGeometry(plane="coronal", spacing=(0.8, 0.8, 3.0)),
}
_CONTROL = re.compile(r"[\x00-\x1f\\]")


@dataclass(frozen=True)
class ConversionOptions:
    """Everything that shapes the written study, besides the case and the PatientID.

    ``geometry`` and ``descriptions`` are keyed by modality (flair, t1, t1ce, t2; descriptions also
    by decoy kind: localizer, dwi, adc); a missing key means the default (``SeriesGeometry()``:
    axial, source lattice kept exactly; the vendor-style description for the plane).
    ``prior_study`` adds an older study (``study_date`` one year earlier) with its own four series.
    """

    geometry: Mapping[str, SeriesGeometry] = field(default_factory=dict)
    descriptions: Mapping[str, str] = field(default_factory=dict)
    decoys: bool = False
    prior_study: bool = False
    patient_name: str = "PHANTOM^DEMO"
    birth_date: date = date(1968, 5, 17)
    patient_sex: str = "O"
    study_date: date = date(2024, 3, 12)
    transfer_syntax: TransferSyntax = "explicit"
    vendor: Vendor = "siemens"

    def __post_init__(self) -> None:
        unknown = set(self.geometry) - set(SEQUENCES)
        if unknown:
            raise InvalidInput(f"geometry for unknown series {sorted(unknown)}; use {', '.join(SEQUENCES)}")
        unknown = set(self.descriptions) - set(SEQUENCES) - set(DECOY_KINDS)
        if unknown:
            raise InvalidInput(f"description for unknown series {sorted(unknown)}")
        for key, text in self.descriptions.items():
            if not text.strip() or len(text) > 64 or _CONTROL.search(text):
                raise InvalidInput(
                    f"description of {key} must be 1-64 characters without backslash: {text!r}"
                )
        if not self.patient_name.strip() or len(self.patient_name) > 64 or _CONTROL.search(self.patient_name):
            raise InvalidInput("patient name must be 1-64 characters without backslash (e.g. FAMILY^GIVEN)")
        if self.patient_sex not in PATIENT_SEXES:
            raise InvalidInput(f"patient sex must be one of {', '.join(PATIENT_SEXES)}")
        if self.birth_date > self.study_date:
            raise InvalidInput("birth date is after the study date")
        if self.transfer_syntax not in TRANSFER_SYNTAXES:
            raise InvalidInput(f"transfer syntax must be one of {', '.join(TRANSFER_SYNTAXES)}")
        if self.vendor not in VENDORS:
            raise InvalidInput(f"vendor must be one of {', '.join(VENDORS)}")

    def geometry_for(self, key: str) -> SeriesGeometry:
        return self.geometry.get(key, SeriesGeometry())

    def to_json(self) -> dict[str, Any]:
        """A JSON-able, canonical form (manifest, and the entropy of every UID)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "geometry":
                value = {key: asdict(self.geometry_for(key)) for key in SEQUENCES}
            elif isinstance(value, date):
                value = value.isoformat()
            elif isinstance(value, Mapping):
                value = dict(sorted(value.items()))
            out[f.name] = value
        return json.loads(json.dumps(out))


def split_modalities(raw: str) -> tuple[tuple[str, ...], str]:
    """``"t1:5"`` → ((t1,), "5"); ``"5"`` or ``"all:5"`` → (all four, "5")."""
    head, sep, tail = raw.partition(":")
    key = head.strip().lower()
    if sep and key in SEQUENCES:
        return (key,), tail.strip()
    if sep and key == "all":
        return SEQUENCES, tail.strip()
    return SEQUENCES, raw.strip()


def parse_date(text: str, what: str) -> date:
    """``YYYYMMDD`` (DICOM) or ``YYYY-MM-DD``."""
    digits = text.strip().replace("-", "")
    try:
        if len(digits) != 8:
            raise ValueError(text)
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError as exc:
        raise InvalidInput(f"{what} must be a date YYYYMMDD or YYYY-MM-DD, not {text!r}") from exc


def parse_geometry(
    planes: Sequence[str] = (),
    tilts: Sequence[str] = (),
    spacings: Sequence[str] = (),
    reverse_slices: Sequence[str] = (),
) -> dict[str, SeriesGeometry]:
    """Per-modality geometry from the repeatable CLI options (see module doc)."""
    settings: dict[str, dict[str, Any]] = {key: {} for key in SEQUENCES}
    for raw in planes:
        keys, value = split_modalities(raw)
        if value.lower() not in PLANES:
            raise InvalidInput(f"--plane {raw!r}: expected axial, sagittal or coronal (optionally MOD:PLANE)")
        for key in keys:
            settings[key]["plane"] = value.lower()
    for raw in tilts:
        keys, value = split_modalities(raw)
        try:
            tilt = float(value)
        except ValueError as exc:
            raise InvalidInput(f"--tilt {raw!r}: expected degrees, e.g. 15 or t1:-10") from exc
        for key in keys:
            settings[key]["tilt_deg"] = tilt
    for raw in spacings:
        keys, value = split_modalities(raw)
        try:
            spacing = tuple(float(v) for v in value.split(","))
        except ValueError as exc:
            raise InvalidInput(f"--spacing {raw!r}: expected X,Y,Z in mm, e.g. 0.9,0.9,5") from exc
        if len(spacing) != 3:
            raise InvalidInput(f"--spacing {raw!r}: expected three values X,Y,Z in mm")
        for key in keys:
            settings[key]["spacing"] = spacing
    for raw in reverse_slices:
        for part in raw.split(","):
            key = part.strip().lower()
            if key not in (*SEQUENCES, "all"):
                raise InvalidInput(f"--reverse-slices {raw!r}: expected all or {', '.join(SEQUENCES)}")
            for target in SEQUENCES if key == "all" else (key,):
                settings[target]["reverse_slices"] = True
    return {key: replace(SeriesGeometry(), **values) for key, values in settings.items() if values}


def parse_descriptions(values: Sequence[str]) -> dict[str, str]:
    """``MOD:TEXT`` pairs (MOD: a modality or a decoy kind)."""
    out: dict[str, str] = {}
    for raw in values:
        head, sep, text = raw.partition(":")
        key = head.strip().lower()
        if not sep or key not in (*SEQUENCES, *DECOY_KINDS):
            raise InvalidInput(f"--description {raw!r}: expected MOD:TEXT, e.g. 't2:AX T2 FSE'")
        out[key] = text.strip()
    return out
