"""Callers that load hxd on the bus, each as a process of its own (tests/test_bus_abuse.py starts them as ``nobody``
with setpriv, as an unprivileged caller would be; bench/flood.py as itself): a flood of Status() calls, a probe that
times Status() meanwhile, and calls that carry file descriptors. Each prints one JSON object on stdout and exits 0.

    python -m hxsandbox.flood flood ADDRESS --seconds 10 --window 64
    python -m hxsandbox.flood probe ADDRESS --seconds 10 --interval 0.01
    python -m hxsandbox.flood descriptors ADDRESS --calls 1000 --fds 16

They connect as hxctl does (hxd.bus.connection), whose writer waits when a flooder's socket is full rather than drop
the connection (docs/upstream/dbus-fast-eagain.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType

from hxd.bus import names
from hxd.bus.connection import HxdBus, call_method, connect
from hxsandbox.world import SandboxError


def _outcome(reply: Message) -> str:
    """``ok`` for a method return, else the error's name."""
    return (reply.error_name or "?") if reply.message_type == MessageType.ERROR else "ok"


async def _status(bus: HxdBus) -> Message:
    return await call_method(bus, names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, "Status")


async def flood(address: str, seconds: float, window: int) -> dict[str, Any]:
    """Keep ``window`` Status() calls in flight for ``seconds``; the count of each outcome."""
    bus = await connect(address)
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < deadline:
            outcomes[_outcome(await _status(bus))] += 1

    await asyncio.gather(*(caller() for _ in range(window)))
    bus.disconnect()
    return {"outcomes": dict(outcomes)}


async def probe(address: str, seconds: float, interval: float) -> dict[str, Any]:
    """One Status() call at a time, every ``interval`` seconds for ``seconds``; the latencies' median, 99th
    percentile and maximum, in seconds."""
    bus = await connect(address)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        reply = await _status(bus)
        latencies.append(time.perf_counter() - start)
        outcomes[_outcome(reply)] += 1
        await asyncio.sleep(interval)
    bus.disconnect()
    return {
        "outcomes": dict(outcomes),
        "p50": statistics.median(latencies),
        "p99": statistics.quantiles(latencies, n=100, method="inclusive")[98],
        "max": max(latencies),
    }


# What the descriptor calls ask for, in turn: a method that takes none, one that takes one (refused to an
# unprivileged caller before it runs), a member hxd does not have, a property, and a call that expects no reply.
_DESCRIPTOR_CALLS: list[tuple[str, str, str, list[Any], MessageFlag]] = [
    (names.MANAGER_INTERFACE, "Status", "", [], MessageFlag.NONE),
    (names.MANAGER_INTERFACE, "ValidateFile", "ha{sv}", [0, {}], MessageFlag.NONE),
    (names.MANAGER_INTERFACE, "NoSuchMember", "", [], MessageFlag.NONE),
    (names.PROPERTIES_INTERFACE, "Get", "ss", [names.MANAGER_INTERFACE, "Version"], MessageFlag.NONE),
    (names.MANAGER_INTERFACE, "Status", "", [], MessageFlag.NO_REPLY_EXPECTED),
]


async def descriptors(address: str, calls: int, fds: int) -> dict[str, Any]:
    """``calls`` calls of the kinds above in turn, each carrying ``fds`` descriptors (of /dev/null), one at a time;
    then one plain Status() so that hxd has handled every call before this returns."""
    bus = await connect(address)
    attached = [os.open("/dev/null", os.O_RDONLY) for _ in range(fds)]
    outcomes: Counter[str] = Counter()
    for number in range(calls):
        interface, member, signature, body, flags = _DESCRIPTOR_CALLS[number % len(_DESCRIPTOR_CALLS)]
        message = Message(
            destination=names.BUS_NAME,
            path=names.MANAGER_PATH,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
            unix_fds=attached,
            flags=flags,
        )
        if flags & MessageFlag.NO_REPLY_EXPECTED:
            await bus.send(message)
            outcomes["sent"] += 1
        else:
            reply = await bus.call(message)
            assert reply is not None
            outcomes[f"{member}: {_outcome(reply)}"] += 1
    outcomes[f"final Status: {_outcome(await _status(bus))}"] += 1
    for fd in attached:
        os.close(fd)
    bus.disconnect()
    return {"outcomes": dict(outcomes)}


def start(*args: str, prefix: Sequence[str] = ()) -> subprocess.Popen[str]:
    """``python -m hxsandbox.flood ARGS`` as a process of its own, behind ``prefix`` (setpriv's, to run it as another
    account), from / (which every account may enter)."""
    command = [*prefix, sys.executable, "-m", "hxsandbox.flood", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    """What a caller from ``start`` printed, once it has exited 0."""
    stdout, stderr = process.communicate(timeout=120)
    if process.returncode != 0:
        raise SandboxError(f"{process.args!r} exited with {process.returncode}: {stderr.strip()}")
    return dict(json.loads(stdout))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m hxsandbox.flood", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("flood", "probe", "descriptors"):
        command = commands.add_parser(name)
        command.add_argument("address")
        if name == "descriptors":
            command.add_argument("--calls", type=int, default=1000)
            command.add_argument("--fds", type=int, default=16)
        else:
            command.add_argument("--seconds", type=float, default=10.0)
    commands.choices["flood"].add_argument("--window", type=int, default=64)
    commands.choices["probe"].add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args()
    if args.command == "flood":
        result = asyncio.run(flood(args.address, args.seconds, args.window))
    elif args.command == "probe":
        result = asyncio.run(probe(args.address, args.seconds, args.interval))
    else:
        result = asyncio.run(descriptors(args.address, args.calls, args.fds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
