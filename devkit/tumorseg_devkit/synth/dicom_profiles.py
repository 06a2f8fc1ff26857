"""What each synthetic series claims to be: names and MR physics per sequence and vendor style.

Two naming styles are offered because real sites differ and the study-mapping code must cope with
both: ``siemens`` (protocol-style names such as ``t2_tirm_tra_dark-fluid``, 3 T, 3-D MPRAGE T1) and
``ge`` (``AX T2 FLAIR``, 1.5 T, 2-D spin-echo T1). Values are typical published protocol values,
not measurements; nothing reads pixel intensities from them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

from tumorseg_devkit.synth.dicom_geometry import Plane

Vendor = Literal["siemens", "ge"]
VENDORS: tuple[Vendor, ...] = get_args(Vendor)

DECOY_KINDS: tuple[str, ...] = ("localizer", "dwi", "adc")

# Series numbers follow a plausible exam order and do not depend on which series are written, so a
# series keeps its number whether or not decoys are asked for.
SERIES_NUMBERS: dict[str, int] = {"localizer": 1, "t2": 2, "flair": 3, "dwi": 4, "adc": 5, "t1": 6, "t1ce": 7}

_PLANE_WORDS: dict[Vendor, dict[Plane, str]] = {
    "siemens": {"axial": "tra", "sagittal": "sag", "coronal": "cor"},
    "ge": {"axial": "AX", "sagittal": "SAG", "coronal": "COR"},
}


@dataclass(frozen=True)
class Scanner:
    manufacturer: str
    model: str
    software: str
    field_strength: float
    imaging_frequency: float
    station: str
    coil: str


SCANNERS: dict[Vendor, Scanner] = {
    "siemens": Scanner("SIEMENS", "Skyra", "syngo MR E11", 3.0, 123.25, "MRC45123", "HeadNeck_20"),
    "ge": Scanner("GE MEDICAL SYSTEMS", "Optima MR450w", "DV26.0_R03", 1.5, 63.86, "GEMR450W", "HEAD 24"),
}


@dataclass(frozen=True)
class SequenceProfile:
    """Names and acquisition parameters of one series (times in ms, angles in degrees)."""

    key: str
    name_template: str  # ``{plane}`` is replaced by the vendor's plane word
    image_type: tuple[str, ...]
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    acquisition_type: str  # MRAcquisitionType: 2D or 3D
    repetition_time: float
    echo_time: float
    inversion_time: float | None
    flip_angle: float
    echo_train_length: int
    sequence_name: str
    contrast_agent: str | None = None
    b_values: tuple[int, ...] = ()

    def description(self, vendor: Vendor, plane: Plane, tilt_deg: float) -> str:
        word = _PLANE_WORDS[vendor][plane]
        if vendor == "ge" and tilt_deg:
            word += " OBL"  # GE operators' habit for angulated stacks
        return self.name_template.format(plane=word)


_SIEMENS_M = ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")
_GE_M = ("ORIGINAL", "PRIMARY", "OTHER")
_DIFFUSION = ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE")
_ADC = ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")
_LOCALIZER = ("ORIGINAL", "PRIMARY", "LOCALIZER")

_SP = SequenceProfile
# Positional fields: key, name, ImageType, ScanningSequence, SequenceVariant, ScanOptions,
# MRAcquisitionType, TR, TE, TI, flip angle, echo train length, SequenceName. One row per sequence
# reads better than ruff's one-argument-per-line layout.
# fmt: off
_SIEMENS_T1 = _SP("t1", "t1_mprage_{plane}", _SIEMENS_M, ("GR", "IR"), ("SK", "SP", "MP"), ("IR",), "3D",
                  2300.0, 2.98, 900.0, 9.0, 1, "*tfl3d1_16ns")
_SIEMENS_DWI = _SP("dwi", "ep2d_diff_{plane}", _DIFFUSION, ("EP",), ("SK", "SP"), ("PFP", "FS"), "2D",
                   6000.0, 89.0, None, 90.0, 1, "*ep_b1000t", b_values=(0, 1000))
_GE_T1 = _SP("t1", "{plane} T1", _GE_M, ("SE",), ("SK",), (), "2D", 500.0, 10.0, None, 90.0, 1, "se2d1")
_GE_DWI = _SP("dwi", "{plane} DWI B1000", _DIFFUSION, ("EP",), ("SK",), ("FS",), "2D",
              7000.0, 85.0, None, 90.0, 1, "epi2d", b_values=(0, 1000))

PROFILES: dict[Vendor, dict[str, SequenceProfile]] = {
    "siemens": {
        "flair": _SP("flair", "t2_tirm_{plane}_dark-fluid", _SIEMENS_M, ("SE", "IR"), ("SK", "SP", "MP", "OSP"),
                     ("IR",), "2D", 9000.0, 89.0, 2500.0, 150.0, 16, "*tir2d1_16"),
        "t1": _SIEMENS_T1,
        "t1ce": replace(_SIEMENS_T1, key="t1ce", name_template="t1_mprage_{plane}_KM", contrast_agent="Gadobutrol"),
        "t2": _SP("t2", "t2_tse_{plane}", _SIEMENS_M, ("SE",), ("SK", "SP", "OSP"), ("PFP",), "2D",
                  5000.0, 98.0, None, 150.0, 15, "*tse2d1_15"),
        "localizer": _SP("localizer", "localizer", _LOCALIZER, ("GR",), ("SP",), (), "2D",
                         8.6, 4.0, None, 20.0, 1, "*fl2d1"),
        "dwi": _SIEMENS_DWI,
        "adc": replace(_SIEMENS_DWI, key="adc", name_template="ep2d_diff_{plane}_ADC", image_type=_ADC, b_values=()),
    },
    "ge": {
        "flair": _SP("flair", "{plane} T2 FLAIR", _GE_M, ("SE", "IR"), ("SK", "MP"), ("IR",), "2D",
                     9500.0, 120.0, 2375.0, 160.0, 24, "fse-ir2d"),
        "t1": _GE_T1,
        "t1ce": replace(_GE_T1, key="t1ce", name_template="{plane} T1 POST GAD", contrast_agent="Gadobutrol"),
        "t2": _SP("t2", "{plane} T2 FSE", _GE_M, ("SE",), ("SK",), ("PFP",), "2D",
                  4500.0, 102.0, None, 90.0, 16, "fse2d1"),
        "localizer": _SP("localizer", "3-PLANE LOC", _LOCALIZER, ("GR",), ("SS",), (), "2D",
                         5.3, 1.7, None, 30.0, 1, "fgre2d"),
        "dwi": _GE_DWI,
        "adc": replace(_GE_DWI, key="adc", name_template="Apparent Diffusion Coefficient (mm2/s)",
                       image_type=_ADC, b_values=()),
    },
}
# fmt: on
