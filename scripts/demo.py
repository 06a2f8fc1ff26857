"""`make demo`: the whole path on one machine, as a user would drive it.

A local Orthanc (the Debian package, with services/orthanc/orthanc.json), a synthetic patient DEMO-0001
acquired the way a clinic would (a whole head with skull and scalp, the patient moving a little between
series, bias fields and noise; oblique thick-slice FLAIR, sagittal 3D T1, reversed-slice T1ce, coronal
T2, plus a localizer, DWI and ADC) uploaded as DICOM, the service started (`tumorseg serve`), then
`POST /segment/DEMO-0001` over HTTP. The mask, the result JSON and the preview land in out/demo/, and
the result's viewer URL is printed. Everything started here is stopped on exit; with DEMO_SERVE=1
(`make demo DEMO_SERVE=1`) a service over out/demo/results stays up afterwards, until Ctrl-C, so that the
viewer URL opens in a browser.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import SimpleITK as sitk

from tumorseg.imaging import grid as g
from tumorseg.pacs import OrthancClient
from tumorseg.pacs.upload import upload_directory
from tumorseg_devkit.launcher import LocalService, ServiceStartError
from tumorseg_devkit.local import LocalOrthanc
from tumorseg_devkit.synth.dicom_options import CLINICAL_GEOMETRY, ConversionOptions
from tumorseg_devkit.synth.phantom_head import generate_head_case, write_head_case
from tumorseg_devkit.synth.to_dicom import convert_case

PATIENT_ID = "DEMO-0001"
# A typical case, chosen from the generator's plan (not from results): one 34 mL deep lesion with
# necrosis, enhancing rim and oedema.
PHANTOM_SEED = 20215
OUT = Path("out/demo")
SERVE = os.environ.get("DEMO_SERVE", "") not in ("", "0")
CLINICAL = ConversionOptions(
    geometry={**CLINICAL_GEOMETRY, "flair": replace(CLINICAL_GEOMETRY["flair"], tilt_deg=12.0)},
    decoys=True,
    patient_name="DEMO^PHANTOM",
)


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def main() -> None:
    work = OUT / "work"
    work.mkdir(parents=True, exist_ok=True)
    case_dir = work / "phantom" / f"HEAD_DEMO{PHANTOM_SEED}"
    if not (case_dir / f"{case_dir.name}_seg.nii.gz").exists():
        say("making a clinical head phantom (MNI152 brain, synthetic tumour, skull, scalp, patient motion)")
        write_head_case(generate_head_case(PHANTOM_SEED), case_dir.parent, case_dir.name)
    say("writing it as a DICOM MR study with clinical geometry")
    converted = convert_case(case_dir, PATIENT_ID, work / "dicom", CLINICAL)

    shutil.rmtree(work / "orthanc", ignore_errors=True)  # a fresh PACS: DEMO-0001 has exactly one study
    orthanc = LocalOrthanc(work / "orthanc")
    service: LocalService | None = None
    try:
        orthanc.start()
        say(f"Orthanc {orthanc.url} (config services/orthanc/orthanc.json, user {orthanc.username})")
        with OrthancClient(orthanc.url, orthanc.auth) as pacs:
            report = upload_directory(pacs, converted.out, show_progress=True, stable_timeout=120.0)
        say(
            f"uploaded {report.stored} new, {report.already_stored} already stored, {len(report.failed)} failed"
        )

        service = LocalService(
            {
                "TUMORSEG_ORTHANC_URL": orthanc.url,
                "TUMORSEG_ORTHANC_USERNAME": orthanc.username,
                "TUMORSEG_ORTHANC_PASSWORD": orthanc.password,
                "TUMORSEG_RESULTS_DIR": str((OUT / "results").resolve()),
            },
            OUT / "service.log",
            timeout=180.0,
        )
        try:
            service.start()
        except ServiceStartError as exc:
            sys.exit(str(exc))
        url, health = service.url, service.health
        say(f"service {url}: {health['status']}, model {health['model']['name']} on {health['device']}")

        say(f"POST {url}/segment/{PATIENT_ID}")
        response = httpx.post(f"{url}/segment/{PATIENT_ID}", timeout=900)
        if response.status_code != 200:
            sys.exit(f"segmentation failed: HTTP {response.status_code} {response.text}")
        result = response.json()
        (OUT / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        (OUT / "mask.nii.gz").write_bytes(httpx.get(url + result["mask_url"], timeout=60).content)
        if result.get("preview_url"):
            (OUT / "preview.png").write_bytes(httpx.get(url + result["preview_url"], timeout=60).content)
    finally:
        if service is not None:
            service.stop()
        orthanc.stop()

    # How good is it? The phantom's truth in the FLAIR's own frame, resampled onto the mask's lattice.
    mask = sitk.ReadImage(str(OUT / "mask.nii.gz"))
    truth = g.resample_labels(sitk.ReadImage(str(case_dir / f"{case_dir.name}_seg.nii.gz")), mask)
    predicted, expected = sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(truth)
    scores = {
        "WT": dice(predicted > 0, expected > 0),
        "TC": dice(np.isin(predicted, (1, 4)), np.isin(expected, (1, 4))),
        "ET": dice(predicted == 4, expected == 4),
    }
    shape = nib.load(OUT / "mask.nii.gz").shape
    volumes, timings = result["volumes_ml"], result["timings_s"]
    say("done")
    series = ", ".join(f"{m}: {s['series_description']}" for m, s in result["series"].items())
    outputs = [OUT / "result.json", OUT / "mask.nii.gz"] + (
        [OUT / "preview.png"] if (OUT / "preview.png").exists() else []
    )
    lines = [
        f"patient   {PATIENT_ID}, study {result['study_instance_uid']}",
        f"series    {series}",
        f"mask      {shape} on the {result['reference']['modality']} lattice",
        f"volumes   WT {volumes['wt']:.1f} mL, TC {volumes['tc']:.1f} mL, ET {volumes['et']:.1f} mL",
        "vs truth  Dice " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()),
        "motion    "
        + ", ".join(
            f"{m} {r['rotation_deg']:.1f}° {r['translation_mm']:.1f} mm"
            for m, r in result["registration"]["series"].items()
        ),
        f"brain     {result['brain_extraction']['volume_ml']} mL ({result['brain_extraction']['method']}"
        f" on {result['brain_extraction']['series']})",
        "warnings  " + ("; ".join(result["warnings"]) or "none"),
        "timings   " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
        "outputs   " + ", ".join(str(p) for p in outputs),
        f"viewer    {url}{result['viewer_url']}"
        + ("" if SERVE else " (the service has stopped: `make demo DEMO_SERVE=1` keeps one up to open it)"),
    ]
    print("\n" + "\n".join(f"  {line}" for line in lines) + "\n")
    if SERVE:
        serve_results(url, result["viewer_url"])


def serve_results(url: str, viewer_url: str) -> None:
    """A service over out/demo/results on the demo's port until Ctrl-C: the viewer needs no Orthanc."""
    env = {"TUMORSEG_RESULTS_DIR": str((OUT / "results").resolve())}
    port = int(url.rsplit(":", 1)[1])  # the URL just printed
    with LocalService(env, OUT / "viewer-service.log", timeout=180.0, port=port) as service:
        say(f"open {service.url}{viewer_url} (all results at {service.url}/); Ctrl-C stops the service")
        try:
            service.process.wait()
        except KeyboardInterrupt:
            say("stopping")


if __name__ == "__main__":
    main()
