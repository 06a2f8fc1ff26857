"""`make bench`: the pipeline's cost per stage on four kinds of study, against a real local Orthanc.

Kinds (converted by `tumorseg to-dicom`; the first three from one skull-stripped BraTS-like phantom):
- brats          four 1 mm 240×240×155 series (the source lattice);
- clinical       oblique 2D FLAIR 0.9×0.9×4 mm, sagittal 3D T1 1 mm, T1ce 0.8×0.8×3 mm, T2 0.5×0.5×3 mm;
- large          four ~512×512×200 series (0.47×0.47×0.78 mm);
- clinical-head  the same seed's clinical head phantom (`tumorseg phantom --kind clinical-head`: the brain
                 and tumour inside skull, scalp, eyes and neck, each series moved rigidly, bias and noise)
                 with the clinical kind's geometry, so the service co-registers the series and extracts the
                 brain (deepbet) as it would on a scanner's study.

BENCH_KINDS (comma list, default all four) picks kinds, e.g. `BENCH_KINDS=clinical-head BENCH_RUNS=2`.
For each kind, two fresh `tumorseg serve` processes (series cache off, then on) each get a first request and
then BENCH_RUNS timed ones; the table shows the median of each stage (the service's own `timings_s`:
fetch, load, registration, brain_extraction, preprocess without those two, inference, postprocess, export,
total), the client-side end-to-end time, end-to-end / inference, registration + brain extraction / inference
(the clinical-head target: at most 1), the first request's end-to-end time, the load stage (cache off: every
request decodes) against `dcm2niix` converting the same four series in the same run, and the service's peak
RSS (VmHWM). Then BENCH_LEAK_RUNS consecutive requests on the clinical study (cache on) show whether the
resident memory grows.

First the network alone (BENCH_NETWORK=0 skips it): the shipped model on the BraTS phantom's model input
(the crop the service gives the network on that study), its FLOPs counted with torch's FlopCounterMode over
one whole sliding-window prediction, the CPU's peak from a timed float32 matmul in the same run, so the
floor is FLOPs / peak; the plain network under MONAI's sliding window and the predictor's fast path
(BatchNorm folded, channels-last, activations and residual sums fused, one window without the sliding
window's bookkeeping, the service's allocator setting) timed against it, with their largest probability
difference and the region voxels (probability over the threshold) where they differ.

Then distributed mode (issue 17), with a local Redis: for each count in BENCH_WORKERS (default 1,2), an API
and that many `tumorseg worker` processes get BENCH_WORKER_STUDIES (default 6) new clinical-kind studies as
jobs at once: studies per hour. And in auto mode (TUMORSEG_AUTO_SEGMENT, default poll) with the largest
count, BENCH_LATENCY_STUDIES (default 3) studies uploaded one after the other: the seconds from Orthanc
marking each stable to its DICOM SEG being in Orthanc. BENCH_KINDS= (empty) runs only this part, and
BENCH_WORKERS= (empty) skips it. On the clinical kind a third service talks DICOMweb only (Orthanc's
plugin; BENCH_DICOMWEB=0 skips it): its fetch stage against Orthanc REST's.

Then the model backends (BENCH_BACKENDS, default monai-unet,monai-bundle,nnunet-v2; empty skips): a service
per backend on the clinical study, no series cache (every request fetches and decodes anew): the shipped
model, the MONAI model zoo's BraTS bundle architecture (SegResNet, 16 initial filters, its 240x240x160
window) and nnU-Net's BraTS-like 3d_fullres plans, both with random weights; e2e, inference and peak RSS,
medians of BENCH_RUNS after a warm-up request. Results go to bench/results.json.

Then the state on PostgreSQL (issue 40; BENCH_STATE=0 skips it), on a local PostgreSQL (devkit/tumorseg_devkit/postgres.py):
the distributed throughput above again with TUMORSEG_DATABASE_URL set (1 and 2 workers, next to the SQLite
figures of the same run); the median e2e of POST /segment on one BENCH_STATE_KIND study (default brats)
in an API on PostgreSQL against one on SQLite, BENCH_RUNS timed requests each after a warm-up (at least 3);
and the trigger's failover, BENCH_FAILOVER_RUNS times (default 3): two API replicas on PostgreSQL with the
auto-trigger, the leader SIGKILLed and a study uploaded at once: the seconds from the kill to the other
replica leading (its tumorseg_trigger_leader gauge) and to the job of that study being created.
Then new studies against their limit (issue 43; BENCH_NEWSTUDY=0 skips it): one service without the series
cache gets, per kind (brats, clinical-head), a warm-up study and then BENCH_NEWSTUDY_COUNT (default 3) new
ones (new PatientIDs and UIDs, all uploaded before any is timed; BENCH_NEWSTUDY_KINDS=brats picks one kind). Per study: e2e of POST /segment; fetch = a
separate download of its four series from Orthanc REST in the same run, 8 instances at a time (what any
client must do); network = the result's timings_s.inference. Per kind the median of e2e / (fetch + network)
(target <= 1.4), the medians of e2e, fetch, network, the service's CPU seconds (user + system, /proc) and
of each stage in timings_s, and the load average.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tumorseg.pacs import OrthancClient
from tumorseg.pacs.upload import upload_directory
from tumorseg.paths import SHIPPED_MODEL
from tumorseg.pipeline import STAGES as PIPELINE_STAGES
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.launcher import LocalService, LocalWorker, ServiceStartError
from tumorseg_devkit.local import LocalOrthanc, LocalRedis
from tumorseg_devkit.synth.dicom_geometry import SeriesGeometry
from tumorseg_devkit.synth.dicom_options import ConversionOptions
from tumorseg_devkit.synth.phantom import generate_case, write_case
from tumorseg_devkit.synth.phantom_head import generate_head_case, write_head_case
from tumorseg_devkit.synth.to_dicom import convert_case

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
LEAK_RUNS = int(os.environ.get("BENCH_LEAK_RUNS", "20"))
WORK = Path(os.environ.get("BENCH_WORK", "out/bench"))
RESULTS = Path("bench/results.json")
STAGES = (*PIPELINE_STAGES, "total")
SEED = 31337
CLINICAL = ConversionOptions(
    geometry={
        "flair": SeriesGeometry(plane="axial", tilt_deg=12.0, spacing=(0.9, 0.9, 4.0)),
        "t1": SeriesGeometry(plane="sagittal"),
        "t1ce": SeriesGeometry(spacing=(0.8, 0.8, 3.0)),
        "t2": SeriesGeometry(spacing=(0.5, 0.5, 3.0)),
    }
)

KINDS = {  # kind: (phantom, conversion options)
    "brats": ("brats", ConversionOptions()),
    "clinical": ("brats", CLINICAL),
    "large": (
        "brats",
        ConversionOptions(geometry={m: SeriesGeometry(spacing=(0.46875, 0.46875, 0.78)) for m in SEQUENCES}),
    ),
    "clinical-head": ("head", CLINICAL),
}
KINDS_WANTED = [k.strip() for k in os.environ.get("BENCH_KINDS", ",".join(KINDS)).split(",") if k.strip()]
WORKER_COUNTS = [int(n) for n in os.environ.get("BENCH_WORKERS", "1,2").split(",") if n.strip()]
WORKER_STUDIES = int(os.environ.get("BENCH_WORKER_STUDIES", "6"))
LATENCY_STUDIES = int(os.environ.get("BENCH_LATENCY_STUDIES", "3"))
NETWORK = os.environ.get("BENCH_NETWORK", "1") != "0"
DICOMWEB = os.environ.get("BENCH_DICOMWEB", "1") != "0"
NEWSTUDY = os.environ.get("BENCH_NEWSTUDY", "1") != "0"
NEWSTUDY_COUNT = max(3, int(os.environ.get("BENCH_NEWSTUDY_COUNT", "3")))
NEWSTUDY_KINDS = tuple(
    k.strip() for k in os.environ.get("BENCH_NEWSTUDY_KINDS", "brats,clinical-head").split(",") if k.strip()
)
NEWSTUDY_FETCH_WORKERS = 8
NOWHERE = "http://127.0.0.1:9"
STATE = os.environ.get("BENCH_STATE", "1") != "0"
STATE_KIND = os.environ.get("BENCH_STATE_KIND", "brats")
FAILOVER_RUNS = int(os.environ.get("BENCH_FAILOVER_RUNS", "3"))
MODEL = Path(os.environ.get("TUMORSEG_MODEL_PATH", str(SHIPPED_MODEL)))
BACKENDS = [
    b.strip()
    for b in os.environ.get("BENCH_BACKENDS", "monai-unet,monai-bundle,nnunet-v2").split(",")
    if b.strip()
]


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def dcm2niix_seconds(folders: list[Path]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for n, folder in enumerate(folders):
            out = Path(tmp) / str(n)
            out.mkdir()
            subprocess.run(
                ["dcm2niix", "-b", "n", "-z", "n", "-o", str(out), str(folder)],
                check=True,
                capture_output=True,
            )
        return time.perf_counter() - start


def service_env(orthanc: LocalOrthanc, results: Path, **extra: str) -> dict[str, str]:
    """The settings of a benchmarked `tumorseg serve` or `worker`: this Orthanc, this results folder."""
    return {
        "TUMORSEG_ORTHANC_URL": orthanc.url,
        "TUMORSEG_ORTHANC_USERNAME": orthanc.username,
        "TUMORSEG_ORTHANC_PASSWORD": orthanc.password,
        "TUMORSEG_RESULTS_DIR": str(results),
        **extra,
    }


class Service(LocalService):
    """`tumorseg serve` on ``orthanc``, with a series cache of ``cache_mb`` MiB (0: off), started at once."""

    def __init__(
        self,
        orthanc: LocalOrthanc,
        results: Path,
        log: Path,
        cache_mb: int,
        dicomweb: bool = False,
        model: Path | None = None,
    ) -> None:
        env = service_env(orthanc, results, TUMORSEG_SERIES_CACHE_MB=str(cache_mb))
        if model is not None:
            env["TUMORSEG_MODEL_PATH"] = str(model)
        if dicomweb:  # QIDO/WADO-RS through Orthanc's DICOMweb plugin; the REST URL points nowhere
            env |= {"TUMORSEG_DICOMWEB_URL": f"{orthanc.url}/dicom-web", "TUMORSEG_ORTHANC_URL": NOWHERE}
        super().__init__(env, log, timeout=300.0, stop_timeout=60.0)
        try:
            self.start()
        except ServiceStartError as exc:
            sys.exit(str(exc))

    def segment(self, patient_id: str) -> tuple[dict[str, Any], float]:
        start = time.perf_counter()
        response = httpx.post(f"{self.url}/segment/{patient_id}", timeout=1800)
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            sys.exit(f"POST /segment/{patient_id}: HTTP {response.status_code} {response.text}")
        return response.json(), elapsed


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    try:
        model = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
        )
        info["cpu"] = model.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def timed(service: Service, patient_id: str) -> dict[str, Any]:
    """A first request, then RUNS timed ones: their stage medians and the first request's timings."""
    cold, cold_e2e = service.segment(patient_id)
    runs = []
    for _ in range(RUNS):
        result, e2e = service.segment(patient_id)
        runs.append({**result["timings_s"], "e2e": e2e})
    median = {stage: statistics.median(r[stage] for r in runs) for stage in (*STAGES, "e2e")}
    reg_bet = median["registration"] + median["brain_extraction"]
    return {
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "e2e_over_inference": round(median["e2e"] / median["inference"], 3),
        "reg_bet_over_inference": round(reg_bet / median["inference"], 3),
        "first_request_s": {**cold["timings_s"], "e2e": round(cold_e2e, 3)},
        "runs": runs,
    }


