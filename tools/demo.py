"""``make demo``: hxd end to end on a sandbox node, with nothing touched outside a temporary directory.

The sandbox is llm-01 before the alignment: the sample models in a real directory at the legacy path, the seed's
ollama.env pointing there, and the Ollama stub running as "ollama.service" (behind a stand-in for systemd on a
private bus). hxd runs on that bus the way systemd would start it (NOTIFY_SOCKET, watchdog); the demo then asks it
for its status, validates the env file, migrates the store to the canonical layout, validates again, runs the
smoke tests, audits, and stops it. The Ollama account is the current user's, and a polkit stand-in on the private bus
allows hxd's actions to every caller, so no root is needed (the real polkitd and the shipped policy are checked by
tools/e2e).
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from hxd.bus import names
from hxsandbox.polkit import HXD_ACTIONS, MockPolkit
from hxsandbox.samplestore import make_node
from hxsandbox.systemd import MockSystemd, OllamaService
from hxsandbox.world import HxdProcess, NotifySocket, PrivateBus, free_port, node_paths, write_config

BIN = Path(sys.executable).parent


def show(command: list[str], ok: tuple[int, ...] = (0,)) -> None:
    """Run and print a command, its stdout and stderr through one pipe so that they keep their order; an exit status
    outside ``ok`` ends the demo."""
    print(f"\n$ {shlex.join(command)}", flush=True)
    result = subprocess.run(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(result.stdout.rstrip())
    if result.returncode not in ok:
        raise SystemExit(f"demo: the command above failed with exit status {result.returncode}")


def hxctl(address: str, *args: str, ok: tuple[int, ...] = (0,)) -> None:
    show([str(BIN / "hxctl"), "--bus", address, *args], ok)


def busctl(address: str, member: str, *args: str) -> None:
    """The same API without hxctl: busctl calling a Manager method."""
    call = ["call", names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, member, *args]
    show(["busctl", f"--address={address}", *call])


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hxd-demo-") as tmp:
        root = Path(tmp)
        port = free_port()
        user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        config = write_config(root, f'[ollama]\nurl = "http://127.0.0.1:{port}"\nuser = "{user}"\ngroup = "{group}"\n')
        paths = node_paths(root)
        make_node(paths["canonical"], paths["bulk"], paths["legacy"], paths["env_file"], migrated=False)
        print(f"sandbox node llm-01 (before the alignment) in {root}: the store at {paths['legacy']}")
        # The seed's first-token latencies, scaled down tenfold so the demo stays quick.
        behaviour = {
            "models": {
                "*": {"token_rate": 200, "tokens": 16, "load_delay": 0.2},
                "llama3.2:3b": {"first_token_delay": 0.164},
                "qwen3:1.7b": {"first_token_delay": 0.198},
                "mistral-small3.2": {"first_token_delay": 0.544},
            }
        }
        ollama = OllamaService(paths["env_file"], root, port, behaviour=behaviour)
        ollama.start("ollama.service")
        try:
            with (
                PrivateBus(root) as bus,
                MockSystemd(bus.address, ollama),
                MockPolkit(bus.address) as polkit,
                NotifySocket(root / "notify") as notify,
            ):
                polkit.authority.allowed = set(HXD_ACTIONS)
                print(f"private bus: {bus.address}; ollama.service: the Ollama stub on {ollama.url}")
                print("authorization: a stand-in for polkit on the private bus allows hxd's actions to every caller")
                print("  (the real polkitd with the shipped policy is tested in a booted Debian 12 by tools/e2e)")
                with HxdProcess(bus.address, config, notify, watchdog_usec=30_000_000) as hxd:
                    hxd.start()
                    print(f"hxd ready after {hxd.wait_ready() * 1000:.0f} ms (READY=1 on NOTIFY_SOCKET)")
                    tour(bus.address, config)
                    code = hxd.stop()
                    notify.wait_for("STOPPING=1")
                    print(f"\nhxd stopped with exit status {code}; sd_notify: {notify.messages[:3]} ...")
                    print("\nhxd's log:\n" + hxd.log().rstrip())
                    return code
        finally:
            ollama.stop("ollama.service")


def tour(address: str, config: Path) -> None:
    hxctl(address, "status")
    busctl(address, "PlanMigration", "a{sv}", "0")
    hxctl(address, "validate", "--store", "--server", ok=(1,))  # before: OLLAMA_MODELS is not the canonical path
    hxctl(address, "migrate", "--dry-run")
    hxctl(address, "migrate")
    hxctl(address, "validate", "--strict", "--store", "--deep", "--server")
    hxctl(address, "smoke")
    hxctl(address, "audit", ok=(0, 1))
    hxctl(address, "telemetry", ok=(0, 1))  # no GPU in a sandbox: NVML says why
    busctl(address, "Reload")
    show([str(BIN / "hxctl"), "--offline", "--config", str(config), "status"])


if __name__ == "__main__":
    sys.exit(main())
