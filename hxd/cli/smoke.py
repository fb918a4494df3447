"""``hxctl smoke``: run the Ollama smoke tests now and show first-token latency per model and the concurrency check."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dbus_fast import Variant

from hxd.cli.common import EXIT_FAILED, EXIT_OK, offline_engine, run_offline
from hxd.cli.jobs import follow_job, print_progress
from hxd.core.errors import InvalidArgs
from hxd.core.modelref import BadReference, ModelRef, parse_ref
from hxd.core.smoke import SmokeRun


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "smoke",
        help="run the Ollama smoke tests now: first-token latency per model, concurrency",
        description="Loads each model, times the first token of a short fixed prompt, then sends smoke.concurrency "
        "requests at once. Results are appended to <log_dir>/perf/nightly-smoke.log and nightly-smoke.jsonl; a "
        "first-token latency above the median of the model's last 7 runs by more than smoke.regression_margin is a "
        "regression. Progress goes to stderr. Exit status 1 when a model failed or regressed or a parallel request "
        "failed.",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="test this model (repeatable; default: smoke.models, else every OLLAMA_MODEL_* of the env file)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    refs = [_parse(name) for name in args.model]
    report = _offline(args, refs) if args.offline else _online(args)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        _print(report)
    return EXIT_OK if report["ok"] else EXIT_FAILED


def _parse(name: str) -> ModelRef:
    try:
        return parse_ref(name)
    except BadReference as exc:
        raise InvalidArgs(f"--model {exc}") from None


def _offline(args: argparse.Namespace, refs: list[ModelRef]) -> dict[str, Any]:
    engine = offline_engine(args)
    run = run_offline(engine, lambda: engine.smoke(refs or None), print_progress).value
    assert isinstance(run, SmokeRun)
    return run.to_json()


def _online(args: argparse.Namespace) -> dict[str, Any]:
    options = {"models": Variant("as", args.model)} if args.model else {}
    result = follow_job(args.bus, "RunSmoke", "a{sv}", [options])
    report: dict[str, Any] = json.loads(result["runs"])
    return report


def _print(report: dict[str, Any]) -> None:
    ollama = f"Ollama {report['ollama_version']} at {report['url']}" if report["ollama_version"] else report["url"]
    print(f"smoke run {report['time']} on {report['node']} ({ollama}), {report['duration_sec']:.1f} s")
    rows = [("model", "result", "first token", "median7", "load", "total", "tokens/s")]
    failures = []
    for m in report["models"]:
        label = m["name"] or m["model"]
        if not m["ok"]:
            failures.append(f"  {label}: {m['failure']}: {m['reason']}")
            rows.append((label, "FAILED", "", "", "", "", ""))
            continue
        rate = f"{m['tokens_per_sec']:.1f}" if m["tokens_per_sec"] is not None else "-"
        seconds = [_sec(m[key]) for key in ("first_token_sec", "baseline_sec", "load_sec", "total_sec")]
        rows.append((label, "REGRESSION" if m["regression"] else "ok", *seconds, rate))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for line in failures:
        print(line)
    whys = {m["keep_alive_why"] for m in report["models"] if m["keep_alive_why"]}
    for why in sorted(whys):
        print(f"  keep_alive: {why}")
    c = report["concurrency"]
    if c is None:
        print("  concurrency: skipped, no model passed")
    else:
        print(
            f"  concurrency: {c['requests']} x {c['name']}: {c['successes']}/{c['requests']} ok, first token "
            f"p50 {_sec(c['p50_sec'])}, p95 {_sec(c['p95_sec'])}" + (f"; {c['reason']}" if c["reason"] else "")
        )
        if c["served"]:
            print(f"  served: {c['served']}: {c['served_why']}")


def _sec(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"
