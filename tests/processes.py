"""Served processes (``tumorseg serve`` replicas, ``tumorseg worker`` processes) started and stopped
together: their start-up is mostly imports, so side by side it costs about what one does."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from tumorseg_devkit.launcher import LocalService

P = TypeVar("P", bound=LocalService)


def in_parallel(call: Callable[[P], object], processes: Sequence[P]) -> None:
    """``call(process)`` for every process at once; the first error is raised once all have returned."""
    if processes:
        with ThreadPoolExecutor(len(processes)) as pool:
            list(pool.map(call, processes))


@contextmanager
def started(processes: Sequence[P]) -> Iterator[Sequence[P]]:
    """``processes`` started together and, on the way out (or after a failed start), stopped together."""
    try:
        in_parallel(LocalService.start, processes)
        yield processes
    finally:
        in_parallel(LocalService.stop, processes)  # safe before, or after a failed, start
