"""Migration on real directories and real filesystems: plan and refusals, copy and link, switch, post-check,
rollback, resume, corruption, a disk filling up, permissions, cancellation."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from migrate_support import (
    FakeController,
    make_legacy_node,
    node_config,
    old_store,
    readable_models,
    snapshot,
)

from hxd.core.config import Config
from hxd.core.envfile_reader import read_envfile
from hxd.core.errors import Cancelled, Failed, HxdError, Refused
from hxd.core.jobs import JobControl, JobState
from hxd.core.migrate import journal as journals
from hxd.core.migrate.copy import Corrupt
from hxd.core.migrate.plan import make_plan, targets
from hxd.core.migrate.runner import Migration, interrupted
from hxd.core.validate import Options, validate
from hxsandbox.migrate import prune, roll_back, run_migration
from hxsandbox.samplestore import blob_path, manifest_path, sha256_digest, write_hostile_manifest
from hxsandbox.systemd import OllamaService
from hxsandbox.world import free_port

pytestmark = pytest.mark.usefixtures("ollama_account")  # the account the migrated files belong to


@pytest.fixture
def tmp_path(world_tmp: Path) -> Path:
    """Like pytest's, but under a directory the ollama user can traverse (pytest's root is 0700), as on a node."""
    return world_tmp


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A second filesystem for bulk storage, so blobs are copied (not linked)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g,mode=0755", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def run(config: Config, controller: object | None = None, resume: bool = False) -> tuple[dict[str, object], JobControl]:
    control = JobControl("migrate")
    result = run_migration(Migration(config, controller or FakeController(), control), resume=resume)
    return result, control


def test_dry_run_plan(tmp_path: Path, tmpfs: Path) -> None:
    config = node_config(tmp_path, tmpfs / "bulk")
    make_legacy_node(config)
    plan = make_plan(config, targets(config, {}))
    summary = plan.summary()
    assert summary["source"] == str(config.paths.legacy)
    assert summary["same_filesystem"] is False
    assert (summary["blobs"], summary["manifests"]) == (6, 3)  # 3 weights, template, license, a shared config
    assert summary["bytes_to_copy"] == summary["bytes_total"] > 0
    assert summary["owner"] == "ollama:ollama"
    assert any("stop ollama.service" in step for step in plan.steps)
    assert not (tmpfs / "bulk").exists()  # a dry run writes nothing


def test_copy_migration_end_to_end(tmp_path: Path, tmpfs: Path) -> None:
    config = node_config(tmp_path, tmpfs / "bulk")
    make_legacy_node(config)
    before = snapshot(config.paths.legacy)
    models_before = readable_models(config.paths.legacy)
    controller = FakeController()
    result, control = run(config, controller)
    p = config.paths
    assert Path(os.readlink(p.canonical / "blobs")) == p.bulk / "blobs"
    assert Path(os.readlink(p.canonical / "manifests")) == p.bulk / "manifests"
    assert Path(os.readlink(p.legacy)) == p.canonical
    assert read_envfile(p.env_file).environment["OLLAMA_MODELS"] == str(p.canonical)
    assert snapshot(p.bulk) == before  # every byte, and manifest mtimes
    assert snapshot(old_store(config)) == before  # the source is kept whole as the backup
    assert readable_models(p.canonical) == readable_models(p.legacy) == models_before
    assert controller.calls == ["is_active ollama.service", "stop ollama.service", "start ollama.service"]
    assert result["blobs"] == 6 and result["same_filesystem"] is False
    assert control.state.bytes_done == control.state.bytes_total > 0
    ollama = pwd.getpwnam("ollama")
    for path in (p.bulk / "blobs").iterdir():
        st = path.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (ollama.pw_uid, grp.getgrnam("ollama").gr_gid, 0o644)
    report = validate(read_envfile(p.env_file), "env", config, Options(store=True, deep=True))
    assert [f.code for f in report.findings if f.severity != "info"] == []
    assert journals.load(p.state_dir).state == "committed"  # type: ignore[union-attr]
    assert interrupted(p.state_dir) == ""


def test_same_filesystem_links_instead_of_copying(tmp_path: Path) -> None:
    """Blobs that already have Ollama's owner and mode are hashed, then linked; others are copied, and the source's
    own owner and mode stay as they were (a link would share, and change, them)."""
    config = node_config(tmp_path)
    make_legacy_node(config)
    blobs = sorted((config.paths.legacy / "blobs").iterdir())
    ollama = pwd.getpwnam("ollama")
    for blob in blobs[1:]:
        os.chown(blob, ollama.pw_uid, ollama.pw_gid)
        blob.chmod(0o644)
    blobs[0].chmod(0o600)  # root's, 0600: not what Ollama needs
    before = {blob.name: blob.stat() for blob in blobs}
    plan = make_plan(config, targets(config, {}))
    assert plan.foreign == [blobs[0].name] and plan.bytes_to_copy == before[blobs[0].name].st_size
    result, _ = run(config)
    assert result["same_filesystem"] is True
    for blob in (config.paths.bulk / "blobs").iterdir():
        assert os.path.samefile(blob, old_store(config) / "blobs" / blob.name) == (blob.name != blobs[0].name)
    for blob in (old_store(config) / "blobs").iterdir():
        st, was = blob.stat(), before[blob.name]
        assert (st.st_uid, st.st_gid, st.st_mode) == (was.st_uid, was.st_gid, was.st_mode)
    assert readable_models(config.paths.canonical) == readable_models(old_store(config))


def test_same_filesystem_blobs_are_verified_too(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    make_legacy_node(config)
    ollama = pwd.getpwnam("ollama")
    for blob in (config.paths.legacy / "blobs").iterdir():
        os.chown(blob, ollama.pw_uid, ollama.pw_gid)
        blob.chmod(0o644)
    victim = max((config.paths.legacy / "blobs").iterdir(), key=lambda b: b.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(data)
    with pytest.raises(Corrupt, match=f"blob {victim.name} in .* is corrupt"):
        run(config)
    assert journals.load(config.paths.state_dir).state == "copying"  # type: ignore[union-attr]


def test_a_bind_mount_of_the_same_filesystem_is_copied_to(tmp_path: Path, tmpfs: Path) -> None:
    """hxd's unit bind-mounts each path (ReadWritePaths=): one filesystem, one st_dev, but link() says EXDEV."""
    config = node_config(tmpfs / "node", tmpfs / "bulk-mount" / "bulk")
    make_legacy_node(config)
    (tmpfs / "bulk-dir").mkdir()
    (tmpfs / "bulk-mount").mkdir()
    subprocess.run(["mount", "--bind", str(tmpfs / "bulk-dir"), str(tmpfs / "bulk-mount")], check=True)
    try:
        assert os.stat(tmpfs / "bulk-mount").st_dev == os.stat(old_store(config)).st_dev
        result, _ = run(config)
        assert result["same_filesystem"] is False and result["message"].startswith("committed")
        assert readable_models(config.paths.canonical) == readable_models(old_store(config))
    finally:
        subprocess.run(["umount", str(tmpfs / "bulk-mount")], check=True)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "the source path"),
        ("not-a-store", "is not an Ollama store"),
        ("bulk-inside-source", "contain each other"),
        ("source-inside-bulk", "contain each other"),
        ("bulk-is-source", "contain each other"),
        ("bulk-has-data", "already holds data"),
        ("canonical-has-data", "which is not part of the canonical layout"),
        ("loop", "is a symlink loop"),
        ("untraversable", "does not let ollama through"),
        ("no-account", "the Ollama account nobodyhere:ollama does not exist"),
    ],
)
def test_refusals(tmp_path: Path, setup: str, message: str) -> None:
    config = node_config(tmp_path)
    make_legacy_node(config)
    p = config.paths
    overrides: dict[str, str] = {}
    if setup == "missing":
        overrides["source"] = str(tmp_path / "nowhere")
    elif setup == "not-a-store":
        (tmp_path / "empty").mkdir()
        overrides["source"] = str(tmp_path / "empty")
    elif setup == "bulk-inside-source":
        overrides["bulk"] = str(p.legacy / "bulk")
    elif setup == "source-inside-bulk":
        overrides["bulk"] = str(p.legacy.parent)
    elif setup == "bulk-is-source":
        overrides["bulk"] = str(p.legacy)
    elif setup == "bulk-has-data":
        (p.bulk / "blobs").mkdir(parents=True)
        (p.bulk / "blobs" / "stranger").write_text("x")
    elif setup == "canonical-has-data":
        p.canonical.mkdir(parents=True)
        (p.canonical / "notes.txt").write_text("x")
    elif setup == "loop":
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        overrides["bulk"] = str(tmp_path / "loop")
    elif setup == "untraversable":
        (tmp_path / "closed").mkdir(mode=0o700)
        overrides["bulk"] = str(tmp_path / "closed" / "bulk")
    elif setup == "no-account":
        config = config.model_copy(update={"ollama": config.ollama.model_copy(update={"user": "nobodyhere"})})
    with pytest.raises(Refused, match=message):
        make_plan(config, targets(config, overrides))
    with pytest.raises(Refused, match=message):
        run_migration(Migration(config, FakeController(), JobControl("migrate")), overrides)
    assert not os.path.lexists(p.canonical / "blobs")


