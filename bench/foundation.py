"""Foundation benchmarks: bus round trip, exec-to-READY, idle RSS, idle wake-ups. Each figure with its baseline.

Run with ``make bench`` (or ``.venv/bin/python bench/foundation.py [--idle-seconds 60]``). Everything runs on a
private bus in a temporary directory; targets are from the foundation issue and are printed next to each figure.

- Status() round trip vs org.freedesktop.DBus.Peer.Ping sent to hxd itself: the same two bus hops through the same
  library, so the ratio is hxd's own cost (target <= 1.25x); GetId answered by the bus itself (one hop) is reported.
- exec-to-READY=1: from exec to the READY=1 datagram on NOTIFY_SOCKET (target <= 0.5 s), against the exec-to-exit
  time of a bare ``python -c pass`` as the interpreter's floor.
- idle RSS after start (target <= 45 MiB), against a bare interpreter's RSS.
- idle wake-ups over a window: voluntary context switches of the process vs the watchdog pings it must send
  (target: no wake-ups but timers and watchdog), and CPU time used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import run_to_exit
from dbus_fast import Message
from dbus_fast.aio import MessageBus

from hxd.bus import names
from hxsandbox.world import HxdProcess, NotifySocket, PrivateBus, write_config

CLK_TCK = 100


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / CLK_TCK  # utime + stime


class RawClient:
    """A minimal D-Bus client: sends pre-marshalled calls, reads each reply's bytes without decoding the body.

    Every call costs this client the same, so differences between calls are the bus's and hxd's, not a client
    library's (dbus-fast's unmarshaller would add the cost of decoding Status()'s larger reply to the figure).
    """

    def __init__(self, address: str) -> None:
        path = address.split("unix:path=", 1)[1].split(",", 1)[0]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        uid = str(os.getuid()).encode().hex().encode()
        self.sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\n")
        assert self.sock.recv(4096).startswith(b"OK"), "bus refused authentication"
        self.sock.sendall(b"BEGIN\r\n")
        self.call(
            bytes(
                Message(
                    destination=names.DBUS_NAME,
                    path=names.DBUS_PATH,
                    interface=names.DBUS_INTERFACE,
                    member="Hello",
                    serial=1,
                )._marshall(False)
            )
        )

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "bus closed the connection"
            data += chunk
        return data

    def call(self, request: bytes) -> None:
        """Send one call and read messages up to its reply (signals such as NameAcquired are skipped)."""
        self.sock.sendall(request)
        while True:
            header = self._read(16)
            body_len, _serial, fields_len = struct.unpack("<III", header[4:16])
            self._read((fields_len + 7) // 8 * 8 + body_len)
            if header[1] == 3:
                raise AssertionError("call failed")
            if header[1] == 2:
                return


CALLS = {
    "Status": Message(
        destination=names.BUS_NAME,
        path=names.MANAGER_PATH,
        interface=names.MANAGER_INTERFACE,
        member="Status",
        serial=2,
    ),
    "Peer.Ping (hxd)": Message(
        destination=names.BUS_NAME,
        path=names.MANAGER_PATH,
        interface="org.freedesktop.DBus.Peer",
        member="Ping",
        serial=3,
    ),
    "GetId (bus)": Message(
        destination=names.DBUS_NAME, path=names.DBUS_PATH, interface=names.DBUS_INTERFACE, member="GetId", serial=4
    ),
}


def round_trips(address: str, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Interleave the three calls in rounds so drift on the machine affects all of them alike."""
    client = RawClient(address)
    wire = {name: bytes(message._marshall(False)) for name, message in CALLS.items()}
    samples: dict[str, list[float]] = {name: [] for name in CALLS}
    for _ in range(rounds):
        for name, request in wire.items():
            for _ in range(per_round):
                start = time.perf_counter()
                client.call(request)
                samples[name].append(time.perf_counter() - start)
    client.sock.close()
    return samples


async def library_round_trips(address: str, count: int) -> dict[str, float]:
    """The same calls through dbus-fast as the client (it decodes every reply): reported, not the target."""
    client = await MessageBus(bus_address=address).connect()
    medians = {}
    for name, message in CALLS.items():
        times = []
        for _ in range(count):
            start = time.perf_counter()
            await client.call(message)
            times.append(time.perf_counter() - start)
        medians[name] = statistics.median(times)
    client.disconnect()
    return medians


