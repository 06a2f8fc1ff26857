"""`make accuracy-clinical`: segmentation accuracy on clinical-head phantoms through POST /segment
(the acceptance measurement of issue 15; a measurement, not a test: it asserts nothing).

Target: on seeds no stage was tuned on, mean Dice WT >= 0.90, TC >= 0.80, ET >= 0.75, and under 1 % of
the mask's voxels outside the true brain, with FLAIR and with T1ce as the reference series.

For each seed of ACC_SEEDS (comma list, default 50-57):
- the clinical-head phantom (`generate_head_case`: brain and tumour inside skull, scalp, eyes and neck,
  each series moved rigidly, bias and Rician noise) is converted to DICOM with clinical geometry (oblique
  2D FLAIR 0.9x0.9x4 mm, sagittal 3D T1, reversed-slice T1ce, coronal T2 0.8x0.8x3 mm), uploaded to a
  local Orthanc, and segmented by the service (the FastAPI app in-process, shipped model) with
  ?reference=flair and ?reference=t1ce;
- each mask is scored against the phantom's truth in that reference series' own frame
  (`truth/seg_{ref}.nii.gz` resampled label-aware onto the mask's lattice; `truth/brain_{ref}.nii.gz`
  nearest neighbour): Dice WT (labels > 0), TC (1, 4), ET (4), BraTS convention (1 when truth and
  prediction are both empty, 0 when only one is), and the fraction of mask voxels outside the brain;
- the BraTS twin (`generate_case(seed)`: the same brain and tumour, skull-stripped, no motion, bias or
  head) goes the same way with reference FLAIR and is scored against its `<id>_seg.nii.gz` (brain: its
  non-zero FLAIR voxels), so the table separates what the network reaches on that brain from what the
  clinical complications (registration, brain extraction, head) cost.

With ACC_WITHOUT (comma list of sequences, e.g. `flair,t1,t2`; default none) each head is also uploaded
once per listed sequence as a study without that series, and segmented with ?reference=t1ce (issue 19: a
model package trained to do without it); the table gains those columns and a summary compares each with
the full study's T1ce scores. ACC_MODEL points at another model package (default: the shipped one);
ACC_RECORD=1 writes that summary into its manifest (``metrics.clinical_heads``) for its model card.
ACC_REFERENCES (default `flair,t1ce`) and ACC_TWIN=0 (no twins) shorten a run that only compares inputs.

ACC_MOTION (default `5,5`, the generator's default) is how far each series' patient moves from rest, `DEG,MM`
(`tumorseg phantom --motion`); several ranges separated by `;` (`5,5;7.5,15`) measure every seed at each,
and the summary gives the paired per-seed Dice difference of each range against the first (issue 45).
Each request's registration error is computed from its result alone: the RMS distance, over the reference
series' true brain, between where each series' 4 x 4 matrix (`registration.series[m].matrix`) and the
phantom's motion put each point (a series whose registration failed, and so was not used, is counted apart).

The result JSON's registration (per series rotation, translation, applied), brain extraction volume,
warnings and stage timings are recorded with the scores. Prints a markdown table (means over all seeds,
and over the seeds whose profile is not no_et, where ET is absent and scores only 0 or 1) and writes
everything to out/accuracy/clinical.json (the masks to out/accuracy/masks/).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from tumorseg.api.main import create_app
from tumorseg.config import DEFAULT_MODEL_PATH, Settings
from tumorseg.imaging.grid import resample_labels
from tumorseg.model.package import MANIFEST, record_metrics
from tumorseg.pacs import OrthancClient
from tumorseg.pacs.upload import upload_directory
from tumorseg_devkit.local import LocalOrthanc
from tumorseg_devkit.synth.dicom_options import CLINICAL_GEOMETRY, ConversionOptions
from tumorseg_devkit.synth.phantom import generate_case, plan_case, write_case
from tumorseg_devkit.synth.phantom_head import MotionRange, generate_head_case, write_head_case
from tumorseg_devkit.synth.to_dicom import convert_case

SEEDS = [int(s) for s in os.environ.get("ACC_SEEDS", "50,51,52,53,54,55,56,57").split(",") if s.strip()]
WITHOUT = [m.strip() for m in os.environ.get("ACC_WITHOUT", "").split(",") if m.strip()]
MODEL = Path(os.environ.get("ACC_MODEL", str(DEFAULT_MODEL_PATH)))
RESULTS = Path(os.environ.get("ACC_RESULTS", "out/accuracy/clinical.json"))
RECORD = os.environ.get("ACC_RECORD", "") not in ("", "0")  # missing-sequence means into ACC_MODEL's manifest
MASKS = RESULTS.parent / "masks"  # every returned mask, kept for a look at the bad cases
# ACC_REFERENCES=t1ce ACC_TWIN=0: only what the missing-sequence comparison needs (half the time)
REFERENCES = tuple(m.strip() for m in os.environ.get("ACC_REFERENCES", "flair,t1ce").split(",") if m.strip())
TWIN = os.environ.get("ACC_TWIN", "1") not in ("", "0")
MOTIONS = [m.strip() for m in os.environ.get("ACC_MOTION", "5,5").split(";") if m.strip()]
REGIONS = ("wt", "tc", "et")
TARGET = {"wt": 0.90, "tc": 0.80, "et": 0.75}
MAX_OUTSIDE = 0.01  # fraction of mask voxels outside the true brain
CLINICAL = ConversionOptions(geometry=CLINICAL_GEOMETRY)
Mask = NDArray[np.bool_]


def say(message: str) -> None:
    print(f"[accuracy] {message}", flush=True)


def dice(predicted: Mask, expected: Mask) -> float:
    """Dice with the BraTS convention: 1 when both are empty (0 when only one is)."""
    total = int(np.count_nonzero(predicted)) + int(np.count_nonzero(expected))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(predicted & expected)) / total


def on_lattice(image: sitk.Image, mask: sitk.Image) -> NDArray[Any]:
    """``image`` (0/1) resampled onto ``mask``'s lattice, nearest neighbour, as an array."""
    return sitk.GetArrayFromImage(sitk.Resample(image, mask, sitk.Transform(), sitk.sitkNearestNeighbor))


