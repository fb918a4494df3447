"""The Grafana dashboard hxd ships (packaging/grafana/hxd-fleet.json): every panel's query runs on a real Prometheus
(Debian's) that scrapes a real hxd (on the fake NVML, after a smoke run against the Ollama stub, a validation and an
audit) and loads the shipped rules, and returns series. The e2e runs the same queries against its booted nodes."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from busctl import busctl, call_manager, manager
from conftest import StartHxd, wait_listening

from hxd.bus import names
from hxsandbox.samplestore import make_node
from hxsandbox.world import OllamaStub, PrivateBus, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "packaging/grafana/hxd-fleet.json"
RULES = REPO / "packaging/prometheus/hxd-rules.yml"
FAKE_NVML = ("-m", "hxsandbox.fakenvml", "--gpus", "2", "--")


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_is_per_node_and_shipped() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["instance"]["query"]["query"] == "label_values(hxd_info, instance)"
    assert variables["datasource"]["type"] == "datasource"
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(set(titles)) == len(titles) and len({p["id"] for p in dashboard["panels"]}) == len(titles)
    for title, expr in queries():
        assert 'instance=~"$instance"' in expr, f"{title}: {expr} is not filtered by the node variable"
    for needed in ("utilization", "memory", "power", "temperature", "first_token", "findings", "jobs"):
        assert any(needed in expr for _, expr in queries()), needed
    shipped = (REPO / "packaging/debian/hxd.install").read_text().splitlines()
    assert "packaging/grafana/hxd-fleet.json usr/share/hxd/grafana/" in shipped


def ready(base: str) -> bool:
    """Prometheus answers 503 until its storage and rules are loaded (GET /-/ready)."""
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=5):
            return True
    except OSError:  # urllib's HTTPError (503) and a refused connection alike
        return False


def query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answer: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as error:  # 400 with the parse error in the body
        answer = json.load(error)
    return answer


def test_every_panel_query_returns_series_from_a_real_hxd(bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path) -> None:
    root = tmp_path / "node"
    env_file = root / "ollama.env"
    make_node(root / "canonical", root / "bulk", root / "legacy", env_file, migrated=False)
    with OllamaStub(tmp_path, root / "legacy").start() as stub:
        metrics_port = free_port()
        start_hxd(
            f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n[ollama]\nurl = "{stub.url}"\n',
            paths={"env_file": env_file, "legacy": root / "legacy"},
            program=FAKE_NVML,
        )
        [job] = call_manager(bus.address, "RunSmoke", "a{sv}", "0")

        def state() -> str:
            return busctl(bus.address, "get-property", names.BUS_NAME, job, names.JOB_INTERFACE, "State").stdout.strip()

        wait_until(lambda: state() != 's "running"', 60, f"the end of {job}")
        manager(bus.address, "Audit", "a{sv}", "0")
        manager(bus.address, "Validate", "a{sv}", "0")
        with running_prometheus(tmp_path, metrics_port) as base:
            # Grafana puts the node variable's "All" value (allValue) where $instance is.
            missing = {(title, expr): expr.replace("$instance", ".+") for title, expr in queries()}
            deadline = time.monotonic() + 60
            while missing and time.monotonic() < deadline:
                for key, expr in list(missing.items()):
                    answer = query(base, expr)
                    assert answer["status"] == "success", f"{key}: {answer}"
                    if answer["data"]["result"]:
                        del missing[key]
                time.sleep(0.5)
    assert not missing, f"no series for: {sorted(missing)}"


@contextmanager
def running_prometheus(tmp_path: Path, metrics_port: int) -> Iterator[str]:
    """Debian's prometheus scraping hxd's /metrics every second as job ``hxd``, with the shipped rules; yields its
    base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: apt-get install prometheus (make deps installs it)"
    directory = tmp_path / "prometheus"
    directory.mkdir()
    port = free_port()
    (directory / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        f"scrape_configs:\n  - job_name: hxd\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    command = [
        binary,
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (directory / "log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, 30, process)
        wait_until(lambda: ready(f"http://127.0.0.1:{port}"), 30, "Prometheus ready")  # it listens before it is
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)
