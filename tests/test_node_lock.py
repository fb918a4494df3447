"""One node, one changer: hxd's jobs and hxctl --offline's exclude each other through the node lock.

Each direction is tested with real processes: hxd on the private bus with a job held in flight (a slow Ollama
stop or slow first tokens), then `hxctl --offline` on the same config; and an offline hxctl that stops itself (SIGSTOP)
the moment it holds the lock, then hxd asked through hxctl, which names the D-Bus error.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from busctl import call_manager, hxctl
from conftest import StartHxd, start_on_node
from migrate_support import readable_models

from hxd.core.config import Config
from hxd.core.migrate import journal as journals
from hxsandbox.systemd import OllamaService
from hxsandbox.world import HxdProcess, PrivateBus, wait_until

SINCE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
# Slow enough that a second job surely starts while the first runs; the smoke's warm-up and measure both wait.
SLOW_MODELS = {"models": {"*": {"first_token_delay": 1.5}}}


def offline(hxd: HxdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return hxctl("--offline", "--config", str(hxd.config), *args)


def busy_in_hxd(kind: str, number: str, hxd: HxdProcess) -> str:
    return (
        rf"{kind} job {number} of hxd \(pid {hxd.pid}\) has been running since {SINCE}; "
        rf"wait for it \(hxctl jobs\) or cancel it \(hxctl cancel {number}\)"
    )


def job_ends(address: str, path: str) -> None:
    def ended() -> bool:
        jobs = call_manager(address, "Status")[0]["jobs"]["data"]
        return " running" not in jobs.get(path, "")

    wait_until(ended, 60, f"the end of {path}")


def test_an_offline_migrate_is_busy_while_hxd_migrates(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService
) -> None:
    hxd = start_on_node(start_hxd, node)
    before = readable_models(node.paths.legacy)
    ollama.stop_delay = 3.0  # holds hxd's job in its stop phase
    path = call_manager(bus.address, "Migrate", "a{sv}", "0")[0]
    second = offline(hxd, "migrate")
    number = path.rsplit("/", 1)[1]
    assert second.returncode == 1, second
    assert re.fullmatch(
        rf"hxctl: another migrate is running: {busy_in_hxd('migrate', number, hxd)} \[Busy\]", second.stderr.strip()
    )
    job_ends(bus.address, path)
    journal = journals.load(node.paths.state_dir)
    assert journal is not None and journal.state == "committed"
    assert readable_models(node.paths.canonical) == before  # the store ends correct


@pytest.fixture
def slow_ollama(ollama: OllamaService) -> OllamaService:
    assert ollama.stub is not None
    ollama.stub.set_behaviour(SLOW_MODELS)
    return ollama


def test_an_offline_smoke_is_busy_while_hxd_runs_one(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, slow_ollama: OllamaService
) -> None:
    hxd = start_on_node(start_hxd, node)
    path = call_manager(bus.address, "RunSmoke", "a{sv}", "0")[0]
    second = offline(hxd, "smoke")
    number = path.rsplit("/", 1)[1]
    assert second.returncode == 1, second
    expected = rf"hxctl: another smoke is running: {busy_in_hxd('smoke', number, hxd)} \[Busy\]"
    assert re.fullmatch(expected, second.stderr.strip()), second.stderr
    fix = offline(hxd, "audit", "--fix")  # a change while a smoke reads the store: refused too
    assert fix.returncode == 1 and "the node is busy: smoke job" in fix.stderr, fix
    job_ends(bus.address, path)
    assert offline(hxd, "audit", "--fix").returncode in (0, 1)  # the node is free again: it runs (findings or not)


@pytest.fixture
def frozen_offline(node: Config) -> Iterator[list[subprocess.Popen[str]]]:
    """Offline hxctl processes a test froze with SIGSTOP; thawed and reaped afterwards, whatever happened."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        process.send_signal(signal.SIGCONT)
        process.wait(60)


# hxctl itself, stopping itself (SIGSTOP) the moment its job holds the node's locks: a job that stays in flight
# for as long as the test needs, however quick its work (an audit of a small tree takes milliseconds).
FROZEN_HXCTL = """
import os, signal
from hxd.core import runner
reserve = runner.JobRunner.reserve
def frozen(self, *args, **kwargs):
    job = reserve(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGSTOP)
    return job
runner.JobRunner.reserve = frozen
from hxd.cli import main
raise SystemExit(main())
"""


def freeze_holding(processes: list[subprocess.Popen[str]], hxd: HxdProcess, *args: str) -> int:
    """Start ``hxctl --offline ARGS`` and wait until it has stopped itself holding its job's locks."""
    process = subprocess.Popen(
        [sys.executable, "-c", FROZEN_HXCTL, "--offline", "--config", str(hxd.config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    processes.append(process)

    def stopped() -> bool:
        assert process.poll() is None, process.communicate()
        return Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"

    wait_until(stopped, 30, f"hxctl --offline {' '.join(args)} to hold the node")
    return process.pid


@pytest.mark.parametrize(
    ("kind", "args", "message"),
    [
        ("migrate", ("migrate",), "another migrate is running: migrate in hxctl --offline"),
        ("smoke", ("smoke",), "another smoke is running: smoke in hxctl --offline"),
        ("audit", ("audit", "--fix"), "another audit is running: audit in hxctl --offline"),
    ],
)
def test_hxd_is_busy_while_an_offline_job_holds_the_node(
    bus: PrivateBus,
    start_hxd: StartHxd,
    node: Config,
    slow_ollama: OllamaService,
    frozen_offline: list[subprocess.Popen[str]],
    kind: str,
    args: tuple[str, ...],
    message: str,
) -> None:
    hxd = start_on_node(start_hxd, node)
    pid = freeze_holding(frozen_offline, hxd, *args)
    refused = hxctl("--bus", bus.address, *args)  # hxctl names the D-Bus error: org.hxinfra.hxd1.Error.Busy
    assert refused.returncode == 1, refused
    assert re.fullmatch(
        rf"hxctl: {message} \(pid {pid}\) has been running since {SINCE}; wait for it or stop that process \[Busy\]",
        refused.stderr.strip(),
    ), refused.stderr
    process = frozen_offline.pop()
    process.send_signal(signal.SIGCONT)
    assert process.wait(120) in (0, 1), process.stderr.read() if process.stderr else ""