def score(mask: sitk.Image, truth: sitk.Image, brain: Mask) -> dict[str, float]:
    """Dice WT/TC/ET of ``mask`` against ``truth`` (resampled onto the mask) and the fraction of mask
    voxels outside ``brain`` (already on the mask's lattice)."""
    predicted = sitk.GetArrayFromImage(mask)
    expected = sitk.GetArrayFromImage(resample_labels(truth, mask))
    regions: dict[str, Callable[[NDArray[Any]], Mask]] = {
        "wt": lambda a: a > 0,
        "tc": lambda a: np.isin(a, (1, 4)),
        "et": lambda a: a == 4,
    }
    scores = {r: round(dice(f(predicted), f(expected)), 4) for r, f in regions.items()}
    n_mask = int(np.count_nonzero(predicted))
    outside = int(np.count_nonzero((predicted > 0) & ~brain))
    scores["outside"] = round(outside / n_mask, 5) if n_mask else 0.0
    return scores


def wt_ml(labels: sitk.Image) -> float:
    return (
        float(np.count_nonzero(sitk.GetArrayFromImage(labels))) * float(np.prod(labels.GetSpacing())) / 1000
    )


class Refused(Exception):
    """The service refused the study (422 modality_missing): no mask, scored as Dice 0."""


class Segmenter:
    """The service in-process against one Orthanc: upload a converted case, POST /segment, fetch the mask."""

    def __init__(self, orthanc: LocalOrthanc, client: TestClient, work: Path) -> None:
        self.orthanc, self.client, self.work = orthanc, client, work

    def upload(self, case_dir: Path, patient_id: str, without: str | None = None) -> None:
        converted = convert_case(case_dir, patient_id, self.work / "dicom" / patient_id, CLINICAL)
        if without is not None:  # the study as a protocol without that sequence would have it
            shutil.rmtree(converted.get(without).folder)
        with OrthancClient(self.orthanc.url, self.orthanc.auth) as pacs:
            report = upload_directory(pacs, converted.out, workers=2, stable_timeout=120.0)
        if report.failed:
            sys.exit(f"{patient_id}: {len(report.failed)} instances failed to upload: {report.failed[:3]}")

    def segment(self, patient_id: str, reference: str) -> tuple[dict[str, Any], sitk.Image, float]:
        """The result JSON, the mask and the client-side seconds of one request."""
        started = time.perf_counter()
        response = self.client.post(f"/segment/{patient_id}", params={"reference": reference})
        elapsed = time.perf_counter() - started
        if response.status_code == 422 and response.json().get("code") == "modality_missing":
            raise Refused(response.json()["detail"])  # e.g. a required series whose registration failed
        if response.status_code != 200:
            sys.exit(
                f"POST /segment/{patient_id}?reference={reference}: HTTP {response.status_code} {response.text}"
            )
        result = response.json()
        path = MASKS / f"{patient_id}_{reference}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.client.get(result["mask_url"]).content)
        return result, sitk.ReadImage(str(path)), elapsed