def bare_python_rss_kib() -> int:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    time.sleep(0.5)
    rss = int(proc_status(child.pid)["VmRSS"].split()[0])
    child.kill()
    child.wait()
    return rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=100)
    args = parser.parse_args()
    watchdog_usec = 20_000_000  # pings every 10 s
    ok = True
    with tempfile.TemporaryDirectory(prefix="hxd-bench-") as tmp:
        root = Path(tmp)
        with PrivateBus(root) as bus:
            config = write_config(root)
            ready_times = []
            for run in range(args.starts):
                with NotifySocket(root / f"notify{run}") as notify, HxdProcess(bus.address, config, notify) as hxd:
                    hxd.start()
                    ready_times.append(hxd.wait_ready())
                    hxd.stop()
            ready = statistics.median(ready_times)
            floor = run_to_exit([sys.executable, "-c", "pass"], args.starts)
            ok &= ready <= 0.5
            print(
                f"exec-to-READY=1     median {ready * 1000:7.1f} ms over {args.starts} starts "
                f"(bare python start+exit {floor * 1000:.1f} ms, ratio {ready / floor:.2f}x; target <= 500 ms)"
            )

            with (
                NotifySocket(root / "notify") as notify,
                HxdProcess(bus.address, config, notify, watchdog_usec=watchdog_usec) as hxd,
            ):
                hxd.start()
                hxd.wait_ready()
                samples = round_trips(bus.address, args.rounds, args.per_round)
                medians = {name: statistics.median(values) for name, values in samples.items()}
                for name, values in samples.items():
                    p99 = statistics.quantiles(values, n=100)[98]
                    print(
                        f"round trip {name:<16} median {medians[name] * 1e6:7.1f} us  p99 {p99 * 1e6:7.1f} us "
                        f"({len(values)} calls)"
                    )
                ratio = medians["Status"] / medians["Peer.Ping (hxd)"]
                ok &= ratio <= 1.25
                print(
                    f"Status / Peer.Ping  ratio {ratio:.2f}x (target <= 1.25x); "
                    f"Status / GetId {medians['Status'] / medians['GetId (bus)']:.2f}x"
                )
                library = asyncio.run(library_round_trips(bus.address, args.rounds * args.per_round))
                status_us, ping_us, getid_us = (library[name] * 1e6 for name in CALLS)
                print(
                    f"through dbus-fast   Status {status_us:.1f} us, Peer.Ping {ping_us:.1f} us, "
                    f"GetId {getid_us:.1f} us; "
                    f"Status / Peer.Ping {status_us / ping_us:.2f}x "
                    "(reported, not the target: includes dbus-fast decoding the larger reply)"
                )

                time.sleep(1.0)
                rss = int(proc_status(hxd.pid)["VmRSS"].split()[0])
                bare = bare_python_rss_kib()
                ok &= rss <= 45 * 1024
                print(
                    f"idle RSS            {rss / 1024:7.1f} MiB (bare python {bare / 1024:.1f} MiB, "
                    f"ratio {rss / bare:.2f}x; target <= 45 MiB)"
                )

                before = proc_status(hxd.pid)
                cpu_before = cpu_seconds(hxd.pid)
                time.sleep(args.idle_seconds)
                after = proc_status(hxd.pid)
                cpu = cpu_seconds(hxd.pid) - cpu_before
                wakeups = int(after["voluntary_ctxt_switches"]) - int(before["voluntary_ctxt_switches"])
                expected = args.idle_seconds / (watchdog_usec / 2e6)
                ok &= wakeups <= expected + 1
                print(
                    f"idle {args.idle_seconds:.0f} s           {wakeups} wake-ups (watchdog pings expected: "
                    f"{expected:.0f}, ratio {wakeups / expected:.2f}x), CPU {cpu * 1000:.0f} ms "
                    f"({cpu / args.idle_seconds * 100:.3f} %)"
                )
                hxd.stop()
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
