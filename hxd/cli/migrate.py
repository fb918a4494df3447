"""``hxctl migrate`` and ``hxctl rollback``: the migration job with a progress bar (rate, ETA) and a summary.

Online, hxd runs the job and hxctl follows its PropertiesChanged (subscribed before the call, so nothing is
missed); ``--offline`` runs the same core in this process, with systemctl for the service.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbus_fast import Variant

from hxd.cli.common import EXIT_OK, call_hxd, offline_engine, run_offline
from hxd.cli.jobs import follow_job, print_progress
from hxd.core.engine import Engine
from hxd.core.jobs import JobState
from hxd.core.runner import Job

_PATHS = ("source", "canonical", "bulk", "legacy", "env_file")


def add_parsers(commands: Any) -> None:
    migrate = commands.add_parser(
        "migrate",
        help="move the model store to the canonical layout, every blob verified (a job; Ctrl-C cancels)",
        description="Copies the store to bulk storage while Ollama serves, verifies every blob, stops Ollama, "
        "switches the canonical symlinks, the legacy path and OLLAMA_MODELS, starts Ollama and checks that it "
        "serves the same models; a failed check rolls back. Paths default to hxd.toml's [paths].",
    )
    group = migrate.add_mutually_exclusive_group()
    group.add_argument(
        "--dry-run", action="store_true", help="show the plan and every reason to refuse; change nothing"
    )
    group.add_argument("--resume", action="store_true", help="finish a migration that was interrupted")
    group.add_argument(
        "--prune-source",
        action="store_true",
        help="after a committed migration, delete the old store (no rollback afterwards)",
    )
    for name in _PATHS:
        migrate.add_argument(
            f"--{name.replace('_', '-')}",
            metavar="PATH",
            help=f"override paths.{name}"
            if name != "source"
            else "the store to migrate (default: what OLLAMA_MODELS names)",
        )
    migrate.add_argument("--json", action="store_true", help="print the result (or the plan) as one JSON object")
    migrate.set_defaults(run=run_migrate)
    rollback = commands.add_parser(
        "rollback", help="undo the last migration (interrupted, or committed and not pruned)"
    )
    rollback.add_argument("--json", action="store_true", help="print the result as one JSON object")
    rollback.set_defaults(run=run_rollback)


def run_migrate(args: argparse.Namespace) -> int:
    overrides = {name: str(Path(value).absolute()) for name in _PATHS if (value := getattr(args, name))}
    if args.dry_run:
        result = offline_engine(args).plan_migration(overrides) if args.offline else _plan_online(args, overrides)
        _print_migration(result, args.json, title="plan (nothing was changed)")
    elif args.prune_source:
        _print(_job(args, "PruneSource", {}, lambda engine: engine.prune()), args.json)
    else:
        options: dict[str, Variant] = {k: Variant("s", v) for k, v in overrides.items()}
        if args.resume:
            options["resume"] = Variant("b", True)
        result = _job(args, "Migrate", options, lambda engine: engine.migrate(overrides, resume=args.resume))
        _print_migration(result, args.json)
    return EXIT_OK


def run_rollback(args: argparse.Namespace) -> int:
    _print(_job(args, "Rollback", {}, lambda engine: engine.rollback()), args.json)
    return EXIT_OK


def _plan_online(args: argparse.Namespace, overrides: dict[str, str]) -> dict[str, Any]:
    [plan] = call_hxd(args, "PlanMigration", "a{sv}", [{k: Variant("s", v) for k, v in overrides.items()}])
    return _decoded(plan)


def _decoded(result: dict[str, Any]) -> dict[str, Any]:
    """Lists and tables travel as JSON text in a job's Result (hxd.bus.jobs.to_variants): back to values."""
    return {k: json.loads(v) if isinstance(v, str) and v[:1] in "[{" else v for k, v in result.items()}


def _job(
    args: argparse.Namespace, member: str, options: dict[str, Variant], offline: Callable[[Engine], Job]
) -> dict[str, Any]:
    listener = ProgressBar() if sys.stderr.isatty() else print_progress
    if args.offline:
        engine = offline_engine(args)
        result = run_offline(engine, lambda: offline(engine), listener).result
    else:
        result = _decoded(follow_job(args.bus, member, "a{sv}", [options], listener))
    if isinstance(listener, ProgressBar):
        listener.close()
    return result


class ProgressBar:
    """``copy [########------] 52%  1.04/2.00 GiB  1.2 GiB/s  ETA 1s`` on a terminal, one line per phase."""

    def __init__(self) -> None:
        self.phase = ""
        self.samples: list[tuple[float, int]] = []

    def __call__(self, state: JobState, changed: frozenset[str]) -> None:
        if "phase" in changed and state.phase != self.phase:
            if self.phase:
                sys.stderr.write("\n")
            self.phase, self.samples = state.phase, []
        now = time.monotonic()
        self.samples = [*self.samples[-20:], (now, state.bytes_done)]
        rate = _rate(self.samples)
        done = int(state.progress * 20)
        line = f"{state.phase:<10} [{'#' * done}{'-' * (20 - done)}] {state.progress:4.0%}"
        if state.bytes_total:
            line += f"  {state.bytes_done / 2**30:.2f}/{state.bytes_total / 2**30:.2f} GiB"
            if rate > 0:
                eta = (state.bytes_total - state.bytes_done) / rate
                line += f"  {rate / 2**30:.2f} GiB/s  ETA {eta:.0f}s"
        elif state.message:
            line += f"  {state.message}"
        sys.stderr.write("\r" + line[:120].ljust(120))
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def _rate(samples: list[tuple[float, int]]) -> float:
    (t0, b0), (t1, b1) = samples[0], samples[-1]
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def _print_migration(result: dict[str, Any], as_json: bool, title: str = "") -> None:
    """A migration's plan or result. For people: the table without ``changed`` (true there, and odd under "nothing
    was changed"), or on a node already aligned the line that says so."""
    if as_json:
        _print(result, as_json)
    elif result["changed"]:
        _print({key: value for key, value in result.items() if key != "changed"}, as_json, title)
    else:
        print(result["message"])


def _print(result: dict[str, Any], as_json: bool, title: str = "") -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    if title:
        print(title)
    width = max(len(key) for key in result)
    for key, value in result.items():
        if isinstance(value, list):
            print(f"  {key:<{width}}  {value[0] if value else '(none)'}")
            for item in value[1:]:
                print(f"  {'':<{width}}  {item}")
        else:
            print(f"  {key:<{width}}  {value}")
