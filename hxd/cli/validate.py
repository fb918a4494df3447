"""``hxctl validate`` (compiler-style findings) and ``hxctl env`` (what systemd passes, as JSON)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dbus_fast import Variant

from hxd.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, call_hxd, counted, offline_engine, print_findings, totals
from hxd.core.envfile_reader import open_envfile, read_envfile
from hxd.core.envfile_writer import format_assignment
from hxd.core.errors import Unreadable
from hxd.core.validate import Options

_FLAGS = ("strict", "store", "deep", "server")


def add_parsers(commands: Any) -> None:
    validate = commands.add_parser(
        "validate",
        help="check Ollama's env file as systemd reads it, against the layout, store and server",
        description="Findings are printed as FILE:LINE: SEVERITY CODE: MESSAGE, each followed by a fix. "
        "Without FILE, hxd checks the configured env file (paths.env_file).",
    )
    validate.add_argument("file", nargs="?", type=Path, help="env file to check (default: the configured one)")
    validate.add_argument("--strict", action="store_true", help="unpinned tags (none, or latest) are errors")
    validate.add_argument("--store", action="store_true", help="check each model's manifest and blobs on disk")
    validate.add_argument("--deep", action="store_true", help="also recompute every blob's sha256 (slow)")
    validate.add_argument("--server", action="store_true", help="check the models against Ollama's /api/tags")
    validate.add_argument("--json", action="store_true", help="print one JSON object")
    validate.set_defaults(run=run_validate)
    env = commands.add_parser(
        "env",
        help="print the environment systemd passes for each EnvironmentFile= (no daemon needed)",
        description="For each FILE: the variables a unit with EnvironmentFile=FILE gets, exactly as systemd 252 "
        "reads it. With --json, one object per file and line: file, loads, environment, ignored_assignments, error.",
    )
    env.add_argument("files", nargs="+", type=Path, metavar="FILE")
    env.add_argument("--json", action="store_true", help="one JSON object per file, one per line")
    env.set_defaults(run=run_env)


def run_validate(args: argparse.Namespace) -> int:
    flags = {name: bool(getattr(args, name)) for name in _FLAGS}
    report = _validate_offline(args, Options(**flags)) if args.offline else _validate_online(args, flags)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        _print_report(report)
    return EXIT_FAILED if report["errors"] else EXIT_OK


def _validate_offline(args: argparse.Namespace, options: Options) -> dict[str, Any]:
    engine = offline_engine(args)
    if args.file is None:
        report = engine.validate(options)
    else:
        fd = open_envfile(args.file)
        try:
            report = engine.validate(options, fd, str(args.file))
        finally:
            os.close(fd)
    findings = [asdict(f) for f in report.findings]
    return _summary(report.file, report.loads, findings)


def _validate_online(args: argparse.Namespace, flags: dict[str, bool]) -> dict[str, Any]:
    options = {name: Variant("b", value) for name, value in flags.items() if value}
    if args.file is None:
        file, loads, findings = call_hxd(args, "Validate", "a{sv}", [options])
    else:
        fd = open_envfile(args.file)
        try:
            options["name"] = Variant("s", str(args.file))
            file, loads, findings = call_hxd(args, "ValidateFile", "ha{sv}", [0, options], unix_fds=[fd])
        finally:
            os.close(fd)
    keys = ("code", "severity", "line", "key", "message", "hint")
    return _summary(file, loads, [dict(zip(keys, finding, strict=True)) for finding in findings])


def _summary(file: str, loads: bool, findings: list[dict[str, Any]]) -> dict[str, Any]:
    return {"file": file, "loads": loads, **counted(findings)}


def _print_report(report: dict[str, Any]) -> None:
    file = report["file"]
    print_findings(report["findings"], lambda f: f"{file}:{f['line']}" if f["line"] else file)
    print(f"{file}: {totals(report)}")


def run_env(args: argparse.Namespace) -> int:
    worst = EXIT_OK
    for path in args.files:
        try:
            env = read_envfile(path)
            entry = {
                "file": str(path),
                "loads": env.loads,
                "environment": env.environment,
                "ignored_assignments": env.ignored_assignments,
                "error": env.error,
            }
            worst = max(worst, EXIT_OK if env.loads else EXIT_FAILED)
        except Unreadable as exc:
            entry = {"file": str(path), "loads": False, "environment": {}, "ignored_assignments": [], "error": str(exc)}
            worst = EXIT_USAGE
        if args.json:
            print(json.dumps(entry, ensure_ascii=False))
        else:
            _print_env(entry, several=len(args.files) > 1)
    return worst


def _print_env(entry: dict[str, Any], several: bool) -> None:
    if several:
        print(f"# {entry['file']}")
    if entry["error"]:
        print(f"# not loaded: {entry['error']}")
    for key, value in entry["environment"].items():
        print(format_assignment(key, value))
    for ignored in entry["ignored_assignments"]:
        print(f"# ignored by systemd: {ignored}")
