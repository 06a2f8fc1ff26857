"""The allocator setting (tumorseg.memory): a large block freed in a request thread is reused by the next
one instead of coming fresh (zero-filled, page by page) from the kernel. Each probe runs in a fresh interpreter (the setting is
for the whole process and cannot be undone). The settings are made where a service process starts (``tumorseg serve``,
``worker``, ``segment``), never by creating or starting the app in a test's process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from fastapi.testclient import TestClient

PROBE = """
import json, sys, threading
import numpy as np
from tumorseg.memory import keep_freed_memory

tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
reused = []

def request():  # what a request thread does: a large array (64 MiB, above glibc's 32 MiB ceiling) filled
    block = np.empty(16 * 2**20, np.float32)
    # Fresh memory from the kernel reads 0; the block the previous request freed still holds its ones.
    reused.append(bool((block[::4096] == 1.0).all()))
    block.fill(1.0)
    del block

for _ in range(3):
    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
print(json.dumps({"tuned": tuned, "reused": reused}))
"""


def _probe(mode: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_a_freed_block_is_reused_without_page_faults() -> None:
    plain, tuned = _probe("plain"), _probe("tuned")
    assert plain["tuned"] is False and tuned["tuned"] is True
    # Without the setting every request gets fresh pages from the kernel (zero-filled on first touch);
    # with it the second and third reuse the block the first freed.
    assert plain["reused"] == [False, False, False]
    assert tuned["reused"] == [False, True, True]


@pytest.fixture
def process_settings() -> Iterator[tuple[mock.Mock, mock.Mock]]:
    """glibc's allocator calls (``memory._libc``) and torch's thread setting, recorded and not made."""
    libc = mock.Mock()
    libc.mallopt.return_value = 1
    with (
        mock.patch("tumorseg.memory._libc", return_value=libc),
        mock.patch("torch.set_num_threads") as threads,
    ):
        yield libc, threads


def test_the_app_changes_nothing_process_wide(
    process_settings: tuple[mock.Mock, mock.Mock], tmp_path: Path
) -> None:
    """Creating and starting the app (its lifespan loads the model: here none) in a test's process sets
    neither the allocator nor the CPU threads: ``tumorseg serve`` does, where the process starts."""
    from tests.orthanc import service_settings
    from tumorseg.api.main import create_app

    settings = service_settings(
        "http://127.0.0.1:9", None, model_path=tmp_path / "no-model", results_dir=tmp_path / "results"
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").json()["model"]["loaded"] is False
    libc, threads = process_settings
    assert libc.mallopt.call_count == 0 and libc.malloc.call_count == 0 and threads.call_count == 0


def test_serve_sets_the_allocator_and_threads_before_the_server_starts(
    process_settings: tuple[mock.Mock, mock.Mock],
) -> None:
    from typer.testing import CliRunner

    from tumorseg import cli

    libc, threads = process_settings
    seen: list[tuple[int, int]] = []  # the settings made when the server starts

    def run(*args: object, **kwargs: object) -> None:
        seen.append((libc.mallopt.call_count, threads.call_count))

    with mock.patch("uvicorn.run", side_effect=run), mock.patch("tumorseg.logs.configure"):
        answer = CliRunner().invoke(cli.app, ["serve"])
    assert answer.exit_code == 0, answer.output
    assert seen == [(3, 1)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, M_ARENA_MAX; torch's threads


RESERVE_PROBE = """
import json, resource, sys, threading
import numpy as np
from tumorseg.memory import keep_freed_memory, reserve_heap

keep_freed_memory()
if sys.argv[1] == "reserved":
    reserve_heap(512 * 2**20)
faults = []

def request():  # a first request's large arrays (2 x 128 MiB), filled
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [np.ones(32 * 2**20, np.float32) for _ in range(2)]
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del blocks

thread = threading.Thread(target=request)
thread.start()
thread.join()
print(json.dumps(faults[0]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_a_reserved_heap_serves_the_first_request_without_page_faults() -> None:
    def faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", RESERVE_PROBE, mode], capture_output=True, text=True, check=True
        )
        return int(json.loads(done.stdout))

    # 256 MiB is 128 huge pages or 65536 small ones: fresh memory faults at least 128 times
    assert faults("plain") >= 128
    assert faults("reserved") < 16
