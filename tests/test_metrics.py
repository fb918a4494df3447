"""/metrics through socket activation (systemd-socket-activate) and through metrics.listen, read by a real HTTP
client and parsed with prometheus-client's text-format parser."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from busctl import busctl, call_manager, manager, status
from conftest import StartHxd, wait_listening
from prometheus_client.parser import text_string_to_metric_families

from hxd.bus import names
from hxsandbox.samplestore import make_node
from hxsandbox.world import NotifySocket, OllamaStub, PrivateBus, free_port, wait_until, write_config


def scrape(url: str, timeout: float = 15.0) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.headers["Content-Type"], response.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def activated(bus: PrivateBus, tmp_path: Path) -> Iterator[tuple[list[str], NotifySocket, subprocess.Popen[bytes]]]:
    """hxd behind systemd-socket-activate: not running until the first connection, as with hxd.socket; two
    listening addresses, as an operator's drop-in adds one for Prometheus to hxd.socket's loopback one."""
    port, second = free_port(), free_port()
    notify = NotifySocket(tmp_path / "notify")
    config = write_config(tmp_path)
    process = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            f"127.0.0.1:{port}",
            "-l",
            f"127.0.0.2:{second}",
            "-E",
            f"NOTIFY_SOCKET={notify.path}",
            "-E",
            f"PYTHONPATH={os.pathsep.join(sys.path)}",
            sys.executable,
            "-m",
            "hxd",
            "--bus",
            bus.address,
            "--config",
            str(config),
        ],
        stderr=subprocess.PIPE,
    )
    wait_listening(port, 10, process)  # systemd-socket-activate listens (it prints "Listening on ...")
    yield [f"http://127.0.0.1:{port}", f"http://127.0.0.2:{second}"], notify, process
    process.terminate()
    assert process.wait(30) == 0
    notify.close()


def test_a_scrape_starts_hxd_and_gets_metrics(
    activated: tuple[list[str], NotifySocket, subprocess.Popen[bytes]],
) -> None:
    [url, _], notify, _ = activated
    content_type, text = scrape(f"{url}/metrics")
    notify.wait_for("READY=1")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    values = samples(text)
    assert values[("hxd_info", (("node", "sandbox"), ("version", "0.1.0")))] == 1
    assert values[("hxd_state", (("state", "running"),))] == 1
    assert values[("hxd_state", (("state", "degraded"),))] == 0
    assert values[("hxd_feature_available", (("feature", "migrate"),))] == 1
    assert ("hxd_telemetry_up", ()) in values  # GPU samples join hxd's own state on the same page
    assert ("hxd_timer_next_run_timestamp_seconds", (("timer", "smoke"),)) in values
    assert ("hxd_path_writable", (("path", "canonical"),)) in values


def test_every_socket_systemd_passes_is_served(
    activated: tuple[list[str], NotifySocket, subprocess.Popen[bytes]],
) -> None:
    urls, notify, _ = activated
    for url in reversed(urls):  # the second address first: it starts hxd, which must serve it too
        _, text = scrape(f"{url}/metrics")
        assert samples(text)[("hxd_state", (("state", "running"),))] == 1
    notify.wait_for("READY=1")


def test_errors_and_other_paths(activated: tuple[list[str], NotifySocket, subprocess.Popen[bytes]]) -> None:
    [url, _], _, _ = activated
    with pytest.raises(urllib.error.HTTPError) as missing:
        scrape(f"{url}/")
    assert missing.value.code == 404
    request = urllib.request.Request(f"{url}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as post:
        urllib.request.urlopen(request, timeout=10)
    assert post.value.code == 405
    with socket.create_connection((url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1]))) as raw:
        raw.sendall(b"garbage\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400 ")


def test_metrics_listen_without_socket_activation(bus: PrivateBus, start_hxd: StartHxd) -> None:
    port = free_port()
    start_hxd(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    _, text = scrape(f"http://127.0.0.1:{port}/metrics")
    assert samples(text)[("hxd_state", (("state", "running"),))] == 1


def test_metrics_listen_on_a_busy_port_fails_start(start_hxd: StartHxd) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        hxd = start_hxd(f'[metrics]\nlisten = "127.0.0.1:{busy.getsockname()[1]}"\n', wait=False)
        assert hxd.process is not None and hxd.process.wait(15) == 1
    assert "cannot listen for /metrics" in hxd.log()


def test_path_states_and_hxd_path_writable(bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path) -> None:
    """Each configured path shows in Status() as ok, missing (and whether hxd could create it) or why hxd cannot write
    it (a read-only mount, as outside ReadWritePaths= under the unit); hxd_path_writable is 1 only for ok, as its
    HELP says: a missing path is not one hxd can write yet."""
    mount, store = tmp_path / "ro", tmp_path / "store"
    mount.mkdir()
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], check=True)
    try:
        port = free_port()
        layout = {"canonical": store, "bulk": mount / "bulk", "legacy": mount / "production"}
        start_hxd(f'[metrics]\nlisten = "127.0.0.1:{port}"\n', paths=layout)
        paths = status(bus.address)["paths"]
        read_only = f"read-only here ({mount} is on a read-only mount): add it to ReadWritePaths="
        assert paths["canonical"] == "ok"
        assert paths["legacy"].startswith(read_only)  # legacy's directory: the mount itself
        assert paths["bulk"].startswith(f"missing; hxd cannot create it: {read_only}")
        assert paths["log_dir"] == f"missing; hxd can create it under {tmp_path / 'hxd0'}"
        writable = {
            labels[0][1]: value
            for (name, labels), value in samples(scrape(f"http://127.0.0.1:{port}/metrics")[1]).items()
            if name == "hxd_path_writable"
        }
        assert writable == {"canonical": 1, "bulk": 0, "legacy": 0, "env_file": 0, "log_dir": 0, "state_dir": 0}
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_findings_and_jobs_appear_after_they_ran(bus: PrivateBus, start_hxd: StartHxd) -> None:
    port = free_port()
    start_hxd(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    before = samples(scrape(f"http://127.0.0.1:{port}/metrics")[1])
    assert not any(name in ("hxd_audit_findings", "hxd_validation_findings") for name, _ in before)
    manager(bus.address, "Audit", "a{sv}", "0")
    # The sandbox has no env file: Validate fails with Unreadable, and nothing is recorded.
    manager(bus.address, "Validate", "a{sv}", "0", check=False)
    after = samples(scrape(f"http://127.0.0.1:{port}/metrics")[1])
    assert ("hxd_audit_findings", (("severity", "error"),)) in after
    assert not any(name == "hxd_validation_findings" for name, _ in after)
    assert after[("hxd_jobs", (("kind", "audit"), ("state", "completed")))] == 1


def test_last_smoke_run_per_model(bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path) -> None:
    root = tmp_path / "node"
    env_file = root / "ollama.env"
    make_node(root / "canonical", root / "bulk", root / "legacy", env_file, migrated=False)
    with OllamaStub(tmp_path, root / "legacy").start() as stub:
        port = free_port()
        start_hxd(
            f'[metrics]\nlisten = "127.0.0.1:{port}"\n[ollama]\nurl = "{stub.url}"\n',
            paths={"env_file": env_file, "legacy": root / "legacy"},
        )
        [job] = call_manager(bus.address, "RunSmoke", "a{sv}", "0")

        def state() -> str:
            return busctl(bus.address, "get-property", names.BUS_NAME, job, names.JOB_INTERFACE, "State").stdout.strip()

        wait_until(lambda: state() != 's "running"', 60, f"the end of {job}")
        final = state()
        values = samples(scrape(f"http://127.0.0.1:{port}/metrics")[1])
    assert final == 's "completed"'
    models = {labels[0][1] for name, labels in values if name == "hxd_smoke_ok"}
    assert len(models) == 3 and {"llama3.2:3b", "qwen3:1.7b"} < models, models
    for model in models:
        assert values[("hxd_smoke_ok", (("model", model),))] == 1
        assert values[("hxd_smoke_first_token_seconds", (("model", model),))] >= 0