def service_record(result: dict[str, Any], e2e: float) -> dict[str, Any]:
    """What the result JSON says about the pipeline: registration, brain extraction, warnings, timings."""
    timings = result["timings_s"]
    return {
        "registration": {
            m: {k: entry.get(k) for k in ("rotation_deg", "translation_mm", "applied", "failed", "overlap")}
            for m, entry in result["registration"]["series"].items()
        },
        "brain_extraction": {k: result["brain_extraction"].get(k) for k in ("method", "series", "volume_ml")},
        "missing_sequences": result["missing_sequences"],
        "warnings": result["warnings"],
        "volumes_ml": result["volumes_ml"],
        "timings_s": {k: timings[k] for k in ("registration", "brain_extraction", "inference", "total")},
        "e2e_s": round(e2e, 2),
    }


def registration_errors(result: dict[str, Any], truth_dir: Path, reference: str) -> dict[str, float | None]:
    """Per series: the RMS distance (mm) over the reference's true brain between the result's matrix and
    the phantom's motion (None: the registration failed and the series was not used)."""
    motion = json.loads((truth_dir / "motion.json").read_text())
    brain = sitk.ReadImage(str(truth_dir / f"brain_{reference}.nii.gz"))
    index = np.argwhere(sitk.GetArrayFromImage(brain).transpose(2, 1, 0) > 0)[::97]
    points = np.asarray([brain.TransformIndexToPhysicalPoint([int(v) for v in i]) for i in index])
    homogeneous = np.c_[points, np.ones(len(points))]
    errors: dict[str, float | None] = {}
    for m, entry in result["registration"]["series"].items():
        if entry.get("failed"):
            errors[m] = None
            continue
        truth = np.asarray(motion[m]) @ np.linalg.inv(np.asarray(motion[reference]))
        found = np.asarray(entry["matrix"])
        distance = (homogeneous @ (found - truth).T)[:, :3]
        errors[m] = round(float(np.sqrt((distance**2).sum(axis=1).mean())), 4)
    return errors


