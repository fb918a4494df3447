"""A fake ``nvidia-smi --query-gpu=... --format=csv`` for the GPUs of hxsandbox.fakenvml: what the real one prints
for the same GPU, so that tests compare hxd (on the fake NVML) with "nvidia-smi" (this) as on a real node.

Written from nvidia-smi's own output (docs/gpu-telemetry.md, "CSV format" and "Absent values"), not from hxd's
formatting, so a mistake in hxd's spelling shows as a difference instead of being copied: memory in MiB rounded up
(v2 ``used``, without the reserved memory), power ``%.2f W``, ``P0``, ``0x`` and 16 hex digits, local time as
``YYYY/MM/DD HH:MM:SS.mmm``, ``[N/A]`` and the other tokens for failed calls. Only the fields hxd queries are known;
another prints nvidia-smi's ``Field "X" is not a valid field to query.`` and exits 2, as nvidia-smi(1) documents for
an invalid argument. ``--no-driver`` prints what nvidia-smi prints without a driver and exits 9
(nvidia-smi(1): "NVIDIA driver is not loaded").

    python -m hxsandbox.fakesmi [--gpus N] [--set ATTR=INT ...] [--no-driver] -- NVIDIA-SMI-ARGS

``install`` writes an executable ``nvidia-smi`` that runs this, for code that spawns nvidia-smi by path.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from hxsandbox.fakenvml import MIB, FakeGpu, h100

NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)
# NVML error code -> the token nvidia-smi prints in the cell (docs/gpu-telemetry.md, "Absent values").
_TOKENS = {
    3: "[N/A]",
    4: "[Insufficient Permissions]",
    13: "[Function Not Found]",
    26: "[Requested functionality has been deprecated]",
}


class _Absent(Exception):
    """The cell's NVML call failed; the argument is the token."""


def _call(gpu: FakeGpu, function: str) -> FakeGpu:
    if function in gpu.errors:
        raise _Absent(_TOKENS.get(gpu.errors[function], "[Unknown Error]"))
    return gpu


def _memory(part: int) -> Callable[[FakeGpu, str], str]:
    def cell(gpu: FakeGpu, driver: str) -> str:
        value = _call(gpu, "nvmlDeviceGetMemoryInfo").memory_bytes[part]
        return f"{(value + MIB - 1) // MIB} MiB"

    return cell


def _watts(attribute: str, function: str) -> Callable[[FakeGpu, str], str]:
    return lambda gpu, driver: f"{getattr(_call(gpu, function), attribute) / 1000:.2f} W"


def _utilization(part: int) -> Callable[[FakeGpu, str], str]:
    def cell(gpu: FakeGpu, driver: str) -> str:
        if _call(gpu, "nvmlDeviceGetUtilizationRates").mig:
            return "[N/A]"
        return f"{gpu.utilization_pct[part]} %"

    return cell


def _optional(value: int | bool | None, text: Callable[[int], str]) -> str:
    return "[N/A]" if value is None else text(int(value))


def _ecc(part: int) -> Callable[[FakeGpu, str], str]:
    def cell(gpu: FakeGpu, driver: str) -> str:
        volatile = _call(gpu, "nvmlDeviceGetTotalEccErrors").ecc_volatile
        return "[N/A]" if volatile is None else str(volatile[part])

    return cell


