"""Follow-up phantoms: one patient scanned several times, the tumour grown or shrunk by a known factor.

Contract
- ``followup_case(seed, factor, pose_deg, shift_mm)`` -> ``PhantomCase``: the head of ``generate_case(seed)``
  (same anatomy stream, same lesion sites and shapes drawn) with every lesion's planned volumes times
  ``factor`` (whole tumour, and core and enhancing rim in the same proportions), so the enhancing volume
  changes by about ``factor`` (the truth is the ``seg`` written, whose volumes ``truth_ml`` counts). The
  mass effect follows the tumour, so the brain around it moves as it would.
- The patient lies differently in the scanner at each visit: the case's voxels are kept, and its affine
  (voxel -> RAS+ mm) is the BraTS one turned by ``pose_deg`` degrees about the patient's left-right axis
  and moved by ``shift_mm``. The DICOM conversion then writes each visit's series on exactly those voxels,
  in an oblique scanner frame of its own.
- ``write_followups(out, seed, factors, ...)`` writes visit *n* as ``<out>/<case_id>_tp<n>/`` (the BraTS
  layout, ``factors[0]`` is the baseline, usually 1.0) with ``truth.json`` (factor, pose, truth volumes)
  and, with ``patient_id``, as DICOM under ``<out>/dicom/tp<n>/``: one study per visit, a year's quarter
  apart from ``first_date``, new UIDs for each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tumorseg.labels import ED, ET, NCR
from tumorseg_devkit.synth.phantom import (
    BRATS_AFFINE,
    SHAPE,
    PhantomCase,
    build_case,
    case_id,
    plan_case,
    write_case,
)

DAYS_BETWEEN = 91  # a follow-up scan every three months
TRUTH_JSON = "truth.json"


def _posed_affine(pose_deg: float, shift_mm: Sequence[float]) -> NDArray[np.float64]:
    """BRATS_AFFINE turned by ``pose_deg`` about the RAS x axis (left-right) through the volume's centre,
    then moved by ``shift_mm`` (RAS mm)."""
    a = math.radians(pose_deg)
    turn = np.eye(4)
    turn[1:3, 1:3] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    centre = BRATS_AFFINE @ np.append((np.asarray(SHAPE) - 1) / 2.0, 1.0)
    to_centre, back = np.eye(4), np.eye(4)
    to_centre[:3, 3], back[:3, 3] = -centre[:3], centre[:3] + np.asarray(shift_mm, dtype=np.float64)
    return back @ turn @ to_centre @ BRATS_AFFINE


def followup_case(
    seed: int, factor: float, pose_deg: float = 0.0, shift_mm: Sequence[float] = (0.0, 0.0, 0.0)
) -> PhantomCase:
    """Visit of ``generate_case(seed)``'s patient with the tumour scaled by ``factor`` (see the module
    docstring). Arrays: (240, 240, 155) NIfTI voxel axes, 1 mm, as ``PhantomCase``; only ``affine`` differs."""
    if not 0.05 <= factor <= 5.0:
        raise ValueError(f"factor must be within 0.05..5, not {factor}")
    plan = plan_case(seed)
    plan = replace(plan, lesions=tuple(replace(les, wt_ml=les.wt_ml * factor) for les in plan.lesions))
    return build_case(plan, _posed_affine(pose_deg, shift_mm))


def truth_ml(seg: NDArray[np.integer]) -> dict[str, float]:
    """Volumes (mL, 1 mm voxels) of a phantom's ``seg``: ET, TC, WT, NCR, ED."""
    n = {label: int(np.count_nonzero(seg == label)) for label in (NCR, ED, ET)}
    return {
        "et": n[ET] / 1000,
        "tc": (n[NCR] + n[ET]) / 1000,
        "wt": (n[NCR] + n[ED] + n[ET]) / 1000,
        "ncr": n[NCR] / 1000,
        "ed": n[ED] / 1000,
    }


def write_followups(
    out: Path,
    seed: int,
    factors: Sequence[float] = (1.0, 1.6, 0.3),
    *,
    index: int = 0,
    patient_id: str | None = None,
    first_date: date = date(2024, 1, 10),
    pose_step_deg: float = 6.0,
) -> list[Path]:
    """Visits of one patient (see the module docstring); returns the case folders, baseline first. Visit
    n lies turned by ``n * pose_step_deg`` (alternating sign) and moved by n x (3, -4, 5) mm."""
    from tumorseg_devkit.synth.to_dicom import ConversionOptions, convert_case

    folders = []
    for n, factor in enumerate(factors):
        pose = (-1) ** n * n * pose_step_deg
        shift = (3.0 * n, -4.0 * n, 5.0 * n)
        case = followup_case(seed, factor, pose, shift)
        folder = write_case(case, Path(out), f"{case_id(index)}_tp{n}")
        visit = first_date + timedelta(days=DAYS_BETWEEN * n)
        truth = {
            "seed": seed,
            "factor": factor,
            "pose_deg": pose,
            "shift_mm": list(shift),
            "study_date": visit.isoformat(),
            "volumes_ml": truth_ml(case.seg),
        }
        (folder / TRUTH_JSON).write_text(json.dumps(truth, indent=2) + "\n")
        if patient_id is not None:
            convert_case(
                folder, patient_id, Path(out) / "dicom" / f"tp{n}", ConversionOptions(study_date=visit)
            )
        folders.append(folder)
    return folders