def measure_seed(seed: int, segmenter: Segmenter, work: Path, motion: str = MOTIONS[0]) -> dict[str, Any]:
    limits = MotionRange.parse(motion)
    tag = "" if motion == "5,5" else "_M" + motion.replace(",", "_").replace(".", "p").replace("-", "to")
    head_id, twin_id = f"HEAD_{seed:05d}{tag}", f"BraTS2021_{seed:05d}"
    head = generate_head_case(
        seed,
        max_rotation_deg=limits.max_rotation_deg,
        max_translation_mm=limits.max_translation_mm,
        min_rotation_deg=limits.min_rotation_deg,
        min_translation_mm=limits.min_translation_mm,
    )
    head_dir = write_head_case(head, work / "phantoms", head_id)
    segmenter.upload(head_dir, head_id)
    truth_dir = head_dir / "truth"
    row: dict[str, Any] = {
        "seed": seed,
        "motion": motion,
        "profile": plan_case(seed).profile,
        "truth_wt_ml": round(wt_ml(sitk.ReadImage(str(truth_dir / "seg_flair.nii.gz"))), 1),
    }
    for reference in REFERENCES:
        try:
            result, mask, e2e = segmenter.segment(head_id, reference)
        except Refused as exc:
            row[reference] = {**dict.fromkeys((*REGIONS, "outside"), 0.0), "refused": str(exc)}
            row[reference]["registration_error_mm"] = {}
            say(f"seed {seed}, motion {motion}, reference {reference}: REFUSED (Dice 0): {exc}")
            continue
        brain = on_lattice(sitk.ReadImage(str(truth_dir / f"brain_{reference}.nii.gz")), mask) > 0
        truth = sitk.ReadImage(str(truth_dir / f"seg_{reference}.nii.gz"))
        row[reference] = {**score(mask, truth, brain), **service_record(result, e2e)}
        row[reference]["registration_error_mm"] = registration_errors(result, truth_dir, reference)
        brain_ml = row[reference]["brain_extraction"]["volume_ml"]
        say(
            f"seed {seed}, motion {motion}, reference {reference}: {scores_text(row[reference])}, "
            f"extracted brain {brain_ml} mL, registration error (mm) {row[reference]['registration_error_mm']}"
        )
    for absent in WITHOUT if motion == MOTIONS[0] else []:
        patient_id = f"{head_id}_NO_{absent.upper()}"
        segmenter.upload(head_dir, patient_id, without=absent)
        result, mask, e2e = segmenter.segment(patient_id, "t1ce")
        brain = on_lattice(sitk.ReadImage(str(truth_dir / "brain_t1ce.nii.gz")), mask) > 0
        truth = sitk.ReadImage(str(truth_dir / "seg_t1ce.nii.gz"))
        row[f"without_{absent}"] = {**score(mask, truth, brain), **service_record(result, e2e)}
        row[f"without_{absent}"]["missing_sequences"] = result["missing_sequences"]
        say(f"seed {seed}, without {absent} (t1ce): {scores_text(row[f'without_{absent}'])}")
    if not TWIN or motion != MOTIONS[0]:
        return row
    twin_dir = write_case(generate_case(seed), work / "phantoms", twin_id)
    segmenter.upload(twin_dir, twin_id)
    result, mask, e2e = segmenter.segment(twin_id, "flair")
    brain = on_lattice(sitk.ReadImage(str(twin_dir / f"{twin_id}_flair.nii.gz")) > 0, mask) > 0
    truth = sitk.ReadImage(str(twin_dir / f"{twin_id}_seg.nii.gz"))
    row["twin"] = {**score(mask, truth, brain), **service_record(result, e2e)}
    say(f"seed {seed}, BraTS twin (flair): {scores_text(row['twin'])}")
    return row


def scores_text(scores: dict[str, Any]) -> str:
    return (
        ", ".join(f"{r.upper()} {scores[r]:.3f}" for r in REGIONS)
        + f", outside {100 * scores['outside']:.2f} %"
    )


class Column(NamedTuple):
    """One numeric column of the table: ``row[section][key]`` (``row[key]`` without section) x scale."""

    header: str
    section: str | None
    key: str
    scale: float
    fmt: str

    def value(self, row: dict[str, Any]) -> float:
        return self.scale * float((row[self.section] if self.section else row)[self.key])


COLUMNS = [
    Column("truth WT mL", None, "truth_wt_ml", 1.0, "{:.1f}"),
    *(
        column
        for ref in REFERENCES
        for column in (
            *(Column(f"{ref} {key.upper()}", ref, key, 1.0, "{:.3f}") for key in REGIONS),
            Column(f"{ref} % out", ref, "outside", 100.0, "{:.2f}"),
        )
    ),
    *(Column(f"twin {key.upper()}", "twin", key, 1.0, "{:.3f}") for key in REGIONS if TWIN),
    *(
        Column(f"no {absent} {key.upper()}", f"without_{absent}", key, 1.0, "{:.3f}")
        for absent in WITHOUT
        for key in REGIONS
    ),
]


