"""``hxctl telemetry``: sample the GPUs now and show them, in nvidia-smi's fields and units.

Online, hxd samples (``SampleTelemetry()``); with ``--offline``, this process does, through the same core. Either
way the sample is shown, not logged: the CSV log holds the timer's samples only.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hxd.cli.client import CallFailed
from hxd.cli.common import EXIT_FAILED, EXIT_OK, call_hxd, offline_engine
from hxd.core.errors import HxdError
from hxd.core.telemetry.recorder import rows

# (heading, field) of the table; --json has every field.
_COLUMNS = (
    ("GPU", "index"),
    ("NAME", "name"),
    ("PSTATE", "pstate"),
    ("TEMP C", "temperature.gpu"),
    ("UTIL", "utilization.gpu"),
    ("MEM USED", "memory.used"),
    ("MEM TOTAL", "memory.total"),
    ("POWER", "power.draw"),
    ("LIMIT", "enforced.power.limit"),
    ("SM CLOCK", "clocks.current.sm"),
    ("FAN", "fan.speed"),
    ("MIG", "mig.mode.current"),
    ("STATE", "state"),
)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "telemetry",
        help="sample the GPUs now and show them (nvidia-smi's fields and units)",
        description="Exit status 1 when NVML is unavailable or a GPU is lost.",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON array: an object per GPU, every field ([] when NVML is unavailable)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        gpus: list[dict[str, Any]] = _offline(args) if args.offline else call_hxd(args, "SampleTelemetry")[0]
    except (CallFailed, HxdError):
        if args.json:  # a script still reads a JSON array, of no GPUs; the reason goes to stderr, the status says 1
            print("[]")
        raise
    if args.json:
        print(json.dumps(gpus))
    else:
        _print(gpus)
    return EXIT_OK if all(gpu["state"] == "ok" for gpu in gpus) else EXIT_FAILED


def _offline(args: argparse.Namespace) -> list[dict[str, Any]]:
    telemetry = offline_engine(args).telemetry
    try:
        return rows(telemetry.read_now())
    finally:
        telemetry.close()


def _print(gpus: list[dict[str, Any]]) -> None:
    if not gpus:
        print("no GPUs")
        return
    print(f"driver {gpus[0]['driver_version']}, sampled {gpus[0]['timestamp']}")
    table = [[heading for heading, _ in _COLUMNS]]
    table += [[str(gpu.get(field, "")) for _, field in _COLUMNS] for gpu in gpus]
    widths = [max(len(row[column]) for row in table) for column in range(len(_COLUMNS))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