# field -> (unit in the header, the cell for a GPU and the driver version)
FIELDS: dict[str, tuple[str, Callable[[FakeGpu, str], str]]] = {
    "timestamp": ("", lambda gpu, driver: datetime.now().strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]),
    "index": ("", lambda gpu, driver: "?"),  # replaced by the GPU's position
    "uuid": ("", lambda gpu, driver: _call(gpu, "nvmlDeviceGetUUID").uuid),
    "name": ("", lambda gpu, driver: _call(gpu, "nvmlDeviceGetName").name),
    "pci.bus_id": ("", lambda gpu, driver: _call(gpu, "nvmlDeviceGetPciInfo").pci_bus_id),
    "driver_version": ("", lambda gpu, driver: driver),
    "pstate": ("", lambda gpu, driver: f"P{_call(gpu, 'nvmlDeviceGetPerformanceState').pstate}"),
    "temperature.gpu": ("", lambda gpu, driver: str(_call(gpu, "nvmlDeviceGetTemperature").temperature_c)),
    "utilization.gpu": ("%", _utilization(0)),
    "utilization.memory": ("%", _utilization(1)),
    "memory.total": ("MiB", _memory(0)),
    "memory.used": ("MiB", _memory(2)),
    "memory.free": ("MiB", _memory(3)),
    "power.draw": ("W", _watts("power_mw", "nvmlDeviceGetPowerUsage")),
    "power.limit": ("W", _watts("power_limit_mw", "nvmlDeviceGetPowerManagementLimit")),
    "enforced.power.limit": ("W", _watts("enforced_power_limit_mw", "nvmlDeviceGetEnforcedPowerLimit")),
    "clocks.current.sm": ("MHz", lambda gpu, driver: f"{_call(gpu, 'nvmlDeviceGetClockInfo').clocks_mhz[0]} MHz"),
    "clocks.current.memory": ("MHz", lambda gpu, driver: f"{_call(gpu, 'nvmlDeviceGetClockInfo').clocks_mhz[1]} MHz"),
    "fan.speed": ("%", lambda gpu, driver: _optional(_call(gpu, "nvmlDeviceGetFanSpeed").fan_pct, "{} %".format)),
    "clocks_event_reasons.active": (
        "",
        lambda gpu, driver: f"0x{_call(gpu, 'nvmlDeviceGetCurrentClocksEventReasons').clocks_event_reasons:016x}",
    ),
    "ecc.errors.corrected.volatile.total": ("", _ecc(0)),
    "ecc.errors.uncorrected.volatile.total": ("", _ecc(1)),
    "mig.mode.current": (
        "",
        lambda gpu, driver: _optional(_call(gpu, "nvmlDeviceGetMigMode").mig, ("Disabled", "Enabled").__getitem__),
    ),
}


def render(gpus: Sequence[FakeGpu], query: str, header: bool = True, driver: str = "590.48.01") -> str:
    """What ``nvidia-smi --query-gpu=QUERY --format=csv`` prints for these GPUs (``csv,noheader``: no header)."""
    names = query.split(",")
    lines = [", ".join(f"{name} [{FIELDS[name][0]}]" if FIELDS[name][0] else name for name in names)] if header else []
    for index, gpu in enumerate(gpus):
        cells = []
        for name in names:
            try:
                cells.append(str(index) if name == "index" else FIELDS[name][1](gpu, driver))
            except _Absent as token:
                cells.append(str(token))
        lines.append(", ".join(cells))
    return "".join(line + "\n" for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hxsandbox.fakesmi", description="a fake nvidia-smi")
    parser.add_argument("--gpus", type=int, default=1, help="how many captured H100s (default 1), as fakenvml's")
    parser.add_argument("--set", action="append", default=[], metavar="ATTR=INT", help="change a FakeGpu field")
    parser.add_argument("--no-driver", action="store_true", help="fail as nvidia-smi does without a driver")
    parser.add_argument("smi", nargs=argparse.REMAINDER, help="-- and nvidia-smi's arguments")
    args = parser.parse_args(argv)
    gpus = [h100(index) for index in range(args.gpus)]
    for change in args.set:
        attribute, _, value = change.partition("=")
        for gpu in gpus:
            if not isinstance(getattr(gpu, attribute, None), int):
                parser.error(f"--set {change}: {attribute} is not an integer field of FakeGpu")
            setattr(gpu, attribute, int(value))
    smi = args.smi[1:] if args.smi[:1] == ["--"] else args.smi
    options = dict(arg.split("=", 1) for arg in smi if arg.startswith("--") and "=" in arg)
    if set(smi) != {f"{key}={value}" for key, value in options.items()} or set(options) != {"--query-gpu", "--format"}:
        print(f"fake nvidia-smi: only --query-gpu=FIELDS --format=csv[,noheader] are faked, not {smi}", file=sys.stderr)
        return 2
    if options["--format"] not in ("csv", "csv,noheader"):
        print(f"fake nvidia-smi: --format={options['--format']} is not faked", file=sys.stderr)
        return 2
    if args.no_driver:
        print(NO_DRIVER)
        return 9
    for name in options["--query-gpu"].split(","):
        if name not in FIELDS:
            print(f'Field "{name}" is not a valid field to query.')
            return 2
    sys.stdout.write(render(gpus, options["--query-gpu"], header=options["--format"] == "csv"))
    return 0


def install(directory: Path, *arguments: str) -> Path:
    """An executable ``directory/nvidia-smi`` that runs this fake with ``arguments`` (``--gpus 2``, ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    command = shlex.join([sys.executable, "-m", "hxsandbox.fakesmi", *arguments, "--"])
    script.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    script.chmod(0o755)
    return script


if __name__ == "__main__":
    sys.exit(main())
