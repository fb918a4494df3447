"""hxctl's command line: parse, dispatch, and map every outcome to a documented exit code."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

from hxd import __version__
from hxd import log as hxd_log
from hxd.bus.connection import BUS_HELP
from hxd.cli import audit, fleet, jobs, migrate, smoke, status, telemetry, validate
from hxd.cli.client import CallFailed, Unreachable
from hxd.cli.common import (
    ERROR_EXIT,
    EXIT_BROKEN_PIPE,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from hxd.core.config import DEFAULT_CONFIG_PATH
from hxd.core.errors import HxdError, kind


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hxctl",
        description="Control and inspect hxd, the Ollama node daemon (org.hxinfra.hxd1 on D-Bus).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hxctl {__version__}")
    _add_global_options(parser, hosts=True)
    parser.set_defaults(bus=None, offline=False, config=None, host=[], hosts_file=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status.add_parser(commands)
    validate.add_parsers(commands)
    audit.add_parser(commands)
    telemetry.add_parser(commands)
    migrate.add_parsers(commands)
    smoke.add_parser(commands)
    jobs.add_parsers(commands)
    fleet.add_parsers(commands)
    for name, command in commands.choices.items():
        _add_global_options(command, hosts=name == "fleet")
    return parser


def _add_global_options(parser: argparse.ArgumentParser, hosts: bool) -> None:
    """The options every command takes, before the command or after it (as systemctl and busctl take them); the
    host options only where they mean something, before any command and after ``fleet``.

    None has a default of its own (SUPPRESS): argparse parses what follows the command into a namespace of its
    own and copies all of it over the main one, so a default there would undo the same option given before the
    command. The defaults are the main parser's, set once; given on both sides, the value after the command wins.
    """
    options = parser.add_argument_group("global options (before or after the command)")
    options.add_argument("--bus", default=argparse.SUPPRESS, help=BUS_HELP)
    options.add_argument(
        "--offline",
        action="store_true",
        default=argparse.SUPPRESS,
        help="run hxd's core in this process instead of asking hxd",
    )
    options.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"config for --offline (default: $HXD_CONFIG, else {DEFAULT_CONFIG_PATH})",
    )
    if hosts:
        fleet.add_host_options(options)


def main(argv: list[str] | None = None) -> int:
    """hxctl's exit status. A reader that leaves early (``hxctl status | head -1``) ends hxctl as it ends coreutils'
    tools, which die of SIGPIPE: quietly, with the status a shell reports for that (141). stdout is flushed here,
    not by the interpreter's exit, so that a reader gone by then is caught too.

    stdout is line-buffered: results (stdout) and progress and errors (stderr) often share one pipe (``2>&1``, a
    CI log), and a block-buffered stdout would hold results back until exit, after every later stderr line."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_output()
        return EXIT_BROKEN_PIPE


def _discard_output() -> None:
    """Point stdout and stderr at /dev/null, so that what is still buffered for the pipe that broke (stderr too may
    be merged into it, ``2>&1 | head``) cannot fail again, loudly, when Python flushes it at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _run(argv: list[str] | None) -> int:
    """Parse, dispatch, and map every outcome to a documented exit code."""
    args = _parser().parse_args(argv)
    hxd_log.configure("console", "warning")  # the core's log lines go to stderr; stdout is for results and --json
    if (args.host or args.hosts_file) and args.command != "fleet":
        print("hxctl: --host and --hosts-file name nodes for `hxctl fleet status|diff`", file=sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.run(args)
    except Unreachable as exc:
        print(f"hxctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CallFailed as exc:
        print(f"hxctl: {exc} [{exc.short_name}]", file=sys.stderr)
        return ERROR_EXIT.get(exc.short_name, EXIT_FAILED)
    except HxdError as exc:
        print(f"hxctl: {exc} [{kind(exc)}]", file=sys.stderr)
        return ERROR_EXIT.get(kind(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    return code
