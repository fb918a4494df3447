"""``ansible-playbook hxinfra.hxd.align`` against 100 simulated nodes, beside 10 nodes in the same run (issue 17): wall
time and peak memory of ansible-playbook and its workers, and what grows with the node count.

Each node is a host with ``ansible_connection: local`` whose ``hxd_environment`` (the playbook's ``environment:``)
names a configuration of its own in HXD_CONFIG and puts a stand-in ``hxctl`` first on PATH. The stand-in answers
each hxctl call the modules make with what the real hxctl printed for that call on a sandbox node (tools/demo.py's
node: hxd, the Ollama stub, the systemd and polkit stand-ins on a private bus), captured at the start of the run, and
each node's inventory carries its own name. The aligned fleet is the playbook's second run (the plan says "already
aligned", nothing changes); the legacy fleet its first (the plan, the layout for the diff, the migration's result).
The stand-in answers at once, so the figures are Ansible's own cost; each real call's time on the sandbox node is
printed first, what a real node adds per node (serial: 1, nothing overlaps).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # tools/demo.py's sandbox node
from demo import sandbox_node
from e2e_ansible import ansible_env, recap

BIN = Path(sys.executable).parent
COLLECTIONS = Path(__file__).resolve().parents[1] / "ansible"
# The hxctl calls the playbook's modules make (their module_utils add --json), as the stand-in's file names.
CALLS = {
    "inventory": ["inventory"],
    "plan": ["migrate", "--dry-run"],
    "migrate": ["migrate"],
    "validate": ["validate", "--store", "--server"],
    "smoke": ["smoke"],
}
STAND_IN = """#!/bin/sh
# hxctl ARGS --json on the node whose configuration HXD_CONFIG names: what the real hxctl printed for that call.
node="${{HXD_CONFIG%/*}}"
case "$*" in
"inventory --json") exec cat "$node/inventory.json" ;;
"migrate --dry-run --json") exec cat "{answers}/plan.json" ;;
"migrate --json") exec cat "{answers}/migrate.json" ;;
"validate --store --server --json") exec cat "{answers}/validate.json" ;;
"smoke --json") exec cat "{answers}/smoke.json" ;;
esac
echo "hxctl (bench stand-in): no answer for: $*" >&2
exit 2
"""


def capture() -> tuple[dict[str, dict[str, str]], dict[str, float]]:
    """What the real hxctl prints for each call on the sandbox node, before ("legacy") and after ("aligned") its
    migration, and the seconds each call took there (the aligned node's; the migration's own)."""
    answers: dict[str, dict[str, str]] = {"legacy": {}, "aligned": {}}
    seconds: dict[str, float] = {}
    order = [("legacy", call) for call in ("inventory", "plan", "migrate")]
    order += [("aligned", call) for call in ("inventory", "plan", "validate", "smoke")]
    with sandbox_node("hxd-bench-playbook-") as node:
        env = {**os.environ, "HXD_BUS": node.address, "HXD_CONFIG": str(node.config)}
        for state, call in order:
            start = time.perf_counter()
            result = subprocess.run(
                [str(BIN / "hxctl"), *CALLS[call], "--json"], env=env, capture_output=True, text=True
            )
            seconds[call] = time.perf_counter() - start
            if result.returncode != 0:
                raise SystemExit(
                    f"bench: hxctl {' '.join(CALLS[call])} --json: exit {result.returncode}\n{result.stderr}"
                )
            answers[state][call] = result.stdout
    assert json.loads(answers["legacy"]["plan"])["changed"] and not json.loads(answers["aligned"]["plan"])["changed"]
    # The first run's gates run after its migration: they see the aligned node.
    answers["legacy"] |= {call: answers["aligned"][call] for call in ("validate", "smoke")}
    return answers, seconds


def fleet_of(root: Path, count: int, state: str, answers: dict[str, str]) -> Path:
    """The inventory of ``count`` nodes in ``state`` with their stand-in hxctl; returns the inventory file."""
    fleet = root / f"{state}-{count}"
    (fleet / "bin").mkdir(parents=True)
    for call, text in answers.items():
        if call != "inventory":
            (fleet / f"{call}.json").write_text(text)
    (fleet / "bin/hxctl").write_text(STAND_IN.format(answers=fleet))
    (fleet / "bin/hxctl").chmod(0o755)
    inventory = json.loads(answers["inventory"])
    hosts = {}
    for i in range(1, count + 1):
        name = f"llm-{i:03d}"
        (fleet / "nodes" / name).mkdir(parents=True)
        (fleet / "nodes" / name / "inventory.json").write_text(json.dumps({**inventory, "node": name}))
        hosts[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "hxd_environment": {
                "HXD_CONFIG": str(fleet / "nodes" / name / "hxd.toml"),
                "PATH": f"{fleet / 'bin'}:{os.environ['PATH']}",
            },
        }
    path = fleet / "inventory.json"
    path.write_text(json.dumps({"hxd_nodes": {"hosts": hosts}}))
    return path


def tree_pss_kib(root: int) -> int:
    """Proportional set size of ``root`` and its descendants, KiB (forked workers share pages with the controller:
    PSS counts each shared page once across them, where RSS would count it in each)."""
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between the listing and the read
        match = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        total += int(match.group(1)) if match else 0
    return total


@dataclass(frozen=True)
class Run:
    wall: float  # seconds, spawn to exit
    largest_rss: float  # MiB: ru_maxrss from wait4, the largest single process of the tree (Linux)
    pss_peak: float  # MiB: the tree's summed PSS, the largest of the samples (every 50 ms)
    pss_median: float  # MiB: the same, the median sample (the steady state while the tasks run)


def play(inventory: Path, home: Path, expect_changed: int) -> Run:
    """One ``ansible-playbook -i INVENTORY hxinfra.hxd.align``; checks every host's recap."""
    env = {**os.environ, **ansible_env(home, COLLECTIONS), "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp")}
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "hxinfra.hxd.align"],
        env=env,
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            samples.append(tree_pss_kib(process.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    out = (process.stdout.read() if process.stdout else b"").decode()
    done.set()
    sampler.join()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    counted = recap(out)
    hosts = json.loads(inventory.read_text())["hxd_nodes"]["hosts"]
    expected = {"ok": 4, "changed": expect_changed, "failed": 0, "unreachable": 0}
    if (
        os.waitstatus_to_exitcode(status) != 0
        or set(counted) != set(hosts)
        or any({key: counts[key] for key in expected} != expected for counts in counted.values())
    ):
        raise SystemExit(f"bench: the playbook did not do what it should on {inventory}:\n{out}")
    return Run(wall, usage.ru_maxrss / 1024, max(samples, default=0) / 1024, statistics.median(samples or [0]) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--baseline-nodes", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    answers, seconds = capture()
    print(
        "the real hxctl on the sandbox node: "
        + ", ".join(f"{' '.join(CALLS[call])} {s * 1000:.0f} ms" for call, s in seconds.items())
        + " (a real node adds its calls' times to each node's turn)"
    )
    counts = (args.baseline_nodes, args.nodes)
    with tempfile.TemporaryDirectory(prefix="hxd-bench-playbook-") as directory:
        root = Path(directory)
        for state, changed, label in (("aligned", 0, "the second run"), ("legacy", 1, "the first run")):
            base, big = (
                [
                    play(fleet_of(root / f"{n}", count, state, answers[state]), root / f"{n}/home-{state}", changed)
                    for n in range(args.runs)
                ]
                for count in counts
            )
            report(f"{state} fleet ({label})", counts, base, big)


def report(title: str, counts: tuple[int, int], base: list[Run], big: list[Run]) -> None:
    """Wall time (median) and memory (the largest over the runs) of the runs on both fleets, and their ratios."""
    (few, many), runs = counts, len(big)
    wall, base_wall = (statistics.median(run.wall for run in runs) for runs in (big, base))
    print(
        f"{title}: {many} nodes {wall:.1f} s, {few} nodes {base_wall:.1f} s: {wall / base_wall:.1f}x the time for "
        f"{many / few:.0f}x the nodes, {(wall - base_wall) / (many - few) * 1000:.0f} ms a node more "
        f"(median of {runs})"
    )
    for what, field in (
        ("largest process (wait4 ru_maxrss)", "largest_rss"),
        ("PSS of the whole tree, peak sample", "pss_peak"),
        ("PSS of the whole tree, median sample", "pss_median"),
    ):
        memory, base_memory = (max(getattr(run, field) for run in group) for group in (big, base))
        print(
            f"  {what}: {many} nodes {memory:.1f} MiB, {few} nodes {base_memory:.1f} MiB: {memory / base_memory:.2f}x"
        )


if __name__ == "__main__":
    main()
