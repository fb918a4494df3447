"""Telemetry benchmark: hxd's cost of one GPU sample, against spawning nvidia-smi for the same fields.

Run with ``.venv/bin/python bench/telemetry.py``. NVML is hxd's fake (hxsandbox.fakenvml), whose calls return stored
values, so the figure is hxd's own overhead per GPU: 18 NVML calls through the error mapping, and nvidia-smi's
formatting (target < 1 ms per GPU); a real NVML adds the driver's time, which nvidia-smi pays as well.

Each figure is printed with its ratio to a baseline measured in the same run:

- ``Sampler.sample()`` (1 and 8 fake GPUs) vs ``nvidia-smi --query-gpu=<the same fields> --format=csv``, what cron
  ran before hxd, where nvidia-smi exists (it queries the GPUs this machine has, however many: not 8 unless there are
  8); elsewhere ``true``, the floor of spawning any process (nvidia-smi costs more: it loads NVML and queries the
  driver).
- ``Telemetry.sample()``, the timer's whole sample of 8 fake GPUs (NVML, CSV append with fsync to a temporary
  directory, state), vs cron's whole job: ``sh -c '<that nvidia-smi> --format=csv,noheader >> a CSV file'``, or
  ``sh -c 'true >> a CSV file'`` without nvidia-smi.
- ``metric_lines()`` of 8 GPUs (the GPU part of one /metrics scrape) vs the rest of that page:
  ``hxd.metrics.page.render()`` of a just-started hxd's status on a sandbox config, without GPU lines.
- ``import pynvml``, which hxd defers to its first sample (median over fresh interpreters), vs the start and exit of
  a bare interpreter (``python -c pass``).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import per_call, run_to_exit

from hxd.core.config import TelemetryConfig, load_config
from hxd.core.engine import Engine
from hxd.core.telemetry import smi
from hxd.core.telemetry.recorder import Telemetry
from hxd.core.telemetry.sampler import Sampler
from hxd.metrics.gpus import metric_lines
from hxd.metrics.page import render
from hxsandbox.fakenvml import FakeNvml, h100
from hxsandbox.world import write_config

TARGET_PER_GPU_SEC = 1e-3
IMPORT = "import time; t = time.perf_counter(); import pynvml; print(time.perf_counter() - t)"


def sampler(gpus: int) -> Sampler:
    nvml = FakeNvml([h100(index) for index in range(gpus)])
    result = Sampler(nvml)
    result.sample()  # initialize NVML outside the measurement, as the daemon does once
    return result


def smi_gpus(nvidia_smi: str) -> int:
    result = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, check=False)
    return sum(line.startswith("GPU ") for line in result.stdout.splitlines())


def import_pynvml(runs: int = 10) -> float:
    """Median seconds of ``import pynvml`` in a fresh interpreter (the module cache is cold each time)."""
    times = []
    for _ in range(runs):
        child = subprocess.run([sys.executable, "-c", IMPORT], capture_output=True, text=True, check=True)
        times.append(float(child.stdout))
    return statistics.median(times)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def main() -> int:
    nvidia_smi = shutil.which("nvidia-smi")
    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory(prefix="hxd-bench-") as tmp:
        root = Path(tmp)
        cron_csv = root / "cron.csv"
        if nvidia_smi:
            gpus = smi_gpus(nvidia_smi)
            smi_name = f"nvidia-smi --query-gpu=... --format=csv, querying the {gpus} real GPU(s) here (not 8)"
            smi_short = f"nvidia-smi, {gpus} GPU(s)"
            smi_spawn = run_to_exit([nvidia_smi, f"--query-gpu={smi.QUERY}", "--format=csv"], check=False)
            cron_name = f"sh -c 'nvidia-smi ... --format=csv,noheader >> file', {gpus} real GPU(s)"
            cron_short = f"cron's nvidia-smi >> file, {gpus} GPU(s)"
            cron_line = f"{nvidia_smi} --query-gpu={smi.QUERY} --format=csv,noheader >> {cron_csv}"
        else:
            smi_name = "`true` (no nvidia-smi here: the process-spawn floor)"
            smi_short = "spawning `true`"
            smi_spawn = run_to_exit([true])
            cron_name = "sh -c 'true >> file' (no nvidia-smi here)"
            cron_short = "`sh -c 'true >> file'`"
            cron_line = f"{true} >> {cron_csv}"
        cron = run_to_exit(["sh", "-c", cron_line], check=False)

        one = per_call(sampler(1).sample, 2000)
        eight = per_call(sampler(8).sample, 300)
        telemetry = Telemetry(root / "gpu/telemetry.csv", TelemetryConfig(), FakeNvml([h100(i) for i in range(8)]))
        timer_sample = per_call(telemetry.sample, 50)
        scrape = per_call(lambda: metric_lines(telemetry.view), 300)
        (root / "node").mkdir()
        config = write_config(root / "node")
        status = Engine(config, load_config(config)).status()
        page = per_call(lambda: render(status), 300)
    imports = import_pynvml()
    bare = run_to_exit([sys.executable, "-c", "pass"])

    print(f"baselines, measured in this run (median of 20 runs each unless said):\n- {smi_name}: {ms(smi_spawn)}")
    print(f"- cron's job, {cron_name}: {ms(cron)}")
    print(f"- render() of hxd's own /metrics page, no GPU lines: {ms(page)} (median of 7 batches of 300)")
    print(f"- bare `python -c pass`, start to exit: {ms(bare)}")
    print()
    print("| figure | value | per GPU | baseline (same run) | ratio | target |")
    print("| --- | --- | --- | --- | --- | --- |")
    ok = True
    for label, seconds, gpus in (("Sampler.sample(), 1 fake GPU", one, 1), ("Sampler.sample(), 8 fake GPUs", eight, 8)):
        met = seconds / gpus < TARGET_PER_GPU_SEC
        ok &= met
        print(
            f"| {label} | {ms(seconds)} | {ms(seconds / gpus)} | {smi_short}: {ms(smi_spawn)} | "
            f"{seconds / smi_spawn:.2f}x | < 1 ms per GPU: {'ok' if met else 'MISSED'} |"
        )
    rows = (
        ("Telemetry.sample() with CSV append + fsync, 8 fake GPUs", timer_sample, cron_short, cron),
        ("metric_lines(), 8 GPUs (the GPU part of one scrape)", scrape, "render() without GPU lines", page),
        ("import pynvml (deferred to the first sample)", imports, "`python -c pass`", bare),
    )
    for label, seconds, baseline_name, baseline in rows:
        print(f"| {label} | {ms(seconds)} | | {baseline_name}: {ms(baseline)} | {seconds / baseline:.2f}x | reported |")
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
