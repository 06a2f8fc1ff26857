"""scripts/gpu_bench.py (issue 43) runs where there is no GPU: the CPU stages measured, the GPU ones
skipped with a message that says so, the results written. On the session's BraTS-like phantom
(GPU_BENCH_CASE), smaller than the clinical head `make gpu-bench` writes and already made for the other
integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # registration, deepbet, a network

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench.py"


def test_gpu_bench_on_the_cpu(phantom_case: Path, random_model: Path, tmp_path: Path) -> None:
    results = tmp_path / "gpu_bench.json"
    env = {
        **os.environ,
        "GPU_BENCH_RUNS": "1",
        "GPU_BENCH_CASE": str(phantom_case),
        "GPU_BENCH_MODEL": str(random_model),
        "GPU_BENCH_WORK": str(tmp_path / "work"),
        "GPU_BENCH_RESULTS": str(results),
        "CUDA_VISIBLE_DEVICES": "",  # the CPU path, even on a machine with a GPU
    }
    run = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=540, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no CUDA device visible to torch: deepbet on CUDA and AMP inference are skipped" in run.stdout
    written = json.loads(results.read_text())
    assert written["gpu"] is False and "skipped" in written["skipped"]
    assert written["case"] == str(phantom_case) and written["seed"] is None
    assert written["registration_s"] > 0 and written["registration_failed"] == []
    assert written["brain_extraction"]["cpu_s"] > 0 and "cuda_s" not in written["brain_extraction"]
    inference = written["inference"]
    assert inference["cpu_fp32_s"] > 0 and set(inference["cpu_fp32_dice_truth"]) == {"TC", "WT", "ET"}
    assert "amp_voxels_changed" not in inference
    assert len(written["model_input_shape"]) == 4
