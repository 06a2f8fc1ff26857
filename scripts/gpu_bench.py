"""`make gpu-bench`: the stages of a segmentation on this machine's GPU, in one short run (minutes).

Issue 43's device path: deepbet on CUDA, registration on the CPU (REGISTRATION_WORKERS series side by
side, as the service runs it), inference with AMP (torch.autocast, as ``Predictor`` runs on CUDA). In one
process, without Orthanc: the study's I/O (fetch, decode, export) is measured by `make bench`.

On the clinical-head phantom of GPU_BENCH_SEED (default 31337, the bench's seed; brain and tumour inside
a head, each series moved rigidly) read from its NIfTI files, or on the case folder GPU_BENCH_CASE names
(the BraTS layout of ``write_case``/``write_head_case``: a smaller phantom, as the test runs it), reference
GPU_BENCH_REFERENCE (default flair):
- registration: ``register_study`` of the four series (CPU);
- brain extraction: deepbet on the CPU and, with a GPU, on CUDA (Dice of the two masks);
- preprocessing: ``prepare`` with those registrations (resampling, peel, normalisation; its brain
  extraction timed apart), the phantom's labels brought along onto the model grid;
- inference: the shipped model (or GPU_BENCH_MODEL) on the CPU in float32, and with a GPU on CUDA with AMP
  and in float32 (autocast off): per region (TC, WT, ET) the mask voxels AMP changes and the Dice of the AMP
  mask against the float32 one, and each mask's Dice against the phantom's truth.
Each timing is the median of GPU_BENCH_RUNS (default 3) after a warm-up. Where torch sees no CUDA device
the GPU parts are skipped with a message and the CPU parts run: the script is tested that way. Results go
to GPU_BENCH_RESULTS (default out/gpu_bench.json), the card named in them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk
import torch
from numpy.typing import NDArray

from tumorseg.imaging import grid as g
from tumorseg.imaging.brain import DeepBet
from tumorseg.imaging.preprocess import ModelInput, prepare
from tumorseg.imaging.registration import REGISTRATION_WORKERS, Registration, StudyRegistration
from tumorseg.model.predictor import Predictor
from tumorseg.paths import SHIPPED_MODEL
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.phantom_head import generate_head_case, write_head_case

SEED = int(os.environ.get("GPU_BENCH_SEED", "31337"))
CASE = os.environ.get("GPU_BENCH_CASE")  # a case folder to read instead of the head phantom of SEED
REFERENCE = os.environ.get("GPU_BENCH_REFERENCE", "flair")
RUNS = max(1, int(os.environ.get("GPU_BENCH_RUNS", "3")))
MODEL = Path(os.environ.get("GPU_BENCH_MODEL", str(SHIPPED_MODEL)))
WORK = Path(os.environ.get("GPU_BENCH_WORK", "out/gpu_bench"))
RESULTS = Path(os.environ.get("GPU_BENCH_RESULTS", "out/gpu_bench.json"))
REGIONS = ("TC", "WT", "ET")  # the channels of ``Predictor.predict``
REGION_LABELS = {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)}
NO_GPU = "no CUDA device visible to torch: deepbet on CUDA and AMP inference are skipped (CPU stages only)"
T = TypeVar("T")


def say(message: str) -> None:
    print(f"[gpu-bench] {message}", flush=True)


def timed(call: Callable[[], T], cuda: bool = False) -> tuple[T, float]:
    """``call()`` after a warm-up, RUNS times: its last result and the median seconds (CUDA synchronised)."""
    call()
    seconds = []
    for _ in range(RUNS):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = call()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return result, round(statistics.median(seconds), 3)


def case_volumes() -> tuple[dict[str, sitk.Image], sitk.Image]:
    """The four series of CASE, or of the clinical-head phantom of SEED (written once under WORK), and the
    reference's labels: truth in the reference series' frame (a head case's ``truth/seg_<reference>``; a
    BraTS case's series share one frame, and its ``_seg`` is in it)."""
    case = Path(CASE) if CASE else WORK / f"HEAD_{SEED}"
    truth = case / "truth" / f"seg_{REFERENCE}.nii.gz"
    if not CASE and not truth.is_file():
        say(f"writing the clinical-head phantom of seed {SEED}")
        write_head_case(generate_head_case(SEED), case.parent, case.name)
    if not truth.is_file():
        truth = case / f"{case.name}_seg.nii.gz"
    volumes = {m: sitk.ReadImage(str(case / f"{case.name}_{m}.nii.gz"), sitk.sitkFloat32) for m in SEQUENCES}
    return volumes, sitk.ReadImage(str(truth))


def registrations(volumes: dict[str, sitk.Image]) -> dict[str, Registration]:
    """Every series registered to the reference as the service does it (``StudyRegistration``)."""
    with (
        ThreadPoolExecutor(max_workers=REGISTRATION_WORKERS) as pool,
        StudyRegistration(volumes, REFERENCE, pool) as study,
    ):
        for name, image in volumes.items():
            study.add(name, image)
        return study.all()


def dice(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """``Predictor.predict`` in float32 on CUDA: its ``torch.autocast("cuda")`` made a disabled one."""
    original = torch.autocast

    def disabled(device_type: str, *args: Any, **kwargs: Any) -> Any:
        return original(device_type, *args, **{**kwargs, "enabled": False})

    torch.autocast = disabled  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        torch.autocast = original  # type: ignore[misc]


def region_masks(probabilities: NDArray[np.float32], brain: NDArray[np.bool_] | None) -> dict[str, Any]:
    inside = np.ones(probabilities.shape[1:], dtype=bool) if brain is None else brain
    return {r: (probabilities[n] > 0.5) & inside for n, r in enumerate(REGIONS)}


def bench_brain(
    volumes: dict[str, sitk.Image], found: dict[str, Registration], series: str
) -> dict[str, Any]:
    """deepbet on ``series`` resampled onto the reference's full model grid (as ``prepare`` gives it to the
    extractor), on the CPU and on CUDA."""
    transform = found[series].transform if series in found and found[series].applied else None
    grid = g.model_grid(volumes[REFERENCE], 1.0)
    block = g.resample_to_array(volumes[series], grid, fill=0.0, transform=transform)
    on_cpu = DeepBet(device="cpu")  # get_extractor's runs on CUDA where there is one
    cpu_mask, cpu_s = timed(lambda: on_cpu.extract(block, 1.0))
    row: dict[str, Any] = {"series": series, "shape": list(block.shape), "cpu_s": cpu_s}
    if torch.cuda.is_available():
        on_gpu = DeepBet(device="cuda")
        gpu_mask, row["cuda_s"] = timed(lambda: on_gpu.extract(block, 1.0), cuda=True)
        row["cuda_vs_cpu_dice"] = round(dice(gpu_mask, cpu_mask), 5)
        row["cuda_vs_cpu_voxels_changed"] = int(np.count_nonzero(gpu_mask ^ cpu_mask))
    return row


def bench_inference(model_input: ModelInput, labels: NDArray[np.uint8] | None, cuda: bool) -> dict[str, Any]:
    """The network on the CPU (float32), and with CUDA with AMP and without; masks per region compared."""
    truth = {r: np.isin(labels, v) for r, v in REGION_LABELS.items()} if labels is not None else None
    runs: dict[str, tuple[Predictor, contextlib.AbstractContextManager[None]]] = {
        "cpu_fp32": (Predictor.from_package(MODEL, "cpu"), contextlib.nullcontext())
    }
    if cuda:
        gpu = Predictor.from_package(MODEL, "cuda")
        runs |= {"cuda_amp": (gpu, contextlib.nullcontext()), "cuda_fp32": (gpu, autocast_off())}
    masks: dict[str, Any] = {}
    row: dict[str, Any] = {}
    for name, (predictor, context) in runs.items():
        with context:
            probabilities, row[f"{name}_s"] = timed(partial(predictor.predict, model_input), "cuda" in name)
        masks[name] = region_masks(probabilities, model_input.brain)
        if truth is not None:
            row[f"{name}_dice_truth"] = {r: round(dice(masks[name][r], truth[r]), 4) for r in REGIONS}
    if cuda:
        amp, fp32 = masks["cuda_amp"], masks["cuda_fp32"]
        row["amp_voxels_changed"] = {r: int(np.count_nonzero(amp[r] ^ fp32[r])) for r in REGIONS}
        row["amp_vs_fp32_dice"] = {r: round(dice(amp[r], fp32[r]), 5) for r in REGIONS}
        row["cuda_amp_vs_cpu_voxels_changed"] = {
            r: int(np.count_nonzero(amp[r] ^ masks["cpu_fp32"][r])) for r in REGIONS
        }
    return row


def machine(cuda: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu"] = next(line for line in lines if line.startswith("model name")).split(":", 1)[1].strip()
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def main() -> None:
    cuda = torch.cuda.is_available()
    if not cuda:
        say(NO_GPU)
    volumes, truth = case_volumes()
    say(f"registration of {len(volumes) - 1} series to {REFERENCE} (CPU, {REGISTRATION_WORKERS} at a time)")
    found, registration_s = timed(lambda: registrations(volumes))
    prep = Predictor.from_package(MODEL, "cpu").manifest.preprocessing
    say("preprocessing (deepbet on the CPU inside it)")
    (model_input, labels), prepare_s = timed(
        lambda: prepare(volumes, REFERENCE, prep, truth, registrations=found, brain_extractor="auto")
    )
    brain_in_prepare = float(model_input.timings_s.get("brain_extraction", 0.0))
    say("brain extraction" + (" on the CPU and on CUDA" if cuda else " on the CPU"))
    brain = bench_brain(volumes, found, str(model_input.brain_extraction.get("series", "t1ce")))
    say("inference" + (" on the CPU, on CUDA with AMP and in float32" if cuda else " on the CPU"))
    inference = bench_inference(model_input, labels, cuda)
    results = {
        "machine": machine(cuda),
        "gpu": cuda,
        "skipped": None if cuda else NO_GPU,
        "case": CASE,
        "seed": None if CASE else SEED,
        "reference": REFERENCE,
        "runs": RUNS,
        "model_input_shape": list(model_input.array.shape),
        "registration_s": registration_s,
        "registration_failed": sorted(m for m, r in found.items() if r.failed),
        "preprocess_s": round(prepare_s - brain_in_prepare, 3),
        "brain_extraction": brain,
        "inference": inference,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    say(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
