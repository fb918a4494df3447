"""Timing helpers shared by the bench scripts (imported as ``_timing``: each script runs as ``bench/X.py``, so
Python puts bench/ first on the path)."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence


def timed(action: Callable[[], object]) -> float:
    """Seconds one call of ``action`` takes."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def per_call(function: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Median over ``repeat`` batches of ``number`` calls of the seconds one call takes."""

    def batch() -> None:
        for _ in range(number):
            function()

    return statistics.median(timed(batch) / number for _ in range(repeat))


def run_to_exit(command: Sequence[str], runs: int = 20, *, check: bool = True) -> float:
    """Median seconds from exec to exit of ``command``, its output discarded (``check``: it must exit 0)."""

    def run() -> None:
        subprocess.run(list(command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=check)

    return statistics.median(timed(run) for _ in range(runs))
