"""A throwaway world for hxd: a private dbus-daemon, a NOTIFY_SOCKET, and hxd on a config under one directory.

``make demo``, the benchmarks and the tests all run hxd this way, so what the demo shows is what the tests check.
Nothing here touches the system bus or system paths. Each process starts in a process group of its own: a Ctrl-C at
the terminal reaches only the harness, which then stops them in order (hxd before the bus it is on).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from dbus_fast import NameFlag
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

DBUS_DAEMON = "dbus-daemon"
# The Ollama stub ships in the source tree (tools/), not in the package: the sandbox runs from a checkout.
OLLAMA_STUB = Path(__file__).resolve().parents[1] / "tools" / "ollama_stub.py"


class SandboxError(RuntimeError):
    """A sandbox part did not start or stop as expected; the message says which and shows its output."""


class PrivateBus:
    """A dbus-daemon on a socket in ``directory``; ``--print-address`` tells us when it is ready.

    ``config`` is ``"session"`` (permissive, same-uid only) or the path of a bus config file (for a system-like bus
    with the shipped policy, as the policy tests use).
    """

    def __init__(self, directory: Path, config: str | Path = "session") -> None:
        self.socket_path = directory / "bus"
        self.config = config
        self.address = ""
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        config = ["--session"] if self.config == "session" else [f"--config-file={self.config}"]
        self._process = subprocess.Popen(
            [
                DBUS_DAEMON,
                *config,
                "--nofork",
                "--nopidfile",
                "--print-address=1",
                f"--address=unix:path={self.socket_path}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
        )
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], 10)
        line = self._process.stdout.readline().decode().strip() if ready else ""
        if not line:
            self._process.kill()
            _, stderr = self._process.communicate()
            raise SandboxError(f"{DBUS_DAEMON} did not print its address: {stderr.decode(errors='replace').strip()}")
        self.address = line
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)


class NotifySocket:
    """A datagram socket to pass as ``NOTIFY_SOCKET``: collects what a child sends with sd_notify(3)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))

    def wait_for(self, assignment: str, timeout: float = 10.0) -> float:
        """Wait until a datagram carries ``assignment`` (e.g. ``READY=1``); returns the monotonic arrival time."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._sock], [], [], max(remaining, 0))
            if not ready:
                raise SandboxError(f"no {assignment} within {timeout} s; got {self.messages}")
            message = self._sock.recv(4096).decode()
            self.messages.append(message)
            if assignment in message.split("\n"):
                return time.monotonic()

    def close(self) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HxdProcess:
    """hxd as a real process on a private bus, started the way systemd would (NOTIFY_SOCKET, WATCHDOG_USEC).

    ``program``: the interpreter's arguments that run hxd, ``-m hxd`` by default; ``-m hxsandbox.fakenvml ... --``
    runs it on a fake NVML.
    """

    def __init__(
        self,
        address: str,
        config: Path,
        notify: NotifySocket,
        *,
        watchdog_usec: int | None = None,
        extra_env: dict[str, str] | None = None,
        log_path: Path | None = None,
        program: tuple[str, ...] = ("-m", "hxd"),
    ) -> None:
        self.address = address
        self.config = config
        self.notify = notify
        self.watchdog_usec = watchdog_usec
        self.extra_env = extra_env or {}
        self.program = program
        self.log_path = log_path or config.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *args: str) -> Self:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **self.extra_env}
        if self.watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                [sys.executable, *self.program, "--bus", self.address, "--config", str(self.config), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        return self

    def wait_ready(self, timeout: float = 15.0) -> float:
        """Seconds from exec to READY=1."""
        try:
            return self.notify.wait_for("READY=1", timeout) - self.started_at
        except SandboxError:
            raise SandboxError(f"hxd did not become ready; its log:\n{self.log()}") from None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise SandboxError(f"hxd did not stop within {timeout} s; its log:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def descriptors(self) -> int:
        """How many file descriptors hxd has open (/proc/PID/fd)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        """hxd's resident set size in KiB (VmRSS in /proc/PID/status)."""
        return int(Path(f"/proc/{self.pid}/status").read_text().split("VmRSS:", 1)[1].split()[0])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def node_paths(root: Path) -> dict[str, Path]:
    """The seed nodes' layout (llm-01's paths, docs/node-layout.md) under ``root``: hxd.toml's [paths] on a node."""
    return {
        "canonical": root / "mnt/active_llm_models",
        "bulk": root / "data/llm_bulk_storage",
        "legacy": root / "opt/hx-infrastructure/llm-01/models/production",
        "env_file": root / "opt/hx-infrastructure/llm-01/config/ollama/ollama.env",
        "log_dir": root / "var/log/hxd",
        "state_dir": root / "var/lib/hxd",
    }


