"""``hxctl audit [--fix] [--json]``: owners and modes of everything hxd manages, and the safe repairs."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from dbus_fast import Variant

from hxd.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    call_hxd,
    counted,
    offline_engine,
    plural,
    print_findings,
    run_offline,
    totals,
)
from hxd.core.audit_report import AuditResult

FINDING_KEYS = ("code", "severity", "path", "message", "hint")
CHANGE_KEYS = ("path", "what", "before", "after")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "audit",
        help="check owners and modes of the model store, Ollama's env file and hxd's own files",
        description="Findings are printed as PATH: SEVERITY CODE: MESSAGE, each followed by a fix. With --fix, hxd "
        "first repairs what is safe (modes and owners of files and directories inside the managed paths, never "
        "through a symlink), prints each change it made, then reports what remains.",
    )
    parser.add_argument(
        "--fix", action="store_true", help="repair modes and owners inside the managed paths (polkit: audit-fix)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = _offline(args) if args.offline else _online(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print(result, args.fix)
    return EXIT_FAILED if result["errors"] else EXIT_OK


def _offline(args: argparse.Namespace) -> dict[str, Any]:
    engine = offline_engine(args)
    result = run_offline(engine, lambda: engine.audit(args.fix)).value
    assert isinstance(result, AuditResult)
    findings = [asdict(f) for f in result.report.findings]
    changes = [{key: getattr(change, key) for key in CHANGE_KEYS} for change in result.changes]
    return _summary(findings, changes)


def _online(args: argparse.Namespace) -> dict[str, Any]:
    options = {"fix": Variant("b", True)} if args.fix else {}
    findings, changes = call_hxd(args, "Audit", "a{sv}", [options])
    return _summary(
        [dict(zip(FINDING_KEYS, finding, strict=True)) for finding in findings],
        [dict(zip(CHANGE_KEYS, change, strict=True)) for change in changes],
    )


def _summary(findings: list[dict[str, Any]], changes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"changes": changes, **counted(findings)}


def _print(result: dict[str, Any], fixed: bool) -> None:
    for change in result["changes"]:
        print(f"changed {change['path']}: {change['what']} {change['before']} -> {change['after']}")
    print_findings(result["findings"], lambda f: str(f["path"]))
    changed = f"; {plural(len(result['changes']), 'change')} made" if fixed else ""
    print(f"audit: {totals(result)}{changed}")