@pytest.mark.parametrize(
    ("kind", "message"), [("million-layers", "larger than 4194304 bytes"), ("deep", "nests deeper")]
)
def test_a_hostile_manifest_is_refused_by_the_plan(tmp_path: Path, kind: str, message: str) -> None:
    """Issue 14: a manifest the store's owner wrote to be huge or deep is a refusal naming it, not Internal."""
    config = node_config(tmp_path)
    make_legacy_node(config)
    path = write_hostile_manifest(config.paths.legacy, "evil:latest", kind)
    expected = rf"^the source store has a manifest hxd cannot use: {path}: {message}.*re-pull the model if you need it$"
    with pytest.raises(Refused, match=expected):
        make_plan(config, targets(config, {}))
    controller = FakeController()
    with pytest.raises(Refused, match=expected):
        run_migration(Migration(config, controller, JobControl("migrate")))
    assert controller.calls == [] and not os.path.lexists(config.paths.canonical / "blobs")


@pytest.mark.parametrize("phase", ["manifests", "copy"])
def test_a_manifest_made_hostile_during_the_migration_is_a_typed_error(tmp_path: Path, tmpfs: Path, phase: str) -> None:
    """A manifest swapped for a million-layer one after the plan (copied in phase "manifests", or one that appears
    during the copy and is read by the catch-up) ends the job with a typed error naming it; a copy never reads more
    than the limit, so no such file reaches bulk storage."""
    config = node_config(tmp_path, tmpfs / "bulk")
    make_legacy_node(config)
    name = "llama3.2:3b" if phase == "manifests" else "evil:latest"
    path = manifest_path(config.paths.legacy, name)

    def swap(state: JobState, changed: frozenset[str]) -> None:
        if "phase" in changed and state.phase == phase:
            write_hostile_manifest(config.paths.legacy, name, "million-layers")

    with pytest.raises(HxdError, match=rf"{path}: larger than 4194304 bytes \(157000264 on disk\)"):
        run_migration(Migration(config, FakeController(), JobControl("migrate", swap)))
    assert all(f.stat().st_size < 1 << 20 for f in (tmpfs / "bulk").rglob("*") if f.is_file())


