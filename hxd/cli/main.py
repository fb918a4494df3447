"""hxctl's command line: parse, dispatch, print, and map every outcome to a documented exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hxd import __version__
from hxd.bus.connection import BUS_HELP, bus_spec
from hxd.cli.client import CallFailed, Unreachable, call
from hxd.core.config import DEFAULT_CONFIG_PATH, load_config
from hxd.core.engine import Engine
from hxd.core.errors import HxdError
from hxd.core.schedule import iso

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_AUTHORIZED = 4

EXIT_CODES = f"""exit status:
  {EXIT_OK}  success
  {EXIT_FAILED}  the operation failed or found problems (the message says which)
  {EXIT_USAGE}  bad command line or unusable input (a file that cannot be read, an invalid config)
  {EXIT_UNREACHABLE}  hxd cannot be reached (no bus, or hxd is not running); try --offline
  {EXIT_NOT_AUTHORIZED}  not authorized (polkit said no; run as root or ask an administrator)"""

# D-Bus error (short name) -> exit code; anything else is EXIT_FAILED.
_ERROR_EXIT = {"NotAuthorized": EXIT_NOT_AUTHORIZED, "InvalidArgs": EXIT_USAGE, "InvalidConfig": EXIT_USAGE}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hxctl",
        description="Control and inspect hxd, the Ollama node daemon (org.hxinfra.hxd1 on D-Bus).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hxctl {__version__}")
    parser.add_argument("--bus", help=BUS_HELP)
    parser.add_argument("--offline", action="store_true", help="run hxd's core in this process instead of asking hxd")
    parser.add_argument("--config", type=Path, help=f"config for --offline (default {DEFAULT_CONFIG_PATH})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="show hxd's state, features and timers")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _status_online(args: argparse.Namespace) -> dict[str, Any]:
    [status] = asyncio.run(call(bus_spec(args.bus), "Status"))
    return dict(status)


def _status_offline(args: argparse.Namespace) -> dict[str, Any]:
    path = (args.config or DEFAULT_CONFIG_PATH).absolute()
    engine = Engine(path, load_config(path, must_exist=args.config is not None))
    engine.state = "offline"
    status = asdict(engine.status())
    status["start_time"] = iso(status["start_time"])
    status["timers"] = {name: iso(when) for name, when in status["timers"].items()}
    return status


def _print_status(status: dict[str, Any]) -> None:
    print(f"hxd {status['version']} on {status['node']}: {status['state']}")
    if status.get("state_message"):
        print(f"  {status['state_message']}")
    print(f"  config     {status['config_path']}")
    offline = status["state"] == "offline"
    if not offline:
        print(f"  started    {status['start_time']} (up {_duration(status['uptime_sec'])})")
    _print_table("features", status["features"])
    _print_table("paths", status["paths"])
    if not offline:  # timers run only in the daemon
        _print_table("next runs", status["timers"])


def _print_table(title: str, rows: dict[str, str]) -> None:
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


def _status(args: argparse.Namespace) -> int:
    status = (_status_offline if args.offline else _status_online)(args)
    if args.json:
        print(json.dumps(status, sort_keys=True))
    else:
        _print_status(status)
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"status": _status}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except Unreachable as exc:
        print(f"hxctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CallFailed as exc:
        print(f"hxctl: {exc} [{exc.short_name}]", file=sys.stderr)
        return _ERROR_EXIT.get(exc.short_name, EXIT_FAILED)
    except HxdError as exc:
        print(f"hxctl: {exc}", file=sys.stderr)
        return _ERROR_EXIT.get(type(exc).__name__, EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
