"""A kill at every file-changing system call of a migration and of a rollback, in both modes (bulk storage on the
source's filesystem, where blobs are hashed and linked, and on another, where they are copied).

The kills are placed with strace's fault injection (``-e inject=SYSCALL:signal=KILL:when=N``, man 1 strace): a
first traced run lists every system call of the step, and each one that changes a file (a create, write, rename,
link, unlink, mkdir, rmdir, symlink, chown, chmod or utime; opens only when they create or write) becomes a point.
A call that failed (mkdir of an existing directory) is no point: a kill there leaves what a kill at the next call
leaves. strace counts per thread, so the step runs with one copy worker (tests/migrate_crash_child.py) and the order of
calls is the same in every run. At each point the node is built afresh and killed there twice: once to resume,
once to roll back. Afterwards, each time:

- the store that the env file hands Ollama has every model, every blob hashing to its name;
- the old layout is intact (contents, owners, modes, mtimes of every file and directory), or the new one complete;
- Ollama's unit is active (a flag file stands in for systemd's state, which outlives the killed process);
- no temporary name is left anywhere (staging, ``.part``, ``.new``, ``.hxd-tmp``);
- a fresh migrate plans (or finds the node already aligned).
At the instant of each kill, every model is readable from the old path or the new one.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from migrate_support import make_legacy_node, node_config, old_store, readable_models

from hxd.core.config import Config, dump_config
from hxd.core.envfile_reader import read_envfile
from hxd.core.migrate import journal as journals
from hxd.core.migrate.plan import AlreadyAligned, make_plan, targets

pytestmark = pytest.mark.usefixtures("ollama_account")

CHILD = Path(__file__).with_name("migrate_crash_child.py")
COMPILED = [CHILD.parents[1] / "hxd", CHILD.parents[1] / "hxsandbox", CHILD.parent]
CHANGING = [
    *("openat", "openat2", "creat", "write", "pwrite64", "writev", "ftruncate"),
    *("rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir"),
    *("symlink", "symlinkat", "fchown", "fchownat", "chown", "lchown", "fchmod", "fchmodat", "chmod", "utimensat"),
]
_OPEN_WRITING = re.compile(r"O_CREAT|O_WRONLY|O_RDWR|O_TRUNC")
_CALL = re.compile(r"^(?:\d+\s+)?(\w+)\((.*)$")
_TEMPORARY = re.compile(r"\.hxd-staging$|\.part$|\.new$|\.hxd-tmp$")


@dataclass(frozen=True)
class Node:
    config: Config
    toml: Path
    root: Path

    @property
    def flag(self) -> Path:
        return self.toml.with_name("ollama.active")


@pytest.fixture
def tmpfs(world_tmp: Path) -> Iterator[Path]:
    mount = world_tmp / "bulkfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def build(world_tmp: Path, name: str, bulk: Path | None) -> Node:
    """A legacy node whose store belongs to ollama (0644 files, 0755 directories), as Ollama leaves it."""
    root = world_tmp / name
    config = node_config(root, bulk)
    for path in (root, config.paths.bulk):
        shutil.rmtree(path, ignore_errors=True)
    make_legacy_node(config)
    account = pwd.getpwnam("ollama")
    for path in [config.paths.legacy, *config.paths.legacy.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid)
        path.chmod(0o755 if path.is_dir() else 0o644)
    toml = root / "hxd.toml"
    toml.write_text(dump_config(config))
    node = Node(config, toml, root)
    node.flag.touch()
    return node


def run_step(node: Node, action: str, kill: tuple[str, int] | None = None, trace: Path | None = None) -> Step:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(CHILD.parent), *sys.path]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }
    command = [sys.executable, str(CHILD), str(node.toml), action]
    if trace is not None:
        command = ["strace", "-f", "-qq", "-y", "-o", str(trace), "-e", f"trace={','.join(CHANGING)}", *command]
    elif kill is not None:
        name, n = kill
        command = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={name}", "-e",
                   f"inject={name}:signal=KILL:when={n}", *command]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    return Step(done.returncode, done.stderr.strip()[-1500:])


@dataclass(frozen=True)
class Step:
    returncode: int
    stderr: str


def points(node: Node, action: str) -> list[tuple[str, int]]:
    """Every file-changing call of ``action`` on ``node``, as (system call, its count among that call's runs)."""
    log = node.root.parent / f"{node.root.name}-{action}.strace"
    traced = run_step(node, action, trace=log)
    assert traced.returncode == 0, traced.stderr
    seen: Counter[str] = Counter()
    found = []
    for line in log.read_text().splitlines():
        match = _CALL.match(line)
        if not match:
            continue
        name, args = match.groups()
        seen[name] += 1
        if re.search(r"\) += -1 E", args):
            continue  # a call that failed changed nothing: a kill there is the kill at the next call
        if name in ("openat", "openat2", "creat") and not _OPEN_WRITING.search(args.split(",", 2)[-1]):
            continue
        if name in ("write", "pwrite64", "writev") and str(node.root.parent) not in args.split(",", 1)[0]:
            continue  # the log on stderr
        found.append((name, seen[name]))
    return found


def metadata(tree: Path) -> dict[str, tuple[object, ...]]:
    """Every file and directory of a store: content digest (files), owner, group, mode, mtime."""
    result: dict[str, tuple[object, ...]] = {}
    for path in sorted([tree, *tree.rglob("*")]):
        st = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        result[str(path.relative_to(tree))] = (content, st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns)
    return result


def temporaries(node: Node) -> list[str]:
    return [
        str(path)
        for tree in (node.root, node.config.paths.bulk)
        if tree.exists()
        for path in tree.rglob("*")
        if _TEMPORARY.search(path.name)
    ]


def served(node: Node) -> dict[str, str]:
    models = read_envfile(node.config.paths.env_file).environment["OLLAMA_MODELS"]
    return readable_models(Path(models))


def plans(node: Node) -> None:
    """A fresh migrate plans: a plan, or "already aligned" (after a commit); never a refusal."""
    with contextlib.suppress(AlreadyAligned):
        make_plan(node.config, targets(node.config, {}))


def check_rolled_back(node: Node, store: dict[str, tuple[object, ...]], env: bytes, where: str) -> None:
    p = node.config.paths
    assert p.env_file.read_bytes() == env, where
    assert p.legacy.is_dir() and not p.legacy.is_symlink(), where
    assert metadata(p.legacy) == store, where
    assert not (p.bulk / "blobs").exists() and not (p.bulk / "manifests").exists(), where


def check_point(world_tmp: Path, mode: str, bulk: Path | None, action: str, point: tuple[str, int]) -> str:
    """Kill ``action`` at ``point`` on a fresh node, recover both ways; returns the journal state the kill left."""
    name = f"{mode}-{action}-{point[0]}-{point[1]}"
    outcomes = []
    for recovery in ("forward", "rollback") if action == "migrate" else ("rollback",):
        node = build(world_tmp, name, bulk and bulk / name)
        original = readable_models(node.config.paths.legacy)
        store, env = metadata(node.config.paths.legacy), node.config.paths.env_file.read_bytes()
        if action == "rollback":
            migrated = run_step(node, "migrate")
            assert migrated.returncode == 0, (name, migrated.stderr)
        assert run_step(node, action, kill=point).returncode != 0, f"{name}: the kill did not happen"
        journal = journals.load(node.config.paths.state_dir)
        outcomes.append(str(journal.state) if journal else "none")
        live = {**readable_models(old_store(node.config)), **readable_models(node.config.paths.canonical)}
        assert all(live.get(m) == d for m, d in original.items()), f"{name}: a model was unreadable at the kill"
        if recovery == "forward":
            step = "resume" if journal is not None and journal.interrupted else "migrate"
            if journal is not None and journal.state == "rolling-back":
                step = "rollback"
            recovered = run_step(node, step)
            assert recovered.returncode == 0, f"{name}: {step} after the kill failed: {recovered.stderr}"
            if step != "rollback":
                assert journals.load(node.config.paths.state_dir).state == "committed", name  # type: ignore[union-attr]
                assert metadata(old_store(node.config)) == store, f"{name}: the old store changed"
        else:
            done = run_step(node, "rollback")
            nothing = journal is None or not journal.interrupted
            assert done.returncode == 0 or (done.returncode == 3 and nothing), f"{name}: rollback: {done.stderr}"
            check_rolled_back(node, store, env, name)
        assert served(node) == original, f"{name}: the served store is not complete"
        assert node.flag.exists(), f"{name}: Ollama was left stopped"
        assert temporaries(node) == [], f"{name}: temporary names left"
        plans(node)
        shutil.rmtree(node.root)
        if bulk is not None:
            shutil.rmtree(bulk / name, ignore_errors=True)
    return outcomes[0]


@pytest.mark.parametrize("mode", ["same-filesystem", "other-filesystem"])
def test_a_kill_at_every_file_changing_call_then_resume_or_rollback(world_tmp: Path, tmpfs: Path, mode: str) -> None:
    bulk = tmpfs if mode == "other-filesystem" else None
    # Every module the step imports has its bytecode cached before the first traced run: a cache written by
    # another process in between would change the number of openat calls at import, and so every kill point.
    subprocess.run([sys.executable, "-m", "compileall", "-q", *map(str, COMPILED)], check=True)
    probe = build(world_tmp, f"{mode}-probe", bulk and bulk / "probe")
    migrate_points = points(probe, "migrate")
    rollback_points = points(probe, "rollback")
    assert migrate_points and rollback_points
    jobs = [("migrate", p) for p in migrate_points] + [("rollback", p) for p in rollback_points]
    with ThreadPoolExecutor(2) as pool:
        states = Counter(pool.map(lambda job: check_point(world_tmp, mode, bulk, *job), jobs))
    print(f"\n{mode}: {len(migrate_points)} kill points in a migration, {len(rollback_points)} in a rollback; "
          f"each resumed and rolled back; the kills left: {dict(states)}")  # fmt: skip
