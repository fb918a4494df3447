"""What an unprivileged caller cannot do to hxd (issue 15): pile up threads behind a hung NVML, hold up its stop, or
starve it of descriptors through /metrics. hxd runs on a system-like bus (Debian's system.conf with the shipped
policy, as in test_bus_policy) and the calls come from ``nobody``."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from busctl import as_user, manager
from conftest import StartHxd, system_account, system_like_config, world_traversable_dir

from hxd.core.telemetry.recorder import SAMPLE_TIMEOUT_SEC
from hxd.metrics.server import MAX_CONNECTIONS
from hxsandbox.world import PrivateBus, free_port

BURST = Path(__file__).with_name("call_burst.py")
# hxd's threads while 2,000 SampleTelemetry calls wait on a hung NVML: the main one, the one sampling thread
# (hxd(8), SampleTelemetry) and asyncio's worker for file work (the smoke history at start), and one to spare.
MAX_THREADS = 4
HUNG_NVML = ("-m", "hxsandbox.fakenvml", "--hung", "--")


@pytest.fixture(scope="module")
def system_bus() -> Iterator[PrivateBus]:
    system_account("hxd")  # the policy names the account; the bus resolves it when it starts
    with (
        world_traversable_dir("hxd-limits-bus-") as directory,
        PrivateBus(directory, system_like_config(directory)) as bus,
    ):
        yield bus


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def burst(address: str, member: str, connections: int, calls: int, gap: float = 0.0) -> subprocess.Popen[str]:
    """``connections`` x ``calls`` concurrent calls from ``nobody`` (tests/call_burst.py), a connection's calls
    ``gap`` seconds after the previous one's; returns once all are sent."""
    command = [*as_user("nobody"), sys.executable, str(BURST), address, member, str(connections), str(calls), str(gap)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd="/")
    assert process.stdout is not None and process.stdout.readline() == "sent\n"
    return process


def test_sample_telemetry_with_a_hung_nvml(system_bus: PrivateBus, start_hxd: StartHxd) -> None:
    """2,000 calls wait together on the one hung sample: no thread per call, every caller gets Failed after the
    timeout, and callers still waiting do not hold up SIGTERM.

    The calls go out from 80 callers, 25 each (under the per-caller bound of hxd.bus.limits), over 3 s; past the
    bound on all pending calls hxd answers LimitsExceeded at once, which is the other half of issue 15."""
    hxd = start_hxd(address=system_bus.address, program=HUNG_NVML)  # the timer's first sample hangs at start
    calls = burst(system_bus.address, "SampleTelemetry", 80, 25, gap=0.0375)
    most = 0
    while calls.poll() is None:
        most = max(most, threads(hxd.pid))
        time.sleep(0.1)
    out, _ = calls.communicate()
    result = json.loads(out)
    replies = result["replies"]
    assert set(replies) <= {"org.hxinfra.hxd1.Error.Failed", "org.hxinfra.hxd1.Error.LimitsExceeded"}, replies
    assert sum(replies.values()) == 2000 and replies.get("org.hxinfra.hxd1.Error.Failed", 0) >= 1000, replies
    assert all(
        message.startswith(f"NVML did not answer within {SAMPLE_TIMEOUT_SEC:g} s (the sample in progress was asked")
        or "pending" in message
        for message in result["messages"]
    ), result["messages"]
    assert most <= MAX_THREADS and threads(hxd.pid) <= MAX_THREADS, most

    waiting = burst(system_bus.address, "SampleTelemetry", 8, 25)
    time.sleep(1)  # let hxd read them all
    start = time.monotonic()
    hxd.signal(signal.SIGTERM)
    assert hxd.process is not None and hxd.process.wait(10) == 0
    stopped = time.monotonic() - start
    out, _ = waiting.communicate(timeout=30)
    assert json.loads(out) == {
        "replies": {"org.hxinfra.hxd1.Error.Failed": 200},
        "messages": ["hxd is stopping; no sample was taken"],
    }
    assert stopped < 2, f"SIGTERM took {stopped:.1f} s"
    assert "Traceback" not in hxd.log()


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_metrics_connections(system_bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path) -> None:
    """2,000 idle connections to /metrics: hxd holds at most MAX_CONNECTIONS of them, so its descriptors stay far
    from systemd's default limit of 1,024 (set on it here), and a scrape and a Validate both answer within 1 s."""
    port = free_port()
    env_file = tmp_path / "ollama.env"
    env_file.write_text("OLLAMA_HOST=127.0.0.1:11434\n")
    config = f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    hxd = start_hxd(config, address=system_bus.address, paths={"env_file": env_file})
    resource.prlimit(hxd.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    at_rest = descriptors(hxd.pid)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    idle: list[socket.socket] = []
    try:
        most = 0
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            if len(idle) % 100 == 0:
                most = max(most, descriptors(hxd.pid))
        start = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b'hxd_state{state="running"} 1' in response.read()
        scraped = time.monotonic() - start
        start = time.monotonic()
        validated = manager(system_bus.address, "Validate", "a{sv}", "0")
        took = time.monotonic() - start
        most = max(most, descriptors(hxd.pid))
    finally:
        for connection in idle:
            connection.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert validated.stdout.startswith("sba(ssusss) ")
    assert scraped < 1 and took < 1, (scraped, took)
    assert most <= at_rest + MAX_CONNECTIONS + 4, (at_rest, most)
    log = hxd.log()
    assert "Traceback" not in log
    assert log.count("closed /metrics connections early") == 1, log  # at most one line a minute