def missing_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean Dice per region with T1ce as reference: the full study, and each study without one sequence,
    with its difference from the full study."""
    summary: dict[str, dict[str, float]] = {
        "all four": {key: round(statistics.fmean(r["t1ce"][key] for r in rows), 4) for key in REGIONS}
    }
    for absent in WITHOUT:
        means = {
            key: round(statistics.fmean(r[f"without_{absent}"][key] for r in rows), 4) for key in REGIONS
        }
        means.update({f"{key}_change": round(means[key] - summary["all four"][key], 4) for key in REGIONS})
        summary[f"without {absent}"] = means
    return summary


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per seed, then the column means over all seeds and over those with ET."""
    head = ["seed", "profile", *(c.header for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["seed"]), row["profile"], *(c.fmt.format(c.value(row)) for c in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    with_et = [r for r in rows if r["profile"] != "no_et"]
    for label, subset in (("**mean**", rows), ("**mean, no_et excluded**", with_et)):
        if subset:
            means = [c.fmt.format(statistics.fmean(c.value(r) for r in subset)) for c in COLUMNS]
            lines.append("| " + " | ".join([label, f"n={len(subset)}", *means]) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per reference: the mean Dice of each region against its target, and the mean and worst fraction of
    mask voxels outside the brain against 1 %."""
    out: dict[str, dict[str, Any]] = {}
    for ref in REFERENCES:
        entry: dict[str, Any] = {}
        for key in REGIONS:
            mean = statistics.fmean(r[ref][key] for r in rows)
            entry[key] = {"mean": round(mean, 6), "target": TARGET[key], "met": mean >= TARGET[key]}
        fractions = [r[ref]["outside"] for r in rows]
        entry["outside"] = {
            "mean": round(statistics.fmean(fractions), 6),
            "max": max(fractions),
            "target": MAX_OUTSIDE,
            "met": max(fractions) < MAX_OUTSIDE,
        }
        out[ref] = entry
    return out


def registration_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per reference: the worst and mean registration error over every series of every seed, and the
    series whose registration failed (seed: [series])."""
    out: dict[str, dict[str, Any]] = {}
    for ref in REFERENCES:
        errors = [e for r in rows for e in r[ref]["registration_error_mm"].values() if e is not None]
        failed = {
            r["seed"]: [m for m, e in r[ref]["registration_error_mm"].items() if e is None]
            for r in rows
            if None in r[ref]["registration_error_mm"].values()
        }
        out[ref] = {
            "refused": [r["seed"] for r in rows if "refused" in r[ref]],
            "max_mm": max(errors, default=0.0),
            "mean_mm": round(statistics.fmean(errors), 4) if errors else 0.0,
            "over_1mm": sum(e > 1.0 for e in errors),
            "failed": failed,
        }
    return out


def paired(rows: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per reference, the mean per-seed Dice difference (``rows`` minus ``baseline``, same seeds) of WT and
    TC over every seed and of ET over the seeds with enhancing tumour."""
    base = {r["seed"]: r for r in baseline}
    pairs = [(r, base[r["seed"]]) for r in rows if r["seed"] in base]
    out: dict[str, dict[str, Any]] = {}
    for ref in REFERENCES:
        entry: dict[str, Any] = {"seeds": len(pairs)}
        for key in REGIONS:
            subset = [(a, b) for a, b in pairs if key != "et" or a["profile"] != "no_et"]
            if subset:
                entry[key] = round(statistics.fmean(a[ref][key] - b[ref][key] for a, b in subset), 4)
        out[ref] = entry
    return out


def write_results(by_motion: dict[str, list[dict[str, Any]]], wall: float, partial: bool) -> dict[str, Any]:
    """Everything measured so far into ``RESULTS`` (the first motion range's rows at the top, as before
    ranges existed); returns it."""
    rows = by_motion[MOTIONS[0]]
    results: dict[str, Any] = {
        "partial": partial,
        "seeds": [r["seed"] for r in rows],
        "model": str(MODEL),
        "without": WITHOUT,
        "missing_sequences": missing_summary(rows) if rows else {},
        "machine": machine(),
        "wall_s": round(wall, 1),
        "conversion": CLINICAL.to_json(),
        "verdict": verdict(rows) if rows else {},
        "cases": rows,
        "table": table(rows) if rows else "",
        "motions": {
            motion: {
                "verdict": verdict(r) if r else {},
                "registration": registration_summary(r),
                "table": table(r) if r else "",
                **({"cases": r} if motion != MOTIONS[0] else {}),
            }
            for motion, r in by_motion.items()
        },
        "paired": {motion: paired(r, rows) for motion, r in by_motion.items() if motion != MOTIONS[0]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return results


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    if not SEEDS:
        sys.exit("ACC_SEEDS is empty; give a comma list of seeds, e.g. ACC_SEEDS=50,51")
    if not set(REFERENCES) <= {"flair", "t1ce"} or (WITHOUT and "t1ce" not in REFERENCES):
        sys.exit("ACC_REFERENCES: flair and/or t1ce (t1ce with ACC_WITHOUT, the full study it compares with)")
    started = time.perf_counter()
    by_motion: dict[str, list[dict[str, Any]]] = {motion: [] for motion in MOTIONS}
    with tempfile.TemporaryDirectory(prefix="tumorseg-accuracy-") as tmp:
        work = Path(tmp)
        with LocalOrthanc(work / "orthanc") as orthanc:
            settings = Settings(
                _env_file=None,
                orthanc_url=orthanc.url,
                orthanc_username=orthanc.username,
                orthanc_password=orthanc.password,
                results_dir=work / "results",
                model_path=MODEL,
            )
            with TestClient(create_app(settings)) as client:
                segmenter = Segmenter(orthanc, client, work)
                for n, seed in enumerate(SEEDS, 1):
                    for motion in MOTIONS:
                        say(
                            f"seed {seed} ({n}/{len(SEEDS)}), motion {motion}: phantoms, DICOM, upload, requests"
                        )
                        by_motion[motion].append(measure_seed(seed, segmenter, work, motion))
                    # What is done so far, in case the run is cut short
                    write_results(by_motion, time.perf_counter() - started, partial=True)
    wall = time.perf_counter() - started
    results = write_results(by_motion, wall, partial=False)
    text = results["table"]
    print(f"\nclinical-head accuracy, seeds {','.join(map(str, SEEDS))} ({wall:.0f} s)\n")
    print(text)
    print()
    for ref, entry in results["verdict"].items():
        parts = [
            f"{key.upper()} {entry[key]['mean']:.3f} (>= {TARGET[key]}: {'met' if entry[key]['met'] else 'MISSED'})"
            for key in REGIONS
        ]
        out = entry["outside"]
        parts.append(
            f"outside brain mean {100 * out['mean']:.2f} %, worst {100 * out['max']:.2f} % "
            f"(< 1 % each: {'met' if out['met'] else 'MISSED'})"
        )
        print(f"reference {ref}: " + "; ".join(parts))
    if WITHOUT:
        print("\nmean Dice, reference T1ce: all four sequences, and each study without one")
        for label, means in results["missing_sequences"].items():
            cells = ", ".join(
                f"{k.upper()} {means[k]:.3f}"
                + (f" ({means[k + '_change']:+.3f})" if k + "_change" in means else "")
                for k in REGIONS
            )
            print(f"  {label}: {cells}")
    for motion, entry in results["motions"].items():
        print(f"\nmotion {motion}: registration error (mm) per reference: {entry['registration']}")
        if motion in results["paired"]:
            print(f"  paired Dice difference against {MOTIONS[0]}: {results['paired'][motion]}")
    print(f"\nwrote {RESULTS}")
    if RECORD and WITHOUT:
        record_in_package(MODEL, results)
        print(f"recorded the missing-sequence figures in {MODEL / MANIFEST} (metrics.clinical_heads)")


def record_in_package(model_dir: Path, results: dict[str, Any]) -> None:
    """``results``' missing-sequence means into the package's ``metrics.clinical_heads``, for its model
    card (``python -m tumorseg_training.card`` renders them)."""
    entry = {
        "description": "Clinical-head phantoms (`make accuracy-clinical`: skull, scalp, motion between "
        "series, bias, noise; oblique 4 mm FLAIR, sagittal T1, reversed T1ce, coronal T2), no seed used in "
        "training or tuning.",
        "seeds": results["seeds"],
        "missing_sequences": results["missing_sequences"],
    }
    record_metrics(model_dir, "clinical_heads", entry)


if __name__ == "__main__":
    main()