def test_too_little_space_is_refused(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        config = node_config(tmp_path, mount / "bulk")
        make_legacy_node(config)
        with pytest.raises(Refused, match=r".* free; copying needs .* with a safety margin"):
            make_plan(config, targets(config, {}))
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_corrupted_blob_aborts_before_the_switch(tmp_path: Path, tmpfs: Path) -> None:
    config = node_config(tmp_path, tmpfs / "bulk")
    make_legacy_node(config)
    blob = blob_path(config.paths.legacy, sha256_digest(b"qwen3 1.7b weights"))
    blob.write_bytes(b"qwen3 1.7b weightz")
    before = snapshot(config.paths.legacy)
    controller = FakeController()
    with pytest.raises(Failed, match=f"blob {blob.name} in {blob.parent} is corrupt"):
        run(config, controller)
    assert controller.calls == ["is_active ollama.service"]  # never stopped
    assert not os.path.lexists(config.paths.canonical / "blobs") and not config.paths.legacy.is_symlink()
    assert snapshot(config.paths.legacy) == before
    assert not (tmpfs / "bulk" / "blobs" / blob.name).exists()


def test_disk_full_during_copy_leaves_the_source_intact(tmp_path: Path, tmpfs: Path) -> None:
    config = node_config(tmp_path, tmpfs / "bulk")
    make_legacy_node(config)
    before = snapshot(config.paths.legacy)

    def shrink(state: JobState, changed: frozenset[str]) -> None:
        if "phase" in changed and state.phase == "copy":  # the plan saw room; now the disk fills up
            used = sum(f.stat().st_size for f in (tmpfs).rglob("*") if f.is_file())
            subprocess.run(["mount", "-o", f"remount,size={max(used, 4096) + 8192}", str(tmpfs)], check=True)

    migration = Migration(config, FakeController(), JobControl("migrate", shrink))
    with pytest.raises(Failed) as error:
        run_migration(migration)
    assert "no space left" in str(error.value) and "the source is untouched" in str(error.value)
    assert snapshot(config.paths.legacy) == before
    assert not config.paths.legacy.is_symlink()
    assert "interrupted (copying)" in interrupted(config.paths.state_dir)
    subprocess.run(["mount", "-o", "remount,size=2g", str(tmpfs)], check=True)
    run_migration(Migration(config, FakeController(), JobControl("migrate")), resume=True)
    assert readable_models(config.paths.canonical) == readable_models(old_store(config))


def test_permission_denied_is_clear(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    make_legacy_node(config)
    (config.paths.bulk / "blobs").mkdir(parents=True)
    subprocess.run(["chattr", "+i", str(config.paths.bulk / "blobs")], check=True)
    try:
        with pytest.raises(Failed, match=r"Operation not permitted; migration .* stopped in phase copying"):
            run(config)
    finally:
        subprocess.run(["chattr", "-i", str(config.paths.bulk / "blobs")], check=True)
    assert not config.paths.legacy.is_symlink()


def test_cancel_then_resume(tmp_path: Path, tmpfs: Path) -> None:
    config = node_config(tmp_path, tmpfs / "bulk")
    make_legacy_node(config)
    holder: list[JobControl] = []

    def cancel_at_start(state: JobState, changed: frozenset[str]) -> None:
        if state.phase == "copy":
            holder[0].cancel()

    control = JobControl("migrate", cancel_at_start)
    holder.append(control)
    controller = FakeController()
    with pytest.raises(Cancelled):
        run_migration(Migration(config, controller, control))
    assert controller.calls == ["is_active ollama.service"]
    assert not os.path.lexists(config.paths.canonical / "blobs")
    with pytest.raises(Refused, match="was interrupted \\(copying\\): run hxctl migrate --resume"):
        run(config)
    result, _ = run(config, resume=True)
    assert result["blobs"] == 6
    assert readable_models(config.paths.canonical) == readable_models(old_store(config))


def test_a_cancel_after_the_stop_is_refused_and_the_migration_finishes(tmp_path: Path, tmpfs: Path) -> None:
    config = node_config(tmp_path, tmpfs / "bulk")
    make_legacy_node(config)
    asked: list[bool] = []
    holder: list[JobControl] = []

    def cancel_at_stop(state: JobState, changed: frozenset[str]) -> None:
        if state.phase == "stop" and not asked:
            asked.append(holder[0].cancel())

    control = JobControl("migrate", cancel_at_stop)
    holder.append(control)
    result = run_migration(Migration(config, FakeController(), control))
    assert asked == [False] and not control.state.cancellable
    assert result["message"].startswith("committed")


def test_rollback_restores_everything(tmp_path: Path, tmpfs: Path) -> None:
    config = node_config(tmp_path, tmpfs / "bulk")
    make_legacy_node(config)
    env_before = config.paths.env_file.read_bytes()
    store_before = snapshot(config.paths.legacy)
    run(config)
    controller = FakeController()
    result = roll_back(Migration(config, controller, JobControl("rollback")))
    p = config.paths
    assert result["undone"] == ["env", "legacy", "canonical-manifests", "canonical-blobs", "canonical"]
    assert p.env_file.read_bytes() == env_before
    assert p.legacy.is_dir() and not p.legacy.is_symlink()
    assert snapshot(p.legacy) == store_before
    assert not p.canonical.exists()
    assert controller.calls == ["stop ollama.service", "start ollama.service"]
    assert not (p.bulk / "blobs").exists() and not (p.bulk / "manifests").exists()  # the copies are taken back
    with pytest.raises(Refused, match="nothing to roll back"):
        roll_back(Migration(config, controller, JobControl("rollback")))
    result, _ = run(config)  # and the node can be migrated again
    assert result["blobs"] == 6


def test_post_check_against_the_served_models(tmp_path: Path, tmpfs: Path) -> None:
    port = free_port()
    config = node_config(tmp_path, tmpfs / "bulk", url=f"http://127.0.0.1:{port}")
    make_legacy_node(config)
    service = OllamaService(config.paths.env_file, tmp_path, port)
    service.start("ollama.service")
    try:
        result, _ = run(config, service)
        assert service.calls == ["start ollama.service", "stop ollama.service", "start ollama.service"]
        assert result["service_down_seconds"] < 5
    finally:
        service.stop("ollama.service")


class LosingService(OllamaService):
    """Bulk storage loses a manifest after the switch, as the service starts: the post-check must see it."""

    bulk = Path("/nonexistent")

    def start(self, unit: str) -> None:
        for lost in self.bulk.glob("manifests/*/*/qwen3/*"):
            lost.unlink()
        super().start(unit)


def test_failed_post_check_rolls_back(tmp_path: Path, tmpfs: Path) -> None:
    port = free_port()
    config = node_config(tmp_path, tmpfs / "bulk", url=f"http://127.0.0.1:{port}")
    make_legacy_node(config)
    env_before = config.paths.env_file.read_bytes()
    service = LosingService(config.paths.env_file, tmp_path, port)
    service.bulk = config.paths.bulk
    service.start("ollama.service")
    try:
        with pytest.raises(Failed, match=r"rolled back and ollama.service started again: post-check: missing \['regi"):
            run(config, service)
        assert service.calls[-2:] == ["stop ollama.service", "start ollama.service"]  # rolled back, serving again
    finally:
        service.stop("ollama.service")
    assert config.paths.env_file.read_bytes() == env_before
    assert config.paths.legacy.is_dir() and not config.paths.legacy.is_symlink()
    assert journals.load(config.paths.state_dir).state == "rolled-back"  # type: ignore[union-attr]


def test_prune_source_after_commit(tmp_path: Path, tmpfs: Path) -> None:
    config = node_config(tmp_path, tmpfs / "bulk")
    make_legacy_node(config)
    with pytest.raises(Refused, match="needs a committed migration"):
        prune(Migration(config, FakeController(), JobControl("prune")))
    run(config)
    backup = old_store(config)
    result = prune(Migration(config, FakeController(), JobControl("prune")))
    assert str(backup) in result["removed"]
    assert not backup.exists()
    assert readable_models(config.paths.canonical)  # the migrated store is untouched
