"""`make pin-masks`: the masks of the bench studies, voxel for voxel, to keep behaviour pinned while refactoring.

Writes fixed phantom studies (BraTS-like and clinical heads, Orthanc REST and DICOMweb), segments each with
`tumorseg segment` against a local Orthanc, and records per study a SHA-256 of the mask's voxels and affine,
the volumes and the mapping. ``PIN_OUT`` (default out/pins.json) receives the figures; with ``PIN_CHECK=FILE``
they are compared with an earlier run and the command fails on any difference.

    make pin-masks                                  # before a refactor: out/pins.json
    make pin-masks PIN_OUT=out/after.json PIN_CHECK=out/pins.json   # after it
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tumorseg.pacs import OrthancClient
from tumorseg.pacs.upload import upload_directory
from tumorseg_devkit.local import LocalOrthanc
from tumorseg_devkit.synth.dicom_options import CLINICAL_GEOMETRY, ConversionOptions
from tumorseg_devkit.synth.phantom import generate_case, write_case
from tumorseg_devkit.synth.phantom_head import generate_head_case, write_head_case
from tumorseg_devkit.synth.to_dicom import convert_case

WORK = Path(os.environ.get("PIN_WORK", "out/pins"))
OUT = Path(os.environ.get("PIN_OUT", "out/pins.json"))
CHECK = os.environ.get("PIN_CHECK", "")
# (patient id, kind, seed): two BraTS-like studies and two clinical heads, seeds fixed for good
STUDIES = [("PIN-B1", "brats", 11), ("PIN-B2", "brats", 12), ("PIN-H1", "head", 50), ("PIN-H2", "head", 51)]


def say(message: str) -> None:
    print(f"[pin] {message}", flush=True)


def study_folder(patient_id: str, kind: str, seed: int) -> Path:
    case_dir = WORK / "phantom" / patient_id
    if not any(case_dir.glob("*_seg.nii.gz")):
        if kind == "brats":
            write_case(generate_case(seed), case_dir.parent, patient_id)
        else:
            write_head_case(generate_head_case(seed), case_dir.parent, patient_id)
    options = ConversionOptions(geometry=CLINICAL_GEOMETRY) if kind == "head" else ConversionOptions()
    return convert_case(case_dir, patient_id, WORK / "dicom" / patient_id, options).out


def digest(mask_path: Path) -> dict[str, Any]:
    image = nib.load(mask_path)
    data = np.asarray(image.dataobj).astype(np.uint8)
    hashed = hashlib.sha256(data.tobytes() + np.asarray(image.affine, dtype=np.float64).round(6).tobytes())
    return {"sha256": hashed.hexdigest(), "shape": list(data.shape), "voxels": int(np.count_nonzero(data))}


def segment(env: dict[str, str], patient_id: str, out: Path, extra: list[str]) -> dict[str, Any]:
    command = [
        str(Path(sys.executable).parent / "tumorseg"),
        "segment",
        patient_id,
        "--out",
        str(out),
        *extra,
    ]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    result = json.loads((out / "result.json").read_text())
    return {
        **digest(out / "mask.nii.gz"),
        "volumes_ml": result["volumes_ml"],
        # descriptions, not UIDs: converting a phantom again gives new UIDs, the same series
        "series": {m: s["series_description"] for m, s in result["series"].items()},
    }


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    orthanc = LocalOrthanc(WORK / "orthanc")
    pins: dict[str, Any] = {}
    try:
        orthanc.start()
        with OrthancClient(orthanc.url, orthanc.auth) as pacs:
            for patient_id, kind, seed in STUDIES:
                upload_directory(pacs, study_folder(patient_id, kind, seed), stable_timeout=120.0)
        base = {**os.environ, "TUMORSEG_RESULTS_DIR": str((WORK / "results").resolve())}
        rest = {
            **base,
            "TUMORSEG_ORTHANC_URL": orthanc.url,
            "TUMORSEG_ORTHANC_USERNAME": orthanc.username,
            "TUMORSEG_ORTHANC_PASSWORD": orthanc.password,
        }
        web = {**rest, "TUMORSEG_DICOMWEB_URL": f"{orthanc.url}/dicom-web"}
        for patient_id, _, _ in STUDIES:
            say(f"segmenting {patient_id}")
            pins[patient_id] = segment(rest, patient_id, WORK / "masks" / patient_id, [])
        pins["PIN-H1 dicomweb"] = segment(web, "PIN-H1", WORK / "masks" / "PIN-H1-web", [])
        pins["PIN-B1 t1ce"] = segment(rest, "PIN-B1", WORK / "masks" / "PIN-B1-t1ce", ["--reference", "t1ce"])
    finally:
        orthanc.stop()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(pins, indent=2) + "\n")
    say(f"wrote {OUT}")
    if CHECK:
        before = json.loads(Path(CHECK).read_text())
        changed = [name for name in sorted(before.keys() | pins.keys()) if before.get(name) != pins.get(name)]
        for name in changed:
            say(f"CHANGED {name}: {before.get(name)} -> {pins.get(name)}")
        if changed:
            sys.exit(f"{len(changed)} of {len(pins)} masks changed")
        say(f"all {len(pins)} masks voxel for voxel as in {CHECK}")


if __name__ == "__main__":
    main()
