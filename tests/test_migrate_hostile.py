"""The store's owner against the migration: a process running as ``ollama`` swaps every name it can in the source
store and in bulk storage for symlinks to a root-only file and to a directory outside the trees, in a tight loop,
while hxd migrates, rolls back and prunes; hxd runs as root, and as the hxd account with the capabilities its unit
gives it (CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_FOWNER).

Whatever the attacker wins or loses, nothing outside the configured trees is read into them or written: the
root-only file keeps its bytes, owner, mode and mtime, the outside directory is unchanged, no file in bulk storage
holds the secret, every step ends in success or in hxd's own typed error (never a traceback), and Ollama's unit is
active again at the end.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from busctl import as_user
from migrate_support import make_legacy_node, node_config

from hxd.core.config import Config, dump_config

pytestmark = pytest.mark.usefixtures("ollama_account", "hxd_user")

CHILD = Path(__file__).with_name("migrate_crash_child.py")
SECRET = b"root's secret: must never leave this file\n"

# Runs as ollama until the stop file appears: every file and directory in the trees, in turn, is renamed aside,
# replaced by a symlink (files to the secret, directories to the outside directory), then put back.
ATTACKER = textwrap.dedent(
    """
    import os, sys
    secret, outside, stop, *trees = sys.argv[1:]
    swaps = 0
    while not os.path.exists(stop):
        for tree in trees:
            for top, dirs, files in os.walk(tree):
                for name, target in [*((f, secret) for f in files), *((d, outside) for d in dirs)]:
                    path = os.path.join(top, name)
                    try:
                        os.rename(path, path + ".away")
                    except OSError:
                        continue
                    try:
                        os.symlink(target, path)
                        swaps += 1
                        os.unlink(path)
                    except OSError:
                        pass
                    try:
                        os.rename(path + ".away", path)
                    except OSError:
                        pass
    print(swaps)
    """
)


@pytest.fixture
def outside(world_tmp: Path) -> Iterator[tuple[Path, Path]]:
    """A root-only secret file and a directory outside the trees that looks like a store."""
    secret = world_tmp / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    decoy = world_tmp / "outside"
    for sub in ("blobs", "manifests/registry.ollama.ai/library/llama3.2"):
        (decoy / sub).mkdir(parents=True)
    (decoy / "manifests/registry.ollama.ai/library/llama3.2/3b").write_bytes(SECRET)
    yield secret, decoy


def snapshot(path: Path) -> list[tuple[str, bytes, int, int, int, int]]:
    found = []
    for item in sorted([path, *path.rglob("*")] if path.is_dir() else [path]):
        st = item.lstat()
        data = item.read_bytes() if item.is_file() and not item.is_symlink() else b""
        found.append((str(item), data, st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns))
    return found


def as_hxd() -> list[str]:
    caps = "+dac_override,+chown,+fowner"
    return [*as_user("hxd"), f"--inh-caps={caps}", f"--ambient-caps={caps}"]


def step(config_toml: Path, action: str, account: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CHILD.parent), *sys.path])}
    prefix = as_hxd() if account == "hxd" else []
    return subprocess.run(
        [*prefix, sys.executable, str(CHILD), str(config_toml), action],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def clean_end(result: subprocess.CompletedProcess[str]) -> bool:
    """Success, or one of hxd's typed errors (hxd.core.errors), never a crash of another kind."""
    if result.returncode == 0:
        return True
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    return last.startswith("hxd.core.") or result.returncode == 3


def legacy_node(root: Path) -> tuple[Config, Path]:
    """A legacy node whose store and bulk storage belong to ollama, as on llm-01."""
    config = node_config(root)
    make_legacy_node(config)
    ollama = pwd.getpwnam("ollama")
    for path in [config.paths.legacy, *config.paths.legacy.rglob("*")]:
        os.chown(path, ollama.pw_uid, ollama.pw_gid)
        path.chmod(0o755 if path.is_dir() else 0o644)
    config.paths.bulk.mkdir(parents=True)
    os.chown(config.paths.bulk, ollama.pw_uid, ollama.pw_gid)
    toml = root / "hxd.toml"
    toml.write_text(dump_config(config))
    toml.with_name("ollama.active").touch()
    return config, toml


# What runs before the attack, and what runs under it: a migration, a rollback, a prune.
SCENARIOS = {"migrate": ([], "migrate"), "rollback": (["migrate"], "rollback"), "prune": (["migrate"], "prune")}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("account", ["root", "hxd"])
def test_the_store_owner_cannot_aim_hxd_outside_the_trees(
    world_tmp: Path, outside: tuple[Path, Path], account: str, scenario: str
) -> None:
    secret, decoy = outside
    config, toml = legacy_node(world_tmp / "node")
    before, attacked = SCENARIOS[scenario]
    for action in before:
        assert step(toml, action, account).returncode == 0
    trees = [config.paths.legacy, config.paths.bulk, config.paths.canonical]
    expected = snapshot(secret) + snapshot(decoy)
    stop = world_tmp / "stop"
    attacker = subprocess.Popen(
        ["/usr/bin/python3", "-c", ATTACKER, str(secret), str(decoy), str(stop), *map(str, trees)],
        user="ollama", group="ollama", extra_groups=[], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.2)
        result = step(toml, attacked, account)
    finally:
        stop.touch()
        swaps = int(attacker.communicate(timeout=60)[0])
    assert clean_end(result), result.stderr[-3000:]
    assert swaps > 100, swaps
    assert snapshot(secret) + snapshot(decoy) == expected
    leaked = [
        p for p in config.paths.bulk.rglob("*") if p.is_file() and not p.is_symlink() and SECRET in p.read_bytes()
    ]
    assert leaked == []
    assert toml.with_name("ollama.active").exists(), "Ollama was left stopped"
    outcome = "ok" if result.returncode == 0 else result.stderr.strip().splitlines()[-1][:160]
    print(f"\n{account} {scenario} under {swaps} swaps: {outcome}")