def write_config(root: Path, extra: str = "", paths: dict[str, Path] | None = None) -> Path:
    """An hxd.toml whose every path lies under ``root`` unless ``paths`` overrides it; ``extra`` is appended (TOML
    tables such as ``[smoke]``)."""
    layout = {**node_paths(root), **(paths or {})}
    lines = ['node = "sandbox"', "", "[paths]", *(f'{key} = "{value}"' for key, value in layout.items()), "", extra]
    path = root / "hxd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 50 ms until it is true; SandboxError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SandboxError(f"{what} not met within {timeout:g} s")
        time.sleep(0.05)


class OllamaStub:
    """tools/ollama_stub.py as a real process: port 0 (the stub prints the port it got), a real store on disk, and
    a behaviour file that can be changed while it runs (load and first-token delays, token rate, failures)."""

    def __init__(self, workdir: Path, models: Path | None, behaviour: dict[str, Any] | None = None) -> None:
        index = len(list(workdir.glob("ollama-stub*.log")))
        self.workdir = workdir
        self.models = models
        self.behaviour = workdir / f"ollama-behaviour{index}.json"
        self.behaviour.write_text(json.dumps(behaviour or {}))
        self.stderr = workdir / f"ollama-stub{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.url = ""

    def start(self, *args: str, env: dict[str, str] | None = None) -> Self:
        """Start and wait for the ``listening on`` line; without ``models`` OLLAMA_HOST/OLLAMA_MODELS decide."""
        if not OLLAMA_STUB.exists():
            raise SandboxError(f"{OLLAMA_STUB} is missing: the Ollama stub runs from a source checkout")
        argv = [sys.executable, str(OLLAMA_STUB), "--behaviour", str(self.behaviour), *args]
        if self.models is not None:
            argv += ["--port", "0", "--models", str(self.models)]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=err, env={**clean, **(env or {})}, process_group=0
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if ready else ""
        match = re.fullmatch(r"listening on (http://[^:]+:(\d+))\n", line)
        if not match:
            self.kill()
            raise SandboxError(f"the Ollama stub did not start ({line!r}): {self.stderr.read_text()}")
        self.url, self.port = match.group(1), int(match.group(2))
        return self

    def set_behaviour(self, data: dict[str, Any]) -> None:
        """Replace the behaviour file atomically; the stub sees the new inode on its next request."""
        tmp = self.behaviour.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.behaviour)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class BusService:
    """D-Bus objects served on a private bus under a well-known name, from a thread with its own event loop, so a
    test or the demo can drive hxd from the outside with blocking tools meanwhile (the stand-ins for polkit and
    systemd use it)."""

    def __init__(self, address: str, name: str, exports: dict[str, ServiceInterface]) -> None:
        self.address = address
        self.name = name
        self.exports = exports
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=name)
        self._bus: MessageBus | None = None

    async def _start(self) -> None:
        self._bus = await MessageBus(bus_address=self.address).connect()
        for path, interface in self.exports.items():
            self._bus.export(path, interface)
        await self._bus.request_name(self.name, NameFlag.DO_NOT_QUEUE)

    async def _stop(self) -> None:
        assert self._bus is not None
        self._bus.disconnect()

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
