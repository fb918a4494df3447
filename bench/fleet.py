"""``hxctl fleet status|diff`` against 100 simulated nodes, beside 10 nodes in the same run (issue 17): wall time and
hxctl's peak RSS, and what grows with the node count.

Each node is a stand-in ``ssh`` on PATH (as tests/test_fleet.py's) that waits as long as a real node's
``hxctl inventory --json`` takes (measured here first, on the sample node: the remote side's cost) and prints that
node's inventory: the sample node's real inventory, with its own name, and the first of every ten nodes drifted (one
more variable in Ollama's environment). A real fleet adds the network round trips and sshd's own start to each node's
wait; hxctl asks 16 nodes at a time, so the wait is paid once per 16 nodes. A second pass with no wait shows
hxctl's own cost (16 processes at a time, JSON, the diff).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hxd.core.config import load_config
from hxsandbox.samplestore import make_node
from hxsandbox.world import write_config

HXCTL = str(Path(sys.executable).with_name("hxctl"))
STAND_IN = """#!/bin/sh
# ssh OPTIONS -- HOST COMMAND...: wait as the node would, then print its inventory.
while [ "$1" != "--" ]; do shift; done
sleep {delay}
exec cat "{nodes}/$2.json"
"""


def sample_inventory(root: Path) -> tuple[dict[str, object], float]:
    """The sample node's inventory (hxctl --offline inventory --json) and the median seconds it takes (5 runs)."""
    root.mkdir()
    config = write_config(root)
    p = load_config(config).paths
    make_node(p.canonical, p.bulk, p.legacy, p.env_file, migrated=True)
    command = [HXCTL, "--offline", "--config", str(config), "inventory", "--json"]
    times, out = [], ""
    for _ in range(5):
        start = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        times.append(time.perf_counter() - start)
    return json.loads(out), statistics.median(times)


def fleet_of(root: Path, count: int, inventory: dict[str, object], delay: float) -> tuple[Path, dict[str, str]]:
    """A hosts file of ``count`` nodes and the environment whose ssh answers for them."""
    nodes = root / f"nodes-{count}-{delay:g}"
    nodes.mkdir()
    names = [f"llm-{i:03d}" for i in range(1, count + 1)]
    for i, name in enumerate(names):
        facts = json.loads(json.dumps(inventory))
        facts["node"] = name
        if i % 10 == 0:
            facts["environment"]["OLLAMA_KEEP_ALIVE"] = "10m"
        (nodes / f"{name}.json").write_text(json.dumps(facts, sort_keys=True))
    (nodes / "ssh").write_text(STAND_IN.format(delay=f"{delay:.3f}", nodes=nodes))
    (nodes / "ssh").chmod(0o755)
    hosts = nodes / "hosts"
    hosts.write_text("".join(f"{name}\n" for name in names))
    return hosts, {**os.environ, "PATH": f"{nodes}:{os.environ['PATH']}"}


def run(hosts: Path, env: dict[str, str], what: str) -> tuple[float, float]:
    """Wall seconds and hxctl's peak RSS (MiB) of one ``hxctl fleet WHAT --json``."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [HXCTL, "--hosts-file", str(hosts), "fleet", what, "--json"], env=env, stdout=subprocess.PIPE
    )
    out = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    assert os.waitstatus_to_exitcode(status) == (1 if what == "diff" else 0), status  # diff: the drifted nodes
    if what == "diff":
        report = json.loads(out)
        assert report["differences"] and not report["unreachable"], report
    return wall, usage.ru_maxrss / 1024


def measure(hosts: Path, env: dict[str, str], what: str, runs: int) -> tuple[float, float]:
    results = [run(hosts, env, what) for _ in range(runs)]
    return statistics.median(w for w, _ in results), max(m for _, m in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--baseline-nodes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hxd-bench-fleet-") as directory:
        root = Path(directory)
        inventory, remote = sample_inventory(root / "sample")
        print(
            f"one node's hxctl inventory --json: {remote * 1000:.0f} ms (median of 5), {len(json.dumps(inventory))} "
            "bytes of JSON"
        )
        for delay, label in ((remote, "each node waits as its hxctl would"), (0.0, "no wait: hxctl's own cost")):
            print(f"-- {label}")
            counts = (args.baseline_nodes, args.nodes)
            fleets = {count: fleet_of(root, count, inventory, delay) for count in counts}
            for what in ("status", "diff"):
                (base_wall, base_rss), (wall, rss) = (measure(*fleets[count], what, args.runs) for count in counts)
                print(
                    f"fleet {what:6} {args.nodes} nodes {wall:.2f} s, peak RSS {rss:.1f} MiB; "
                    f"{args.baseline_nodes} nodes {base_wall:.2f} s, {base_rss:.1f} MiB: "
                    f"{wall / base_wall:.1f}x the time, {rss / base_rss:.2f}x the memory for "
                    f"{args.nodes / args.baseline_nodes:.0f}x the nodes (median of {args.runs})"
                )


if __name__ == "__main__":
    main()
