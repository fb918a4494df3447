"""Telemetry benchmark: hxd's cost of one GPU sample, against spawning nvidia-smi for the same fields.

Run with ``.venv/bin/python bench/telemetry.py``. NVML is hxd's fake (hxd.fakenvml), whose calls return stored
values, so the figure is hxd's own overhead per GPU: 18 NVML calls through the error mapping, and nvidia-smi's
formatting (target < 1 ms per GPU); a real NVML adds the driver's time, which nvidia-smi pays as well.

- Baseline, measured in the same run: ``nvidia-smi --query-gpu=<the same fields> --format=csv``, what cron ran
  before hxd, where nvidia-smi exists; elsewhere ``true``, the floor of spawning any process (nvidia-smi costs
  more: it loads NVML and queries the driver).
- Also reported: a whole timer sample (NVML, CSV append with fsync to a temporary directory, state), one
  /metrics rendering of 8 GPUs, and the import of the real pynvml that hxd defers to its first sample.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hxd.core.config import TelemetryConfig
from hxd.core.telemetry import Telemetry, smi
from hxd.core.telemetry.sampler import Sampler
from hxd.fakenvml import FakeNvml, h100

TARGET_PER_GPU_SEC = 1e-3


def per_call(function: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Median over ``repeat`` batches of the seconds one call takes."""
    batches = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            function()
        batches.append((time.perf_counter() - start) / number)
    return statistics.median(batches)


def spawn(command: list[str], number: int = 20) -> float:
    """Median seconds of running ``command`` to completion."""
    times = []
    for _ in range(number):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sampler(gpus: int) -> Sampler:
    nvml = FakeNvml([h100(index) for index in range(gpus)])
    result = Sampler(nvml)
    result.sample()  # initialize NVML outside the measurement, as the daemon does once
    return result


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def main() -> int:
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi:
        baseline_name = "nvidia-smi --query-gpu=... --format=csv"
        baseline = spawn([nvidia_smi, f"--query-gpu={smi.QUERY}", "--format=csv"])
    else:
        baseline_name = "`true` (no nvidia-smi here: the process-spawn floor)"
        baseline = spawn([shutil.which("true") or "/bin/true"])

    one = per_call(sampler(1).sample, 2000)
    eight = per_call(sampler(8).sample, 300)
    with tempfile.TemporaryDirectory(prefix="hxd-bench-") as tmp:
        telemetry = Telemetry(Path(tmp) / "gpu/telemetry.csv", TelemetryConfig(), FakeNvml([h100(i) for i in range(8)]))
        timer_sample = per_call(telemetry.sample, 50)
        scrape = per_call(telemetry.metric_lines, 300)
    imports = subprocess.run(
        [sys.executable, "-c", "import time; t = time.perf_counter(); import pynvml; print(time.perf_counter() - t)"],
        capture_output=True,
        text=True,
        check=True,
    )

    print(f"baseline: {baseline_name}: {ms(baseline)} per run (median of 20)")
    print("| figure | value | per GPU | baseline ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for label, seconds, gpus in (("Sampler.sample(), 1 fake GPU", one, 1), ("Sampler.sample(), 8 fake GPUs", eight, 8)):
        verdict = "ok" if seconds / gpus < TARGET_PER_GPU_SEC else "MISSED"
        ratio = f"{seconds / baseline:.4f}x"
        print(f"| {label} | {ms(seconds)} | {ms(seconds / gpus)} | {ratio} | < 1 ms per GPU: {verdict} |")
    print(f"| Telemetry.sample() with CSV append + fsync, 8 fake GPUs | {ms(timer_sample)} | | | reported |")
    print(f"| metric_lines(), 8 GPUs (one scrape) | {ms(scrape)} | | | reported |")
    print(f"| import pynvml (deferred to the first sample) | {ms(float(imports.stdout))} | | | reported |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
