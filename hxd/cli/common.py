"""What every hxctl command shares: exit codes, reaching hxd (or the core with --offline), error mapping."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hxd.bus.connection import bus_spec
from hxd.cli.client import call
from hxd.core.config import DEFAULT_CONFIG_PATH, load_config
from hxd.core.engine import Engine
from hxd.core.jobs import Listener
from hxd.core.runner import Job, Outcome

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_AUTHORIZED = 4
EXIT_REFUSED = 5
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for coreutils killed by SIGPIPE (13)

EXIT_CODES = f"""exit status:
  {EXIT_OK}  success (validate: no errors; warnings allowed)
  {EXIT_FAILED}  the operation failed or found problems (validate: errors found)
  {EXIT_USAGE}  bad command line or unusable input (a file that cannot be read, an invalid config)
  {EXIT_UNREACHABLE}  hxd cannot be reached (no bus, or hxd is not running); try --offline
  {EXIT_NOT_AUTHORIZED}  not authorized (polkit said no; run as root or ask an administrator)
  {EXIT_REFUSED}  refused: hxd looked and will not do it as things are; nothing was changed (the message says
     what to change first)
  {EXIT_BROKEN_PIPE}  the reader of the output left early (hxctl ... | head), as for coreutils; nothing is printed"""

# hxd error (short D-Bus name or core class name) -> exit code; anything else is EXIT_FAILED.
ERROR_EXIT = {
    "NotAuthorized": EXIT_NOT_AUTHORIZED,
    "InvalidArgs": EXIT_USAGE,
    "InvalidConfig": EXIT_USAGE,
    "Unreadable": EXIT_USAGE,
    "Refused": EXIT_REFUSED,
}


def call_hxd(
    args: argparse.Namespace,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    unix_fds: list[int] | None = None,
) -> list[Any]:
    """One call to hxd's Manager on the bus the command line (or HXD_BUS) names."""
    return asyncio.run(call(bus_spec(args.bus), member, signature, body, unix_fds))


def offline_engine(args: argparse.Namespace) -> Engine:
    """hxd's engine in this process (``--offline``), on ``--config``, ``$HXD_CONFIG`` or the default config file.
    Its jobs take the same node lock as hxd's, so the two never run one at once."""
    named = args.config or (Path(os.environ["HXD_CONFIG"]) if os.environ.get("HXD_CONFIG") else None)
    path: Path = (named or DEFAULT_CONFIG_PATH).absolute()
    engine = Engine(path, load_config(path, must_exist=named is not None), program="hxctl --offline")
    engine.state = "offline"
    return engine


class _Progress:
    """A JobObserver that hands a job's progress to a listener (hxctl's progress lines)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def job_started(self, job: Job) -> None:
        pass

    def job_changed(self, job: Job, fields: frozenset[str]) -> None:
        self.listener(job.state, fields)

    def job_ended(self, job: Job) -> None:
        pass


def run_offline(engine: Engine, start: Callable[[], Job], listener: Listener | None = None) -> Outcome:
    """Run one of the engine's jobs in this process to its end and return its outcome, or raise its error.
    Ctrl-C asks the job to stop at its next safe point, as Cancel does on the bus."""
    if listener is not None:
        engine.runner.observers.append(_Progress(listener))
    job = start()
    while True:
        try:
            job.ended.wait()
            break
        except KeyboardInterrupt:
            if not job.control.cancel():
                print("hxctl: the job is past the point where it can stop; it will finish", file=sys.stderr)
    if job.error is not None:
        raise job.error
    assert job.outcome is not None
    return job.outcome


def counted(findings: list[dict[str, Any]]) -> dict[str, Any]:
    """``findings`` with their counts by severity, the shape hxctl prints as JSON for validate and audit."""
    count = {severity: sum(f["severity"] == severity for f in findings) for severity in ("error", "warning", "info")}
    return {"findings": findings, "errors": count["error"], "warnings": count["warning"], "infos": count["info"]}


def print_findings(findings: list[dict[str, Any]], where: Callable[[dict[str, Any]], str]) -> None:
    """Compiler-style: ``WHERE: SEVERITY CODE: MESSAGE`` and the fix on the next line."""
    for f in findings:
        print(f"{where(f)}: {f['severity']} {f['code']}: {f['message']}")
        print(f"    {'hint' if f['severity'] == 'info' else 'fix'}: {f['hint']}")


def totals(result: dict[str, Any]) -> str:
    """``2 errors, 1 warning, 0 notes``."""
    return ", ".join(
        plural(result[key], noun) for key, noun in (("errors", "error"), ("warnings", "warning"), ("infos", "note"))
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
