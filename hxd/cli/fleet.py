"""``hxctl inventory`` on one node, and ``hxctl fleet status|diff`` across nodes over SSH.

How a node is reached: ``ssh -xT [USER@]HOST hxctl inventory --json``, the node's own hxctl, rather than D-Bus
through ``systemd-stdio-bridge`` as ``busctl --host`` does. dbus-fast has no ``unixexec:`` transport to run a
bridge, and the node's hxctl already knows its config, reads its env file as systemd does and asks its hxd (with
that node's bus policy and polkit): one SSH round trip per node, no agent of hxd's own, no new port. Nodes are
asked in parallel, each with a timeout; a node that cannot be reached is a row of its own, never the end of the
command.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hxd.cli.client import CallFailed, Unreachable
from hxd.cli.common import EXIT_FAILED, EXIT_OK, call_hxd, offline_engine
from hxd.core.errors import Failed, InvalidArgs, Unreadable
from hxd.core.inventory import inventory

_PARALLEL = 16
# A node as --host and the hosts file name it: [USER@]HOST[:PORT], HOST a name or IPv4 address, or an IPv6 address in
# brackets. Nothing may start with '-': ssh would take it for an option (-oProxyCommand=... runs a command).
_NODE = re.compile(
    r"(?:(?P<user>[A-Za-z0-9_][A-Za-z0-9._-]*)@)?"
    r"(?:(?P<host>[A-Za-z0-9_][A-Za-z0-9._-]*)|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_NODE_HELP = "[USER@]HOST[:PORT] (HOST a name, an IPv4 address or [IPv6])"


@dataclass(frozen=True)
class Node:
    """One node to ask: ``name`` as the operator wrote it (the row's label), and what ssh gets."""

    name: str
    destination: str  # [USER@]HOST, for ssh after its "--"
    port: str  # "" for ssh's default (or the ssh_config's)


def _parse_node(text: str) -> Node | None:
    """``text`` as a Node, or None when it is not [USER@]HOST[:PORT] (or its port is not 1..65535)."""
    match = _NODE.fullmatch(text)
    if match is None or (match["port"] is not None and not 0 < int(match["port"]) < 65536):
        return None
    host = match["host"] or match["ipv6"]
    return Node(text, f"{match['user']}@{host}" if match["user"] else host, match["port"] or "")


def add_parsers(commands: Any) -> None:
    inv = commands.add_parser(
        "inventory",
        help="this node's facts as fleet views compare them (config, layout, "
        "Ollama's environment, models by digest, pins, hxd's status)",
    )
    inv.add_argument("--json", action="store_true", help="one JSON object (what hxctl fleet reads)")
    inv.set_defaults(run=run_inventory)
    fleet = commands.add_parser(
        "fleet",
        help="status and drift across nodes, over SSH (hxctl --host NODE ... fleet status|diff)",
        description="Runs `hxctl inventory --json` on each node named by --host (repeatable) and --hosts-file, in "
        "parallel over ssh (BatchMode: keys, not passwords).",
    )
    fleet.add_argument("what", choices=("status", "diff"), help="a table of nodes, or what differs between them")
    fleet.add_argument("--json", action="store_true", help="one JSON object")
    fleet.add_argument("--timeout", type=float, default=20.0, help="seconds per node (default 20)")
    fleet.add_argument("--ssh-config", type=Path, help="an ssh_config(5) file for the connections (ssh -F)")
    fleet.add_argument("--remote-hxctl", default="hxctl", help="hxctl's path on the nodes (default: hxctl)")
    fleet.set_defaults(run=run_fleet)


def add_host_options(options: argparse._ArgumentGroup) -> None:
    """--host and --hosts-file, without defaults (hxctl's main parser sets them; see its global options)."""
    options.add_argument(
        "--host",
        action="append",
        default=argparse.SUPPRESS,
        metavar="[USER@]HOST[:PORT]",
        help="a node for `hxctl fleet` (repeatable)",
    )
    options.add_argument(
        "--hosts-file",
        type=Path,
        default=argparse.SUPPRESS,
        help="nodes for `hxctl fleet`, one [USER@]HOST[:PORT] per line (# comments)",
    )


# --- one node -------------------------------------------------------------------------------------------------


def run_inventory(args: argparse.Namespace) -> int:
    facts = inventory(offline_engine(args).config)
    if not args.offline:  # the files are read here either way; hxd's own state only when hxd is asked
        try:
            facts["hxd"] = dict(call_hxd(args, "Status")[0])
        except (Unreachable, CallFailed) as exc:
            facts["hxd_error"] = str(exc)
    if args.json:
        print(json.dumps(facts, sort_keys=True))
    else:
        for key, value in facts.items():
            print(f"{key}: {json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value}")
    return EXIT_OK


# --- many nodes -----------------------------------------------------------------------------------------------


def run_fleet(args: argparse.Namespace) -> int:
    nodes = _nodes(args)
    if shutil.which("ssh") is None:
        raise Failed("ssh is not installed (no ssh on PATH); hxctl fleet needs it: apt-get install openssh-client")
    with ThreadPoolExecutor(min(len(nodes), _PARALLEL)) as pool:
        answers = dict(zip((n.name for n in nodes), pool.map(lambda node: _ask(node, args), nodes), strict=True))
    if args.what == "status":
        rows = {host: _row(answer) for host, answer in answers.items()}
        if args.json:
            print(json.dumps(rows, sort_keys=True))
        else:
            _print_table(rows)
        return EXIT_OK if all("error" not in row for row in rows.values()) else EXIT_FAILED
    report = diff(answers)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        _print_diff(report)
    return EXIT_OK if report["aligned"] else EXIT_FAILED


def _nodes(args: argparse.Namespace) -> list[Node]:
    """The nodes of --host and --hosts-file, in order, each once; a malformed one is InvalidArgs naming it (and its
    line), before any ssh runs."""
    nodes = []
    for host in args.host:
        node = _parse_node(host)
        if node is None:
            raise InvalidArgs(f"--host {host!r} is not {_NODE_HELP}")
        nodes.append(node)
    if args.hosts_file is not None:
        try:
            text = args.hosts_file.read_text()
        except OSError as exc:
            raise Unreadable(f"{args.hosts_file}: cannot read: {exc.strerror}") from None
        for number, line in enumerate(text.splitlines(), 1):
            host = line.split("#", 1)[0].strip()
            if not host:
                continue
            node = _parse_node(host)
            if node is None:
                raise InvalidArgs(f"{args.hosts_file}:{number}: {host!r} is not {_NODE_HELP}; fix that line")
            nodes.append(node)
    if not nodes:
        raise InvalidArgs("no nodes: name them with --host [USER@]HOST (repeatable) or --hosts-file FILE")
    return list({node.name: node for node in nodes}.values())


def _ask(node: Node, args: argparse.Namespace) -> dict[str, Any]:
    """The node's inventory, or ``{"error": ...}`` saying why it could not be had."""
    command = ["ssh", "-xT", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(int(args.timeout), 1)}"]
    if args.ssh_config is not None:
        command += ["-F", str(args.ssh_config)]
    if node.port:
        command += ["-p", node.port]
    command += ["--", node.destination, args.remote_hxctl, "inventory", "--json"]
    try:
        result = subprocess.run(command, capture_output=True, timeout=args.timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {args.timeout:g} s"}
    except OSError as exc:  # ssh went away since run_fleet looked, or cannot be run
        return {"error": f"cannot run ssh: {exc.strerror}"}
    if result.returncode != 0:
        # ssh's and the node's messages in whatever encoding the node uses (a Latin-1 banner): shown, never fatal.
        stderr = result.stderr.decode(errors="backslashreplace")
        why = (stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return {"error": f"unreachable: {why}" if result.returncode == 255 else why}
    try:
        answer = json.loads(result.stdout.decode())
    except UnicodeDecodeError as exc:
        return {"error": f"the node's answer is not UTF-8 (byte {exc.start}); is something printing at login there?"}
    except ValueError:
        return {"error": "the node's hxctl did not answer with JSON (is hxd installed there?)"}
    if not isinstance(answer, dict):
        return {"error": "the node's hxctl did not answer with a JSON object (is hxd installed there?)"}
    return answer


def _row(answer: dict[str, Any]) -> dict[str, Any]:
    """One table row: what an operator scans first on each node."""
    if "error" in answer:
        return {"error": answer["error"]}
    status = answer.get("hxd", {})
    features = status.get("features", {})
    if "hxd" in answer:
        smoke = status.get("last_smoke", {}).get("models", {})
        slowest = max((m.get("first_token_sec", 0.0) for m in smoke.values()), default=None)
        audit_errors = status.get("last_audit", {}).get("errors")
    else:  # hxd could not be asked: unknown ("?"), not none yet ("-" for None), as hxctl(1) says
        slowest = audit_errors = "?"
    return {
        "version": answer.get("version", "?"),
        "hxd": status.get("state", "not running"),
        "layout": answer.get("layout", {}).get("state", "?"),
        "ollama": answer.get("ollama_unit", "?"),
        "ollama_version": answer.get("ollama_version") or "?",
        "models": len(answer.get("models", {})),
        "smoke_first_token_max_sec": slowest,
        "telemetry": features.get("telemetry", "?"),
        "audit_errors": audit_errors,
        "validate": features.get("validate", "?"),
    }


def _print_table(rows: dict[str, dict[str, Any]]) -> None:
    columns = [
        "version",
        "hxd",
        "layout",
        "ollama",
        "ollama_version",
        "models",
        "smoke_first_token_max_sec",
        "telemetry",
        "audit_errors",
        "validate",
    ]
    headers = [
        "node",
        "hxd",
        "state",
        "layout",
        "ollama",
        "ollama version",
        "models",
        "slowest first token",
        "telemetry",
        "audit errors",
        "last validation",
    ]
    table = [headers]
    for host, row in rows.items():
        if "error" in row:
            table.append([host, row["error"]])
        else:
            table.append([host, *("-" if row[c] is None else str(row[c]) for c in columns)])
    widths = [max(len(r[i]) for r in table if len(r) > i and len(r) == len(headers)) for i in range(len(headers))]
    for line in table:
        if len(line) == len(headers):
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        else:
            print(f"{line[0].ljust(widths[0])}  {line[1]}")


# --- drift ------------------------------------------------------------------------------------------------------


def diff(answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What differs between the nodes that answered: paths and the rest of the config, layout, the environment
    systemd gives Ollama, models by digest, pins, hxd's version and Ollama's (None where it did not answer).
    Unreachable nodes are listed apart."""
    reached = {host: a for host, a in answers.items() if "error" not in a}
    unreachable = {host: a["error"] for host, a in answers.items() if "error" in a}
    flat = {host: _flatten(a) for host, a in reached.items()}
    fields = sorted(set().union(*flat.values())) if flat else []
    differences = []
    for field in fields:
        values = {host: facts.get(field) for host, facts in flat.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            differences.append({"field": field, "values": values})
    return {
        "aligned": not differences and not unreachable,
        "nodes": sorted(reached),
        "unreachable": unreachable,
        "differences": differences,
    }


def _flatten(answer: dict[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {"version": answer.get("version"), "ollama_version": answer.get("ollama_version")}
    for section in ("config", "environment", "models", "pins", "layout"):
        facts.update(_dotted(section, answer.get(section, {})))
    return facts


def _dotted(prefix: str, value: Any) -> dict[str, Any]:
    """``value``'s leaves by dotted name. An empty object has none: a node without pins, models or a readable env
    file differs from the others by the fields it lacks, not by one more field for the empty object itself."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_dotted(f"{prefix}.{key}", item))
        return flat
    return {prefix: value}


def _print_diff(report: dict[str, Any]) -> None:
    for host, error in report["unreachable"].items():
        print(f"{host}: {error}")
    for difference in report["differences"]:
        values = "  ".join(f"{host}={'(missing)' if v is None else v}" for host, v in difference["values"].items())
        print(f"{difference['field']}: {values}")
    nodes = ", ".join(report["nodes"]) or "none"
    count = len(report["differences"])
    verdict = "aligned" if report["aligned"] else f"{count} difference{'' if count == 1 else 's'}, not aligned"
    print(f"fleet: {verdict} (answered: {nodes}; unreachable: {len(report['unreachable'])})", file=sys.stderr)
