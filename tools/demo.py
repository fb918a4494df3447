"""``make demo`` and ``make sandbox``: hxd end to end on a sandbox node, with nothing touched outside a temporary
directory.

The sandbox is llm-01 before the alignment (docs/node-layout.md): the sample models in a real directory at the
legacy path, llm-01's ollama.env pointing there, and the Ollama stub running as "ollama.service" (behind a
stand-in for systemd on a private bus). hxd runs on that bus the way systemd would start it (NOTIFY_SOCKET,
watchdog), with its metrics on a free port of 127.0.0.1. The Ollama account is the current user's, and a polkit
stand-in on the private bus allows hxd's actions to every caller, so no root is needed (the real polkitd and the
shipped policy are checked by tools/e2e).

The demo asks hxd for its status, validates the env file, migrates the store to the canonical layout, validates
again, runs the smoke tests, audits, and stops it. ``--keep`` (``make sandbox``) sets up the same node, prints what
to export to reach it with hxctl, busctl and curl, and keeps it until SIGINT (Ctrl-C) or SIGTERM.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from hxd.bus import names
from hxsandbox.polkit import HXD_ACTIONS, MockPolkit
from hxsandbox.samplestore import make_node
from hxsandbox.systemd import MockSystemd, OllamaService
from hxsandbox.world import HxdProcess, NotifySocket, PrivateBus, free_port, node_paths, write_config

BIN = Path(sys.executable).parent
MANAGER = (names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE)
# llm-01's first-token latencies (docs/node-layout.md, "Models and measurements"), a tenth as long.
BEHAVIOUR = {
    "models": {
        "*": {"token_rate": 200, "tokens": 16, "load_delay": 0.2},
        "llama3.2:3b": {"first_token_delay": 0.164},
        "qwen3:1.7b": {"first_token_delay": 0.198},
        "mistral-small3.2": {"first_token_delay": 0.544},
    }
}


@dataclass(frozen=True)
class Node:
    """The running sandbox node: how to reach its hxd, and hxd itself."""

    address: str
    config: Path
    metrics_url: str
    hxd: HxdProcess
    notify: NotifySocket


@contextmanager
def sandbox_node(prefix: str) -> Iterator[Node]:
    """Set up the sandbox node with hxd ready on it; when the block ends, however it ends, hxd gets SIGTERM, the
    stand-ins, the Ollama stub and the bus stop, and the temporary directory is removed."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        port, metrics_port = free_port(), free_port()
        user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        config = write_config(
            root,
            f'[ollama]\nurl = "http://127.0.0.1:{port}"\nuser = "{user}"\ngroup = "{group}"\n\n'
            f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n',
        )
        paths = node_paths(root)
        make_node(
            paths["canonical"],
            paths["bulk"],
            paths["legacy"],
            paths["env_file"],
            migrated=False,
            ollama_host=f"127.0.0.1:{port}",
        )
        print(f"sandbox node llm-01 (before the alignment) in {root}: the store at {paths['legacy']}")
        ollama = OllamaService(paths["env_file"], root, port, behaviour=BEHAVIOUR)
        ollama.start("ollama.service")
        try:
            with (
                PrivateBus(root) as bus,
                MockSystemd(bus.address, ollama),
                MockPolkit(bus.address) as polkit,
                NotifySocket(root / "notify") as notify,
                HxdProcess(bus.address, config, notify, watchdog_usec=30_000_000) as hxd,
            ):
                polkit.authority.allowed = set(HXD_ACTIONS)
                print(f"private bus: {bus.address}; ollama.service: the Ollama stub on {ollama.url}")
                print("authorization: a stand-in for polkit on the private bus allows hxd's actions to every caller")
                print("  (the real polkitd with the shipped policy is tested in a booted Debian 12 by tools/e2e)")
                hxd.start()
                print(f"hxd ready after {hxd.wait_ready() * 1000:.0f} ms (READY=1 on NOTIFY_SOCKET)")
                try:
                    yield Node(bus.address, config, f"http://127.0.0.1:{metrics_port}/metrics", hxd, notify)
                finally:
                    hxd.stop()
        finally:
            ollama.stop("ollama.service")


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
    show(["busctl", f"--address={address}", "call", *MANAGER, member, *args])


def demo() -> int:
    with sandbox_node("hxd-demo-") as node:
        tour(node.address, node.config)
        code = node.hxd.stop()
        node.notify.wait_for("STOPPING=1")
        print(f"\nhxd stopped with exit status {code}; sd_notify: {node.notify.messages[:3]} ...")
        print("\nhxd's log:\n" + node.hxd.log().rstrip())
        return code


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


def keep() -> int:
    """The sandbox for a person: the node stays up until SIGINT or SIGTERM, then is torn down as the demo's is."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    with suppress(KeyboardInterrupt), sandbox_node("hxd-sandbox-") as node:
        print("\nsandbox ready; in another shell:")
        print(f'  export HXD_BUS={shlex.quote(node.address)} PATH={shlex.quote(str(BIN))}:"$PATH"')
        print(f'  hxctl status; busctl --address="$HXD_BUS" call {" ".join(MANAGER)} Status')
        print(f"  curl -s {node.metrics_url}")
        print("Ctrl-C here (or SIGTERM) stops hxd, the stand-ins, the stub and the bus, and removes the directory.")
        sys.stdout.flush()
        # Nothing reads hxd's sd_notify messages from here on: with the socket closed they fail, which hxd ignores,
        # where they would fill its queue (net.unix.max_dgram_qlen, as few as 10) and then block hxd in send().
        node.notify.close()
        while True:
            signal.pause()
    print("\nsandbox stopped and removed")
    return 0


def _stop(signum: int, frame: object) -> None:
    """The first SIGINT or SIGTERM ends the sandbox; later ones are ignored so that they cannot cut its teardown
    short."""
    for ignored in (signal.SIGINT, signal.SIGTERM):
        signal.signal(ignored, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hxd on a sandbox node: the demo, or a node to try things on")
    parser.add_argument("--keep", action="store_true", help="keep the node running until Ctrl-C (make sandbox)")
    return keep() if parser.parse_args(argv).keep else demo()


if __name__ == "__main__":
    sys.exit(main())
