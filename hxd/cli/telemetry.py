"""``hxctl telemetry``: sample the GPUs now and show them, in nvidia-smi's fields and units.

Online, hxd samples (``SampleTelemetry()``); with ``--offline``, this process does, through the same core. Either
way the sample is shown, not logged: the CSV log holds the timer's samples only.

``--compare`` is the node's GPU self-check: the same sample against nvidia-smi run here, outside hxd's sandbox,
field by field (hxd.core.telemetry.compare); when only nvidia-smi can sample, it names the unit's setting to suspect.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hxd.cli.client import CallFailed
from hxd.cli.common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, call_hxd, offline_engine
from hxd.core.errors import HxdError
from hxd.core.telemetry import compare
from hxd.core.telemetry.recorder import rows
from hxd.core.telemetry.sampler import Unavailable

# --compare's own outcomes, beside hxctl's (0 agree; 1 a field or a GPU differs; 3 hxd not reachable).
EXIT_SANDBOX = 6
EXIT_NOTHING_TO_COMPARE = 7
COMPARE_EXIT_CODES = f"""exit status of --compare:
  {EXIT_OK}  hxd and nvidia-smi agree on every GPU and field
  {EXIT_FAILED}  they differ: the lines marked <- name the field and show both values
  {EXIT_SANDBOX}  hxd cannot sample the GPUs but nvidia-smi can: the message names the hxd.service setting to
     suspect and how to confirm it
  {EXIT_NOTHING_TO_COMPARE}  nvidia-smi is missing or fails here (no driver, no GPU): nothing to compare with
  {EXIT_UNREACHABLE}  hxd cannot be reached (use --offline to compare this process's sample instead)"""

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
        epilog=COMPARE_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help="print one JSON array: an object per GPU, every field ([] when NVML is unavailable)",
    )
    output.add_argument(
        "--compare",
        action="store_true",
        help="compare hxd's sample (taken inside its sandbox) with nvidia-smi's, field by field",
    )
    parser.add_argument(
        "--nvidia-smi",
        default="nvidia-smi",
        metavar="PATH",
        help="the nvidia-smi that --compare runs (default: from PATH)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args)
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


def _compare(args: argparse.Namespace) -> int:
    """hxd's sample (or this process's, with --offline), then nvidia-smi's, then the verdict; see COMPARE_EXIT_CODES.

    hxd is asked first: when it cannot sample, nvidia-smi (run by root) may create missing device nodes that hxd
    could not, and a second run then tells the two causes apart."""
    where = "this process" if args.offline else "hxd"
    try:
        ours: list[dict[str, Any]] | None = _offline(args) if args.offline else call_hxd(args, "SampleTelemetry")[0]
        inside = ""
    except CallFailed as exc:  # hxd's Unavailable; any other error (LimitsExceeded, ...) is hxctl's usual one
        if exc.short_name != "Failed":
            raise
        ours, inside = None, str(exc)
    except Unavailable as exc:  # --offline
        ours, inside = None, str(exc)
    try:
        table = compare.run_nvidia_smi(args.nvidia_smi)
    except compare.SmiFailed as exc:
        print(f"hxctl: nothing to compare with: {exc}", file=sys.stderr)
        if inside:
            print(f"hxctl: {where} cannot sample either: {inside}", file=sys.stderr)
        return EXIT_NOTHING_TO_COMPARE
    if ours is None:
        gpus = f"{len(table.gpus)} GPU{'s' * (len(table.gpus) != 1)}"
        print(f"{where} cannot sample the GPUs, but nvidia-smi can ({gpus}): {inside}")
        if not args.offline:  # this process has no sandbox: its reason says what to do
            for line in compare.explain(compare.diagnose(inside)):
                print(line)
        return EXIT_SANDBOX
    result = compare.compare(table, ours)
    for line in result.lines:
        print(line)
    return EXIT_FAILED if result.differences else EXIT_OK


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
