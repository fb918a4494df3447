"""kill -9 at random points of a migration, then resume or rollback: at every instant, and afterwards, every
model is readable, byte-identical, from the old path or the new one."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from migrate_support import FakeController, make_legacy_node, node_config, old_store, readable_models, snapshot

from hxd.core.config import Config, dump_config
from hxd.core.envfile_reader import read_envfile
from hxd.core.jobs import JobControl
from hxd.core.migrate import journal as journals
from hxd.core.migrate.runner import Migration
from hxsandbox.migrate import roll_back, run_migration
from hxsandbox.samplestore import make_store

CHILD = Path(__file__).with_name("migrate_crash_child.py")
KILLS = 52


@pytest.fixture
def workdir(world_tmp: Path) -> Iterator[Path]:
    mount = world_tmp / "bulkfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", str(mount)], check=True)
    yield world_tmp
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fresh_node(root: Path, n: int) -> Config:
    base = root / f"node{n}"
    config = node_config(base, root / "bulkfs" / f"bulk{n}")
    make_legacy_node(config)
    rng = random.Random(n)
    make_store(config.paths.legacy, {f"big{i}:1b": [rng.randbytes(3 << 20)] for i in range(4)})
    (base / "hxd.toml").write_text(dump_config(config))
    return config


def start_child(config: Config) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHILD.parent), *sys.path])}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(config.paths.canonical.parents[1] / "hxd.toml")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def test_kill_9_at_random_points_then_resume_or_rollback(workdir: Path) -> None:
    timing = fresh_node(workdir, 0)
    child = start_child(timing)
    started = time.monotonic()
    assert child.wait(60) == 0
    duration = time.monotonic() - started
    rng = random.Random(1234)
    states: Counter[str] = Counter()
    recoveries: Counter[str] = Counter()
    for n in range(1, KILLS + 1):
        config = fresh_node(workdir, n)
        original = readable_models(config.paths.legacy)
        env_before = config.paths.env_file.read_bytes()
        store_before = snapshot(config.paths.legacy)
        child = start_child(config)
        time.sleep(rng.uniform(0, duration))
        child.send_signal(signal.SIGKILL)
        child.wait()
        journal = journals.load(config.paths.state_dir)
        states[journal.state if journal else "none"] += 1
        for name, digest in original.items():  # the invariant, at the instant of the crash
            served = {**readable_models(old_store(config)), **readable_models(config.paths.canonical)}
            assert served.get(name) == digest, (n, name, journal and journal.state)
        if journal is None or not journal.interrupted:
            continue
        if recoveries["resume"] <= recoveries["rollback"]:  # alternate, so that both ways out are exercised
            recoveries["resume"] += 1
            run_migration(Migration(config, FakeController(), JobControl("migrate")), resume=True)
            assert readable_models(config.paths.canonical) == original
            assert read_envfile(config.paths.env_file).environment["OLLAMA_MODELS"] == str(config.paths.canonical)
            assert journals.load(config.paths.state_dir).state == "committed"  # type: ignore[union-attr]
        else:
            recoveries["rollback"] += 1
            roll_back(Migration(config, FakeController(), JobControl("rollback")))
            assert config.paths.env_file.read_bytes() == env_before
            assert not config.paths.legacy.is_symlink() and snapshot(config.paths.legacy) == store_before
            assert not os.path.lexists(config.paths.canonical / "blobs")
        shutil.rmtree(config.paths.canonical.parents[1])
        shutil.rmtree(config.paths.bulk, ignore_errors=True)
    print(f"\nkill -9 landed in: {dict(states)}; recovered by {dict(recoveries)}")
    assert len([s for s in states if s not in ("none", "committed")]) >= 2, states
    assert recoveries["resume"] >= 1 and recoveries["rollback"] >= 1, recoveries
