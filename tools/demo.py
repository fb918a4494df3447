"""``make demo``: hxd end to end in a sandbox, with nothing touched outside a temporary directory.

Starts a private dbus-daemon, writes a sandbox hxd.toml, runs hxd on it the way systemd would (NOTIFY_SOCKET,
watchdog), then asks it for its status with hxctl and with busctl, reloads it, and stops it cleanly.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from hxd.bus import names
from hxd.sandbox import HxdProcess, NotifySocket, PrivateBus, write_config

BIN = Path(sys.executable).parent


def show(command: list[str]) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    result = subprocess.run(command, text=True, capture_output=True)
    print((result.stdout + result.stderr).rstrip())
    if result.returncode != 0:
        raise SystemExit(f"demo: the command above failed with exit status {result.returncode}")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hxd-demo-") as tmp:
        root = Path(tmp)
        with PrivateBus(root) as bus, NotifySocket(root / "notify") as notify:
            print(f"private bus: {bus.address}")
            config = write_config(root)
            print(f"sandbox config: {config}")
            with HxdProcess(bus.address, config, notify, watchdog_usec=30_000_000) as hxd:
                hxd.start()
                print(f"hxd ready after {hxd.wait_ready() * 1000:.0f} ms (READY=1 on NOTIFY_SOCKET)")
                show([str(BIN / "hxctl"), "--bus", bus.address, "status"])
                show(
                    [
                        "busctl",
                        f"--address={bus.address}",
                        "call",
                        names.BUS_NAME,
                        names.MANAGER_PATH,
                        names.MANAGER_INTERFACE,
                        "Status",
                    ]
                )
                show(
                    [
                        "busctl",
                        f"--address={bus.address}",
                        "call",
                        names.BUS_NAME,
                        names.MANAGER_PATH,
                        names.MANAGER_INTERFACE,
                        "Reload",
                    ]
                )
                show([str(BIN / "hxctl"), "--offline", "--config", str(config), "status"])
                code = hxd.stop()
                notify.wait_for("STOPPING=1")
                print(f"\nhxd stopped with exit status {code}; sd_notify messages: {notify.messages}")
                print("\nhxd's log:\n" + hxd.log().rstrip())
                return code


if __name__ == "__main__":
    sys.exit(main())