def phantom(name: str) -> Path:
    """The case folder (BraTS layout) of phantom ``name`` (brats or head) of SEED, written once under WORK."""
    case_dir = WORK / "phantom" / ("BraTS2021_BENCH" if name == "brats" else "HEAD_BENCH")
    if not (case_dir / f"{case_dir.name}_seg.nii.gz").exists():
        if name == "brats":
            write_case(generate_case(SEED), case_dir.parent, case_dir.name)
        else:
            write_head_case(generate_head_case(SEED), case_dir.parent, case_dir.name)
    return case_dir


def uploaded(kind: str, orthanc: LocalOrthanc) -> tuple[str, Any]:
    """The phantom study of ``kind`` in Orthanc: its patient id and the converted study."""
    patient_id = f"BENCH-{kind.upper()}"
    source, options = KINDS[kind]
    converted = convert_case(phantom(source), patient_id, WORK / "dicom" / kind, options)
    with OrthancClient(orthanc.url, orthanc.auth) as pacs:
        report = upload_directory(pacs, converted.out, workers=4, stable_timeout=120.0)
    say(f"{kind}: {report.stored + report.already_stored} instances in Orthanc")
    return patient_id, converted


def backend_package(backend: str) -> Path:
    """The package of ``backend`` at its published architecture with random weights (monai-unet: the
    shipped model). Real formats, imported as a user would (``tumorseg model import-...``)."""
    if backend == "monai-unet":
        return MODEL
    out = WORK / "models" / backend
    if (out / "model.json").is_file():
        return out
    if backend == "monai-bundle":
        from tests.bundles import ZOO_SEGRESNET, write_bundle
        from tumorseg.model.bundle import import_bundle

        source = write_bundle(
            WORK / "models" / "zoo-bundle",
            network_def=ZOO_SEGRESNET,
            roi_size=(240, 240, 160),
            name="zoo_brats",
        )
        return import_bundle(source, out)
    if backend == "nnunet-v2":
        from tests.nnunet_fixture import nnunet_results
        from tumorseg.model.import_nnunet import import_nnunet

        # nnU-Net's own planning on 1 mm phantoms (BraTS-like: its patch size and topology), random weights
        folders = nnunet_results(WORK / "models" / "nnunet-src", spacing_mm=1.0, iterations=0, features=None)
        return import_nnunet(folders["regions"], out)
    sys.exit(f"BENCH_BACKENDS: unknown backend {backend!r} (monai-unet, monai-bundle, nnunet-v2)")


