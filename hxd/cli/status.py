"""``hxctl status``: hxd's state, features, paths and timers."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from hxd.cli.common import EXIT_OK, call_hxd, offline_engine
from hxd.core.schedule import iso


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("status", help="show hxd's state, features, paths and timers")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    status = _offline(args) if args.offline else dict(call_hxd(args, "Status")[0])
    if args.json:
        print(json.dumps(status, sort_keys=True))
    else:
        _print(status)
    return EXIT_OK


def _offline(args: argparse.Namespace) -> dict[str, Any]:
    status = asdict(offline_engine(args).status())
    status["start_time"] = iso(status["start_time"])
    status["timers"] = {name: iso(when) for name, when in status["timers"].items()}
    return status


def _print(status: dict[str, Any]) -> None:
    print(f"hxd {status['version']} on {status['node']}: {status['state']}")
    if status.get("state_message"):
        print(f"  {status['state_message']}")
    print(f"  config     {status['config_path']}")
    offline = status["state"] == "offline"
    if not offline:
        print(f"  started    {status['start_time']} (up {_duration(status['uptime_sec'])})")
    details = status.get("feature_details", {})
    _table(
        "features", {name: f"{state}  {details.get(name, '')}".rstrip() for name, state in status["features"].items()}
    )
    _table("paths", status["paths"])
    if not offline:  # timers run only in the daemon
        _table("next runs", status["timers"])


def _table(title: str, rows: dict[str, str]) -> None:
    print(f"  {title}")
    width = max((len(name) for name in rows), default=0)
    for name, value in rows.items():
        print(f"    {name:<{width}}  {value}")
    if not rows:
        print("    (none)")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(minutes)
    return " ".join([*parts, f"{secs}s"])