def bench_backends(orthanc: LocalOrthanc) -> list[dict[str, Any]]:
    """Each backend on the clinical study, no series cache: e2e, inference and peak RSS (same run)."""
    patient_id, _ = uploaded("clinical", orthanc)
    rows = []
    for backend in BACKENDS:
        package = backend_package(backend)
        log = WORK / f"service-backend-{backend}.log"
        service = Service(orthanc, WORK / "results", log, 0, model=package)
        try:
            service.segment(patient_id)  # warm-up request
            runs = []
            for _ in range(RUNS):
                result, e2e = service.segment(patient_id)
                runs.append({"e2e": e2e, "inference": result["timings_s"]["inference"]})
            peak = rss_mib(service.process.pid, "VmHWM")
        finally:
            service.stop()
        row = {
            "backend": backend,
            "model": result["model"]["name"],
            "e2e_s": round(statistics.median(r["e2e"] for r in runs), 3),
            "inference_s": round(statistics.median(r["inference"] for r in runs), 3),
            "peak_rss_mib": round(peak, 1),
        }
        say(
            f"backend {backend}: e2e {row['e2e_s']} s, inference {row['inference_s']} s, peak {row['peak_rss_mib']} MiB"
        )
        rows.append(row)
    return rows


def bench_kind(kind: str, orthanc: LocalOrthanc) -> list[dict[str, Any]]:
    """Two fresh services on one study: without the series cache (every request fetches and decodes:
    the load stage against dcm2niix), and with it (repeated requests skip fetch and decode)."""
    patient_id, converted = uploaded(kind, orthanc)
    folders = [converted.get(m).folder for m in SEQUENCES]
    shapes = {m: converted.get(m).n_files for m in SEQUENCES}
    rows = []
    modes = [("no cache", 0, False), ("series cache", 512, False)]
    if DICOMWEB and kind == "clinical":
        modes.append(("dicomweb, no cache", 0, True))
    for mode, cache_mb, dicomweb in modes:
        log = WORK / f"service-{kind}-{cache_mb}{'-dicomweb' if dicomweb else ''}.log"
        service = Service(orthanc, WORK / "results", log, cache_mb, dicomweb=dicomweb)
        leak: list[float] = []
        try:
            row: dict[str, Any] = {"kind": kind, "mode": mode, "slices": shapes, **timed(service, patient_id)}
            row["peak_rss_mib"] = round(rss_mib(service.process.pid, "VmHWM"), 1)
            if kind == "clinical" and cache_mb:
                for n in range(LEAK_RUNS):
                    service.segment(patient_id)
                    leak.append(rss_mib(service.process.pid, "VmRSS"))
                    say(f"leak check {n + 1}/{LEAK_RUNS}: RSS {leak[-1]:.0f} MiB")
        finally:
            service.stop()
        if dicomweb:  # the fetch stage (find, list, download) against Orthanc REST's, same study, same run
            rest = rows[0]["median_s"]["fetch"]
            row["fetch_over_rest"] = round(row["median_s"]["fetch"] / rest, 3)
            say(f"{kind}: DICOMweb fetch {row['median_s']['fetch']:.3f} s vs REST {rest:.3f} s")
        elif not cache_mb:  # dcm2niix converting the same four series, timed in the same run
            converter = statistics.median(dcm2niix_seconds(folders) for _ in range(RUNS))
            row["dcm2niix_s"] = round(converter, 3)
            row["load_over_dcm2niix"] = round(row["median_s"]["load"] / converter, 3)
        if leak:
            row["leak_rss_mib"] = [round(v, 1) for v in leak]
            row["leak_growth_mib"] = round(leak[-1] - leak[min(4, len(leak) - 1)], 1)
        rows.append(row)
        say(f"{kind}, {mode}: e2e/inference {row['e2e_over_inference']}")
    return rows


def peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The best float32 matmul rate of this process (GFLOP/s), torch's threads as configured."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _seconds(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def bench_network() -> dict[str, Any]:
    """The shipped network on the BraTS phantom's model input: FLOPs, the floor they set at this CPU's
    matmul peak, and the plain and fast predictors' times (median of RUNS after one warm-up each)."""
    import numpy as np
    import SimpleITK as sitk
    from torch.utils.flop_counter import FlopCounterMode

    from tumorseg.imaging.preprocess import prepare
    from tumorseg.memory import keep_freed_memory
    from tumorseg.model.device import configure_threads
    from tumorseg.model.predictor import Predictor

    keep_freed_memory()  # as the service sets it (wiring.load_predictor)
    threads = configure_threads()
    case_dir = phantom("brats")
    volumes = {m: sitk.ReadImage(str(case_dir / f"{case_dir.name}_{m}.nii.gz")) for m in SEQUENCES}
    fast = Predictor.from_package(MODEL, "cpu")
    plain = Predictor.from_package(MODEL, "cpu", fast=False)
    model_input, _ = prepare(volumes, "flair", fast.manifest.preprocessing)
    with FlopCounterMode(display=False) as counter:
        plain.predict(model_input)
    flops = counter.get_total_flops()
    peak = peak_gflops()
    floor = flops / 1e9 / peak
    row: dict[str, Any] = {
        "model_input": list(model_input.array.shape),
        "threads": threads,
        "gflop": round(flops / 1e9, 1),
        "peak_gflops": round(peak, 1),
        "floor_s": round(floor, 3),
    }
    outputs = {}
    for name, predictor in (("plain", plain), ("fast", fast)):
        outputs[name] = predictor.predict(model_input)
        seconds = statistics.median(_seconds(lambda p=predictor: p.predict(model_input)) for _ in range(RUNS))
        row[f"{name}_s"] = round(seconds, 3)
        row[f"{name}_over_floor"] = round(seconds / floor, 2)
    row["fast_speedup"] = round(row["plain_s"] / row["fast_s"], 2)
    row["max_probability_difference"] = float(np.abs(outputs["fast"] - outputs["plain"]).max())
    threshold = fast.manifest.threshold  # the regions' masks before postprocessing: where they differ
    row["mask_voxels_changed"] = int(
        np.count_nonzero((outputs["fast"] > threshold) != (outputs["plain"] > threshold))
    )
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = [
        "kind",
        "mode",
        *STAGES,
        "e2e",
        "e2e/inf",
        "reg+BET/inf",
        "first e2e",
        "dcm2niix",
        "load/d2n",
        "peak RSS MiB",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        m = row["median_s"]
        cells = [
            row["kind"],
            row["mode"],
            *(f"{m[s]:.2f}" for s in STAGES),
            f"{m['e2e']:.2f}",
            f"{row['e2e_over_inference']:.2f}",
            f"{row['reg_bet_over_inference']:.2f}",
            f"{row['first_request_s']['e2e']:.2f}",
            f"{row['dcm2niix_s']:.2f}" if "dcm2niix_s" in row else "–",
            f"{row['load_over_dcm2niix']:.2f}" if "load_over_dcm2niix" in row else "–",
            f"{row['peak_rss_mib']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def clinical_studies(orthanc: LocalOrthanc, tag: str, count: int, stable: bool = True) -> list[str]:
    """``count`` new clinical-kind studies (new PatientIDs and UIDs) in Orthanc; their PatientIDs."""
    patients = []
    for n in range(count):
        patient_id = f"BENCH-JOBS-{tag}-{n}"
        out = WORK / "dicom" / "jobs" / patient_id
        shutil.rmtree(out, ignore_errors=True)
        converted = convert_case(phantom("brats"), patient_id, out, CLINICAL)
        with OrthancClient(orthanc.url, orthanc.auth) as pacs:
            upload_directory(pacs, converted.out, workers=4, stable_timeout=120.0 if stable else None)
        patients.append(patient_id)
    return patients


def distributed_env(orthanc: LocalOrthanc, queue: LocalRedis, results: Path, **extra: str) -> dict[str, str]:
    return service_env(orthanc, results, TUMORSEG_QUEUE_URL=queue.url, **extra)


def start_all(*processes: LocalService) -> list[LocalService]:
    for process in processes:
        try:
            process.start()
        except ServiceStartError as exc:
            for other in processes:
                other.stop()
            sys.exit(str(exc))
    return list(processes)


def seg_count(orthanc: LocalOrthanc, patient_id: str) -> int:
    with OrthancClient(orthanc.url, orthanc.auth) as pacs:
        studies = pacs.find_studies(patient_id)
        return sum(m == "SEG" for s in studies for m, _ in pacs.series_versions(s.orthanc_id))


def bench_workers(
    orthanc: LocalOrthanc, queue: LocalRedis, database: str | None = None
) -> list[dict[str, Any]]:
    """Studies per hour with each count of workers: all jobs queued at once, timed until the last ends;
    the state in SQLite and the results directory, or with ``database`` in that PostgreSQL."""
    rows = []
    engine = "sqlite" if database is None else "postgresql"
    for count in WORKER_COUNTS:
        patients = clinical_studies(orthanc, f"W{count}{engine[0].upper()}", WORKER_STUDIES)
        shutil.rmtree(WORK / f"results-workers-{count}", ignore_errors=True)
        env = distributed_env(orthanc, queue, WORK / f"results-workers-{count}")
        if database is not None:
            env["TUMORSEG_DATABASE_URL"] = database
        api = LocalService(env, WORK / f"api-workers-{count}.log", timeout=300.0)
        workers = [LocalWorker(env, WORK / f"worker-{count}-{n}.log", timeout=300.0) for n in range(count)]
        processes = start_all(api, *workers)
        try:
            start = time.perf_counter()
            jobs = [httpx.post(f"{api.url}/jobs", json={"patient_id": p}).json()["job_id"] for p in patients]
            ended: dict[str, str] = {}
            while len(ended) < len(jobs):
                for job_id in jobs:
                    if job_id not in ended:
                        state = httpx.get(f"{api.url}/jobs/{job_id}").json()["state"]
                        if state not in ("queued", "running"):
                            ended[job_id] = state
                time.sleep(0.25)
            wall = time.perf_counter() - start
        finally:
            for process in processes:
                process.stop()
        row = {
            "state": engine,
            "workers": count,
            "studies": len(jobs),
            "wall_s": round(wall, 1),
            "studies_per_hour": round(len(jobs) / wall * 3600, 1),
            "done": sum(state == "done" for state in ended.values()),
        }
        rows.append(row)
        say(
            f"{engine}, {count} worker(s): {row['studies']} studies in {row['wall_s']} s, "
            f"{row['studies_per_hour']}/h"
        )
    return rows


def bench_auto_latency(queue: LocalRedis, workers: int) -> dict[str, Any]:
    """Auto mode: seconds from Orthanc marking a new study stable to its SEG being in Orthanc."""
    latencies = []
    for leftover in ("orthanc-auto", "results-auto"):  # a new PACS and job store: every study is new
        shutil.rmtree(WORK / leftover, ignore_errors=True)
    with LocalOrthanc(WORK / "orthanc-auto") as orthanc:
        env = distributed_env(orthanc, queue, WORK / "results-auto", TUMORSEG_AUTO_SEGMENT="true")
        api = LocalService(env, WORK / "api-auto.log", timeout=300.0)
        processes = start_all(
            api, *(LocalWorker(env, WORK / f"worker-auto-{n}.log", timeout=300.0) for n in range(workers))
        )
        try:
            for n in range(LATENCY_STUDIES):
                (patient_id,) = clinical_studies(orthanc, f"AUTO{n}", 1, stable=False)
                with OrthancClient(orthanc.url, orthanc.auth) as pacs:
                    (study,) = pacs.find_studies(patient_id)
                    while not pacs.get_study(study.orthanc_id).is_stable:
                        time.sleep(0.1)
                stable_at = time.perf_counter()
                while seg_count(orthanc, patient_id) == 0:
                    if time.perf_counter() - stable_at > 600:
                        sys.exit(f"auto mode: no SEG for {patient_id} within 600 s; see {api.log_path}")
                    time.sleep(0.25)
                latencies.append(time.perf_counter() - stable_at)
                say(f"auto mode: study {n + 1} stable → SEG in {latencies[-1]:.1f} s")
        finally:
            for process in processes:
                process.stop()
    return {
        "workers": workers,
        "studies": len(latencies),
        "stable_to_seg_s": [round(v, 1) for v in latencies],
        "median_stable_to_seg_s": round(statistics.median(latencies), 1),
    }


def segment_s(url: str, patient_id: str) -> float:
    """The seconds of one POST /segment (e2e, as a client sees it)."""
    start = time.perf_counter()
    response = httpx.post(f"{url}/segment/{patient_id}", timeout=1800)
    if response.status_code != 200:
        sys.exit(f"POST /segment/{patient_id}: HTTP {response.status_code} {response.text}")
    return time.perf_counter() - start


def bench_state_e2e(orthanc: LocalOrthanc, database: str) -> dict[str, Any]:
    """The e2e of POST /segment on one study with the state in SQLite and in PostgreSQL: both services
    up at once, their requests alternated (the same load drift for both), a warm-up first."""
    patient_id, _ = uploaded(STATE_KIND, orthanc)
    services = {}
    for state in ("sqlite", "postgresql"):
        shutil.rmtree(WORK / f"results-state-{state}", ignore_errors=True)
        env = service_env(orthanc, WORK / f"results-state-{state}", TUMORSEG_SERIES_CACHE_MB="0")
        if state == "postgresql":
            env["TUMORSEG_DATABASE_URL"] = database
        services[state] = LocalService(env, WORK / f"service-state-{state}.log", timeout=300.0)
    start_all(*services.values())
    e2e: dict[str, list[float]] = {state: [] for state in services}
    try:
        for service in services.values():
            segment_s(service.url, patient_id)
        for n in range(max(RUNS, 3)):
            for state, service in services.items():
                e2e[state].append(segment_s(service.url, patient_id))
            say(
                f"state: run {n + 1}: sqlite {e2e['sqlite'][-1]:.2f} s, postgresql {e2e['postgresql'][-1]:.2f} s"
            )
    finally:
        for service in services.values():
            service.stop()
    medians = {state: statistics.median(values) for state, values in e2e.items()}
    return {
        "kind": STATE_KIND,
        "runs": len(e2e["sqlite"]),
        "e2e_s": {state: [round(v, 3) for v in values] for state, values in e2e.items()},
        "median_e2e_s": {state: round(v, 3) for state, v in medians.items()},
        "postgresql_over_sqlite": round(medians["postgresql"] / medians["sqlite"], 3),
    }


def leading(service: LocalService) -> bool:
    """Whether the replica runs the auto-trigger (its tumorseg_trigger_leader gauge)."""
    try:
        text = httpx.get(f"{service.url}/metrics", timeout=5).text
    except httpx.TransportError:
        return False
    return any(
        line.split()[-1] == "1.0" for line in text.splitlines() if line.startswith("tumorseg_trigger_leader ")
    )


def upload_now(orthanc: LocalOrthanc, folder: Path, seconds: list[float]) -> None:
    """Upload ``folder`` without waiting for Orthanc to mark the study stable; its seconds to ``seconds``."""
    start = time.perf_counter()
    with OrthancClient(orthanc.url, orthanc.auth) as pacs:
        upload_directory(pacs, folder, workers=4)
    seconds.append(time.perf_counter() - start)


def bench_failover(database: str) -> list[dict[str, Any]]:
    """Two API replicas on PostgreSQL with the auto-trigger (no workers: creating the job is what is
    timed); each run SIGKILLs the leader and at once uploads a new study: the seconds from the kill to the
    other replica leading and to that study's job being created. The killed replica is started again."""
    for leftover in ("orthanc-failover", "results-failover"):
        shutil.rmtree(WORK / leftover, ignore_errors=True)
    rows = []
    with LocalOrthanc(WORK / "orthanc-failover") as orthanc, LocalRedis(WORK / "redis-failover") as queue:
        env = distributed_env(
            orthanc,
            queue,
            WORK / "results-failover",
            TUMORSEG_AUTO_SEGMENT="true",
            TUMORSEG_AUTO_SEGMENT_POLL_S="1",
            TUMORSEG_DATABASE_URL=database,
        )
        replicas = start_all(
            *(LocalService(env, WORK / f"api-failover-{n}.log", timeout=300.0) for n in (0, 1))
        )
        try:
            for n in range(FAILOVER_RUNS):
                patient_id = f"BENCH-FAILOVER-{n}"
                converted = convert_case(
                    phantom("brats"), patient_id, WORK / "dicom" / "failover" / patient_id
                )
                deadline = time.perf_counter() + 120
                while not any(leading(r) for r in replicas):
                    if time.perf_counter() > deadline:
                        sys.exit("failover: no replica leads the auto-trigger after 120 s")
                    time.sleep(0.2)
                leader = next(r for r in replicas if leading(r))
                other = next(r for r in replicas if r is not leader)
                leader.process.kill()
                killed = time.perf_counter()
                upload_s: list[float] = []
                upload = threading.Thread(target=upload_now, args=(orthanc, converted.out, upload_s))
                upload.start()  # meanwhile the other replica's lead is watched
                led_s = job_s = None
                while job_s is None:
                    now = time.perf_counter() - killed
                    if now > 300:
                        sys.exit(
                            f"failover: no job for {patient_id} 300 s after the kill; see {other.log_path}"
                        )
                    if led_s is None and leading(other):
                        led_s = now
                    jobs = httpx.get(
                        f"{other.url}/jobs", params={"patient_id": patient_id}, timeout=10
                    ).json()
                    if jobs["jobs"]:
                        job_s = now
                    time.sleep(0.1)
                upload.join()
                row = {
                    "run": n + 1,
                    "leader_s": round(led_s or job_s, 1),
                    "uploaded_s": round(upload_s[-1], 1),
                }
                row["kill_to_job_s"] = round(job_s, 1)
                rows.append(row)
                say(
                    f"failover {n + 1}: other replica leads {row['leader_s']} s after the kill, job {job_s:.1f} s"
                )
                leader.stop()
                log = WORK / f"api-failover-{n}-restarted.log"
                replicas = [other, *start_all(LocalService(env, log, timeout=300.0))]
        finally:
            for replica in replicas:
                replica.stop()
    return rows


def bench_state(orthanc: LocalOrthanc) -> dict[str, Any]:
    """The PostgreSQL part (see the module docstring) on a local PostgreSQL, one database per part."""
    from tumorseg_devkit.postgres import LocalPostgres  # the devkit launcher

    state: dict[str, Any] = {}
    with LocalPostgres() as postgres:
        say(f"state: e2e on SQLite against PostgreSQL, {STATE_KIND} study, {max(RUNS, 3)} runs each")
        state["e2e"] = bench_state_e2e(orthanc, postgres.create_database())
        if WORKER_COUNTS:
            with LocalRedis(WORK / "redis-state") as queue:
                say(
                    f"state: distributed on PostgreSQL, {WORKER_STUDIES} studies with {WORKER_COUNTS} worker(s)"
                )
                state["throughput"] = bench_workers(orthanc, queue, postgres.create_database())
        if FAILOVER_RUNS:
            say(f"state: trigger failover between two replicas, {FAILOVER_RUNS} runs")
            state["failover"] = bench_failover(postgres.create_database())
    return state


def print_state(state: dict[str, Any]) -> None:
    if "e2e" in state:
        e2e = state["e2e"]
        med = e2e["median_e2e_s"]
        verdict = "met" if e2e["postgresql_over_sqlite"] <= 1.05 else "MISSED"
        print(
            f"\nstate, {e2e['kind']} study, medians of {e2e['runs']}: e2e on PostgreSQL {med['postgresql']} s, on "
            f"SQLite {med['sqlite']} s = {e2e['postgresql_over_sqlite']}x (target <= 1.05x: {verdict})"
        )
    for row in state.get("failover", []):
        print(
            f"\ntrigger failover {row['run']}: leader SIGKILLed; the other replica leads after {row['leader_s']} s, "
            f"the job of a study uploaded at once ({row['uploaded_s']} s to upload, Orthanc's StableAge "
            f"after that) is created {row['kill_to_job_s']} s after the kill"
        )


def new_study(orthanc: LocalOrthanc, kind: str, patient_id: str) -> set[str]:
    """A new study of ``kind`` (new PatientID, so new UIDs) in Orthanc; its series' SeriesInstanceUIDs."""
    source, options = KINDS[kind]
    out = WORK / "dicom" / "new" / patient_id
    shutil.rmtree(out, ignore_errors=True)
    converted = convert_case(phantom(source), patient_id, out, options)
    with OrthancClient(orthanc.url, orthanc.auth) as pacs:
        upload_directory(pacs, converted.out, workers=4, stable_timeout=120.0)
    return {s.series_instance_uid for s in converted.series}


def cpu_s(pid: int) -> float:
    """The user + system CPU seconds process ``pid`` has used (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetch_s(orthanc: LocalOrthanc, patient_id: str, series_uids: set[str]) -> dict[str, Any]:
    """A client's download of the study's series (``series_uids``, not the SEG the service stored) from
    Orthanc REST: the study found, its series listed, every instance ``GET /instances/{id}/file``,
    NEWSTUDY_FETCH_WORKERS at a time. Seconds, instances and MiB."""
    start = time.perf_counter()
    with httpx.Client(base_url=orthanc.url, auth=orthanc.auth, timeout=300) as client:
        found = client.post("/tools/find", json={"Level": "Study", "Query": {"PatientID": patient_id}})
        series = client.get(f"/studies/{found.raise_for_status().json()[0]}/series").raise_for_status().json()
        ids = [
            instance
            for s in series
            if s["MainDicomTags"].get("SeriesInstanceUID") in series_uids
            for instance in s["Instances"]
        ]

        def download(instance_id: str) -> int:
            response = client.get(f"/instances/{instance_id}/file", headers={"Accept-Encoding": "identity"})
            return len(response.raise_for_status().content)

        with ThreadPoolExecutor(max_workers=NEWSTUDY_FETCH_WORKERS) as pool:
            size = sum(pool.map(download, ids))
    return {"fetch_s": time.perf_counter() - start, "instances": len(ids), "mib": round(size / 2**20, 1)}


def bench_newstudy(orthanc: LocalOrthanc) -> dict[str, Any]:
    """Issue 43: each new study against its limit, fetch + network. One `tumorseg serve` (no series cache);
    per kind a warm-up study, then NEWSTUDY_COUNT new ones, all converted and uploaded before any is timed.
    Per study: e2e of POST /segment, then a separate download of its series (fetch_s) in the same run, and
    network = the result's timings_s.inference; per kind the median of e2e / (fetch + network)."""
    say(f"new studies: {NEWSTUDY_COUNT} per kind of {NEWSTUDY_KINDS} after a warm-up, no cache")
    tag = time.strftime("%H%M%S")
    studies = {
        kind: [
            (
                f"BENCH-NEW-{kind.upper()}-{tag}-{n}",
                new_study(orthanc, kind, f"BENCH-NEW-{kind.upper()}-{tag}-{n}"),
            )
            for n in range(NEWSTUDY_COUNT + 1)
        ]
        for kind in NEWSTUDY_KINDS
    }
    service = Service(orthanc, WORK / "results-new", WORK / "service-new.log", 0)
    kinds: dict[str, Any] = {"load_before": [round(v, 2) for v in os.getloadavg()]}
    try:
        for kind, patients in studies.items():
            service.segment(patients[0][0])  # the warm-up: model, deepbet and the first decode loaded
            runs = []
            for patient_id, series_uids in patients[1:]:
                cpu_before = cpu_s(service.pid)
                result, e2e = service.segment(patient_id)
                run = {
                    "e2e_s": e2e,
                    # the service's CPU seconds for the study: on 2 cores e2e cannot fall below half of it
                    "service_cpu_s": round(cpu_s(service.pid) - cpu_before, 3),
                    **fetch_s(orthanc, patient_id, series_uids),
                    "timings_s": result["timings_s"],
                }
                run["network_s"] = result["timings_s"]["inference"]
                run["ratio"] = round(e2e / (run["fetch_s"] + run["network_s"]), 3)
                runs.append(run)
                say(
                    f"{kind} {patient_id}: e2e {e2e:.2f} s, fetch {run['fetch_s']:.2f} s, "
                    f"network {run['network_s']:.2f} s, ratio {run['ratio']}"
                )
            kinds[kind] = {
                "ratio_median": statistics.median(r["ratio"] for r in runs),
                "median_s": {
                    key: round(statistics.median(r[key] for r in runs), 3)
                    for key in ("e2e_s", "fetch_s", "network_s", "service_cpu_s")
                },
                "stages_median_s": {
                    stage: round(statistics.median(r["timings_s"].get(stage, 0.0) for r in runs), 3)
                    for stage in STAGES
                },
                "runs": runs,
            }
    finally:
        service.stop()
    kinds["load_after"] = [round(v, 2) for v in os.getloadavg()]
    return kinds


def print_newstudy(newstudy: dict[str, Any]) -> None:
    for kind in NEWSTUDY_KINDS:
        if kind not in newstudy:
            continue
        row, med = newstudy[kind], newstudy[kind]["median_s"]
        stages = ", ".join(f"{stage} {s:.2f}" for stage, s in row["stages_median_s"].items())
        verdict = "met" if row["ratio_median"] <= 1.4 else "MISSED"
        print(
            f"\nnew {kind} studies ({len(row['runs'])}): e2e / (fetch + network) median {row['ratio_median']} "
            f"(target <= 1.4: {verdict}); e2e {med['e2e_s']:.2f} s, fetch {med['fetch_s']:.2f} s "
            f"({NEWSTUDY_FETCH_WORKERS} parallel), network {med['network_s']:.2f} s, the service's CPU "
            f"{med['service_cpu_s']:.2f} s; stages (s): {stages}"
        )
    if newstudy:
        print(f"load average before {newstudy['load_before']}, after {newstudy['load_after']}")


def main() -> None:
    if not shutil.which("dcm2niix"):
        sys.exit("dcm2niix is missing; run make setup")
    unknown = sorted(set(KINDS_WANTED) - set(KINDS))
    if unknown or not (KINDS_WANTED or WORKER_COUNTS or NETWORK or BACKENDS or NEWSTUDY or STATE):
        sys.exit(f"BENCH_KINDS={','.join(KINDS_WANTED)!r}: the kinds are {', '.join(KINDS)}")
    WORK.mkdir(parents=True, exist_ok=True)
    orthanc = LocalOrthanc(WORK / "orthanc")
    rows = []
    distributed: dict[str, Any] = {}
    backends: list[dict[str, Any]] = []
    state: dict[str, Any] = {}
    started = time.perf_counter()
    network: dict[str, Any] = {}
    newstudy: dict[str, Any] = {}
    if NETWORK:
        say(f"network: FLOPs, the matmul peak, plain and fast predictors ({RUNS} runs each)")
        network = bench_network()
    try:
        if KINDS_WANTED or WORKER_COUNTS or BACKENDS or NEWSTUDY or STATE:
            orthanc.start()
        for kind in KINDS_WANTED:
            say(f"{kind}: converting, uploading, {RUNS} timed runs after a warm-up")
            rows.extend(bench_kind(kind, orthanc))
        if NEWSTUDY:
            newstudy = bench_newstudy(orthanc)
        if BACKENDS:
            say(f"model backends {BACKENDS} on the clinical study ({RUNS} runs each after a warm-up)")
            backends = bench_backends(orthanc)
        if WORKER_COUNTS:
            with LocalRedis(WORK / "redis") as queue:
                say(f"distributed mode: {WORKER_STUDIES} studies with {WORKER_COUNTS} worker(s)")
                distributed["throughput"] = bench_workers(orthanc, queue)
                distributed["auto"] = bench_auto_latency(queue, max(WORKER_COUNTS))
        if STATE:
            state = bench_state(orthanc)
    finally:
        orthanc.stop()
    results: dict[str, Any] = {
        "machine": machine(),
        "runs_per_kind": RUNS,
        "leak_runs": LEAK_RUNS,
        "wall_s": round(time.perf_counter() - started, 1),
        "network": network,
        "new_study": newstudy,
        "kinds": rows,
        "table": table(rows) if rows else "",
        "distributed": distributed,
        "backends": backends,
        "state": state,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    print(
        f"\n{m.get('gpu', m['cpu'])} ({m['cores']} cores, {m['device']}), medians of {RUNS} warm runs, seconds\n"
    )
    if network:
        n = network
        print(
            f"network on {n['model_input']} ({n['threads']} threads): {n['gflop']} GFLOP, matmul peak "
            f"{n['peak_gflops']} GFLOP/s, floor {n['floor_s']} s; plain {n['plain_s']} s "
            f"({n['plain_over_floor']}x floor), fast {n['fast_s']} s ({n['fast_over_floor']}x floor, "
            f"{n['fast_speedup']}x plain, probabilities within {n['max_probability_difference']:.1e}, "
            f"{n['mask_voxels_changed']} region voxels changed)\n"
        )
    print(table(rows) if rows else "(no kinds)")
    for row in [*distributed.get("throughput", []), *state.get("throughput", [])]:
        print(
            f"\ndistributed, {row['state']}, {row['workers']} worker(s): {row['studies']} clinical studies in "
            f"{row['wall_s']} s = {row['studies_per_hour']} studies/hour ({row['done']} done)"
        )
    print_state(state)
    if "auto" in distributed:
        auto = distributed["auto"]
        print(
            f"\nauto mode, {auto['workers']} worker(s): stable → SEG in Orthanc {auto['stable_to_seg_s']} s "
            f"(median {auto['median_stable_to_seg_s']} s)"
        )
    for row in rows:
        if row["kind"] == "clinical-head":
            med = row["median_s"]
            verdict = "met" if row["reg_bet_over_inference"] <= 1 else "MISSED"
            print(
                f"\nclinical-head, {row['mode']}: registration {med['registration']:.2f} s + brain extraction "
                f"{med['brain_extraction']:.2f} s = {med['registration'] + med['brain_extraction']:.2f} s vs "
                f"inference {med['inference']:.2f} s (target reg+BET <= inference: {verdict}); "
                f"peak RSS {row['peak_rss_mib']:.0f} MiB"
            )
        if "fetch_over_rest" in row:
            verdict = "met" if row["fetch_over_rest"] <= 1.5 else "MISSED"
            print(
                f"\n{row['kind']}: DICOMweb fetch {row['median_s']['fetch']:.3f} s = {row['fetch_over_rest']}x the "
                f"Orthanc REST fetch (target <= 1.5x: {verdict})"
            )
        if "leak_growth_mib" in row:
            print(
                f"\nleak check ({LEAK_RUNS} requests, clinical): RSS growth after the 5th request {row['leak_growth_mib']} MiB"
            )
    for row in backends:
        print(
            f"\nbackend {row['backend']} ({row['model']}), clinical study, no cache: e2e {row['e2e_s']} s, "
            f"inference {row['inference_s']} s, peak RSS {row['peak_rss_mib']:.0f} MiB"
        )
    print_newstudy(newstudy)
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
