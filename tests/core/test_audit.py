"""The audit and its repairs, on real trees with real owners and modes (root creates the accounts, as CI runs)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from busctl import as_user
from conftest import system_account

from hxd.cli import audit as audit_cli
from hxd.core import audit as audit_module
from hxd.core.audit import audit, run_audit
from hxd.core.audit_repair import repair
from hxd.core.audit_report import AuditReport, Change, Finding
from hxd.core.config import Config, OllamaConfig, PathsConfig, dump_config
from hxd.core.errors import Cancelled
from hxd.core.jobs import JobControl, JobState
from hxsandbox.samplestore import make_node

BLOB = "sha256-" + "ab" * 32
OTHER = "hxaudit"  # an account that should own nothing hxd manages


@dataclass(frozen=True)
class Node:
    base: Path
    config: Config
    ollama: tuple[int, int]
    other: tuple[int, int]

    @property
    def paths(self) -> PathsConfig:
        return self.config.paths

    @property
    def blobs(self) -> Path:
        return self.paths.bulk / "blobs"

    @property
    def models(self) -> Path:
        return self.paths.bulk / "manifests/registry.ollama.ai/library"


@pytest.fixture(scope="module")
def accounts() -> dict[str, tuple[int, int]]:
    assert os.geteuid() == 0, "the audit tests chown files and create accounts, so they must run as root (CI does)"
    return {name: system_account(name) for name in ("ollama", "hxd", OTHER)}


@pytest.fixture
def node(accounts: dict[str, tuple[int, int]], world_tmp: Path) -> Node:
    """A clean node in the canonical layout, under a directory Ollama can reach (tmp_path's parents are 0700)."""
    base = world_tmp
    paths = PathsConfig(
        canonical=base / "mnt/active_llm_models",
        bulk=base / "data/bulk",
        legacy=base / "opt/production",
        env_file=base / "opt/config/ollama.env",
        log_dir=base / "var/log/hxd",
        state_dir=base / "var/lib/hxd",
    )
    make_node(paths.canonical, paths.bulk, paths.legacy, paths.env_file, migrated=True)
    for directory in (paths.log_dir, paths.state_dir):
        directory.mkdir(parents=True)
    (paths.state_dir / "last-audit.json").write_text("{}")
    (base / "outside").mkdir()
    for path in _tree(base):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    uid, gid = accounts["ollama"]
    for top in (paths.canonical, paths.bulk):
        for path in _tree(top):
            os.lchown(path, uid, gid)
    os.chown(paths.env_file, 0, gid)
    paths.env_file.chmod(0o640)
    return Node(base, Config(paths=paths), accounts["ollama"], accounts[OTHER])


def _tree(top: Path) -> list[Path]:
    """``top`` and everything under it, not following symlinks."""
    found = [top]
    for directory, dirs, files in os.walk(top):
        found.extend(Path(directory, name) for name in [*dirs, *files])
    return found


def snapshot(base: Path) -> dict[str, tuple[int, int, int, int]]:
    """(inode, mode, uid, gid) of every entry under ``base``, by lstat."""
    return {str(p): (s.st_ino, s.st_mode, s.st_uid, s.st_gid) for p in _tree(base) if (s := os.lstat(p))}


def codes(report: AuditReport) -> list[tuple[str, str]]:
    return [(f.code, f.path) for f in report.findings]


def one(report: AuditReport, code: str) -> Finding:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, codes(report)
    return found[0]


def test_the_canonical_layout_is_clean(node: Node) -> None:
    report = audit(node.config)
    assert codes(report) == []
    assert report.repairs == []
    assert report.counts == {"error": 0, "warning": 0, "info": 0}
    # Every entry once: the blobs and manifests symlinks and the legacy link do not walk the store again.
    paths = node.paths
    walked = [p for top in (paths.canonical, paths.bulk, paths.log_dir, paths.state_dir) for p in _tree(top)]
    above = {str(parent) for top in [*walked, paths.env_file, paths.legacy] for parent in top.parents}
    above -= {str(p) for p in walked}
    assert report.scanned == len(walked) + 2 + len(above)  # + the legacy link and the env file


def test_world_writable_file_and_directory_but_not_a_sticky_directory(node: Node) -> None:
    (node.blobs / BLOB).write_bytes(b"x")
    os.chown(node.blobs / BLOB, *node.ollama)
    (node.blobs / BLOB).chmod(0o666)
    open_dir = node.paths.bulk / "incoming"
    open_dir.mkdir()
    os.chown(open_dir, *node.ollama)
    open_dir.chmod(0o777)
    sticky = node.paths.bulk / "scratch"
    sticky.mkdir()
    os.chown(sticky, *node.ollama)
    sticky.chmod(0o1777)
    report = audit(node.config)
    assert codes(report) == [("HX200", str(node.blobs / BLOB)), ("HX200", str(open_dir))]
    finding = report.findings[0]
    assert finding.severity == "error"
    assert "world-writable file (mode 0666)" in finding.message
    assert finding.hint == "hxctl audit --fix sets mode 0644"
    assert report.findings[1].hint == "hxctl audit --fix sets mode 0755"


def test_setuid_and_setgid_files_but_not_setgid_directories(node: Node) -> None:
    tool = node.paths.bulk / "helper"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chown(tool, *node.ollama)
    tool.chmod(0o4755)
    shared = node.paths.bulk / "shared"
    shared.mkdir()
    os.chown(shared, *node.ollama)
    shared.chmod(0o2775)
    log = node.paths.log_dir / "hxd.log"
    log.write_text("")
    log.chmod(0o2640)
    report = audit(node.config)
    assert codes(report) == [("HX201", str(node.paths.bulk / "helper")), ("HX201", str(log))]
    assert "setuid file (mode 4755, owner ollama:ollama)" in report.findings[0].message
    assert report.findings[0].hint == "hxctl audit --fix sets mode 0644"
    # hxd's own files keep their private modes: only the bits at fault go.
    assert "setgid file" in report.findings[1].message
    assert report.findings[1].hint == "hxctl audit --fix sets mode 0640"


def test_model_files_owned_by_another_user_or_group(node: Node) -> None:
    model = node.models / "llama3.2/3b"
    os.chown(model, 0, 0)
    config_blob = next(node.blobs.iterdir())
    os.chown(config_blob, node.ollama[0], node.other[1])
    report = audit(node.config)
    assert codes(report) == [("HX211", str(config_blob)), ("HX210", str(model))]
    assert one(report, "HX210").message == "owned by root:root, not by the Ollama user: model storage is ollama:ollama"
    assert one(report, "HX210").hint == "hxctl audit --fix gives it to ollama:ollama"
    assert one(report, "HX211").severity == "warning"
    assert f"owned by ollama:{OTHER}, not the Ollama group" in one(report, "HX211").message


def test_directory_the_ollama_user_cannot_enter(node: Node) -> None:
    private = node.models / "llama3.2"
    os.chown(private, 0, 0)
    private.chmod(0o700)
    report = audit(node.config)
    assert codes(report) == [("HX210", str(private)), ("HX212", str(private))]
    assert "ollama cannot enter this directory (mode 0700, owner root:root)" in one(report, "HX212").message
    # Owned by another account: the group's x bit decides.
    os.chown(private, node.other[0], node.ollama[1])
    private.chmod(0o740)
    assert ("HX212", str(private)) in codes(audit(node.config))
    private.chmod(0o750)
    assert codes(audit(node.config)) == [("HX210", str(private))]


def test_directories_above_the_store_are_checked_but_never_fixed(node: Node) -> None:
    above = node.base / "data"
    above.chmod(0o700)
    (node.base / "opt").chmod(0o777)
    before = snapshot(node.base)
    result = run_audit(node.config, fix=True)
    assert codes(result.report) == [("HX212", str(above)), ("HX200", str(node.base / "opt"))]
    assert "so Ollama cannot reach " + str(node.paths.bulk) in one(result.report, "HX212").message
    assert "--fix does not change it" in one(result.report, "HX212").hint
    assert "--fix does not change it" in one(result.report, "HX200").hint
    assert result.changes == []
    assert snapshot(node.base) == before


def test_symlinks_dangling_looping_and_escaping(node: Node) -> None:
    outside = node.base / "outside"
    (outside / "weights").write_bytes(b"w")
    (outside / "weights").chmod(0o666)  # world-writable, but not hxd's to audit
    links = node.models / "links"
    links.mkdir()
    os.chown(links, *node.ollama)
    (links / "gone").symlink_to(node.base / "nothing-here")
    (links / "a").symlink_to("b")
    (links / "b").symlink_to("a")
    (links / "self").symlink_to("self")
    (links / "out").symlink_to(outside / "weights")
    (links / "out-dir").symlink_to(outside)
    (links / "in").symlink_to(node.paths.canonical / "blobs")  # through the canonical link, into bulk: fine
    report = audit(node.config)
    assert codes(report) == [
        ("HX203", str(links / "a")),
        ("HX203", str(links / "b")),
        ("HX202", str(links / "gone")),
        ("HX204", str(links / "out")),
        ("HX204", str(links / "out-dir")),
        ("HX203", str(links / "self")),
    ]
    assert f"its target {node.base / 'nothing-here'} does not exist" in report.findings[2].message
    assert f"resolves to {outside / 'weights'}, outside the managed paths" in report.findings[3].message
    assert report.repairs == []
    assert all(str(outside) not in f.path for f in report.findings)


def test_a_store_at_the_legacy_path_before_migration(node: Node) -> None:
    paths = node.paths
    for top in (paths.canonical, paths.bulk, paths.legacy):
        if top.is_symlink():
            top.unlink()
        else:
            shutil.rmtree(top)
    make_node(paths.canonical, paths.bulk, paths.legacy, node.base / "opt/config/unused.env", migrated=False)
    for path in _tree(paths.legacy):
        os.lchown(path, *node.ollama)
    (paths.legacy / "blobs/stray").write_bytes(b"")
    report = audit(node.config)
    assert codes(report) == [
        ("HX290", str(paths.bulk)),
        ("HX290", str(paths.canonical)),
        ("HX210", str(paths.legacy / "blobs/stray")),
        ("HX213", str(paths.legacy / "blobs/stray")),
    ]


def test_a_managed_path_inside_another_is_audited_on_its_own_terms(node: Node) -> None:
    state = node.paths.bulk / "hxd-state"
    state.mkdir()
    (state / "last").write_text("")
    config = node.config.model_copy(update={"paths": node.paths.model_copy(update={"state_dir": state})})
    assert codes(audit(config)) == []  # root-owned, as hxd's own files may be, though inside the store
    os.chown(state / "last", *node.other)
    assert codes(audit(config)) == [("HX230", str(state / "last"))]


def test_a_symlinked_managed_path_is_checked_as_a_symlink(node: Node) -> None:
    node.paths.legacy.unlink()
    node.paths.legacy.symlink_to(node.base / "outside")
    assert codes(audit(node.config)) == [("HX204", str(node.paths.legacy))]
    node.paths.legacy.unlink()
    assert codes(audit(node.config)) == [("HX290", str(node.paths.legacy))]
    assert audit(node.config).findings[0].severity == "info"


def test_blob_names(node: Node) -> None:
    names = {
        f"{BLOB}-partial": "HX214",
        f"{BLOB}-partial-3": "HX214",
        f"{BLOB}.tmp": "HX214",
        "sha256-1234567": "HX213",  # a CreateTemp leftover
        "notes.txt": "HX213",
        "sha256:" + "cd" * 32: None,  # the pre-0.1.30 form, which Ollama renames at start
        "SHA256-" + "ab" * 32: "HX213",
    }
    for name in names:
        (node.blobs / name).write_bytes(b"")
        os.chown(node.blobs / name, *node.ollama)
    (node.blobs / "subdir").mkdir()
    os.chown(node.blobs / "subdir", *node.ollama)
    (node.blobs / "link").symlink_to(node.blobs / BLOB.replace("ab", "cd"))
    report = audit(node.config)
    expected = {(code, str(node.blobs / name)) for name, code in names.items() if code}
    expected |= {("HX213", str(node.blobs / "subdir")), ("HX213", str(node.blobs / "link"))}
    expected |= {("HX202", str(node.blobs / "link"))}
    assert set(codes(report)) == expected
    partial = next(f for f in report.findings if f.path.endswith("-partial"))
    assert partial.severity == "info"
    assert "Ollama deletes names that are not digests from blobs/ when it starts" in partial.message
    notes = next(f for f in report.findings if f.path.endswith("notes.txt"))
    assert notes.severity == "warning" and "will be lost" in notes.message
    assert report.repairs == []


def test_env_file_owner_and_mode(node: Node) -> None:
    env = node.paths.env_file
    os.chown(env, *node.other)
    report = audit(node.config)
    assert codes(report) == [("HX220", str(env))]
    assert f"owned by {OTHER}:{OTHER}, not root:ollama" in report.findings[0].message
    assert report.findings[0].hint == "hxctl audit --fix gives it to root:ollama"
    os.chown(env, 0, node.ollama[1])
    env.chmod(0o600)
    report = audit(node.config)
    assert codes(report) == [("HX221", str(env))]
    assert report.findings[0].message == "mode 0600, not 0640 (audit.env_file_mode)"
    env.chmod(0o644)
    assert codes(audit(node.config)) == [("HX222", str(env))]
    env.chmod(0o666)
    report = audit(node.config)
    assert codes(report) == [("HX200", str(env)), ("HX222", str(env))]
    assert {f.hint for f in report.findings} == {"hxctl audit --fix sets mode 0640"}


def test_env_file_that_is_a_symlink(node: Node) -> None:
    env = node.paths.env_file
    real = env.with_name("real.env")
    env.rename(real)
    env.symlink_to(real)
    assert codes(audit(node.config)) == [("HX204", str(env)), ("HX223", str(env))]


def test_hxd_files_owned_by_another_account(node: Node) -> None:
    state = node.paths.state_dir / "last-audit.json"
    os.chown(state, *node.other)
    report = audit(node.config)
    assert codes(report) == [("HX230", str(state))]
    assert report.findings[0].hint == "hxctl audit --fix gives it to hxd:hxd"
    os.chown(state, *system_account("hxd"))
    assert codes(audit(node.config)) == []


def test_no_ollama_account(node: Node) -> None:
    config = node.config.model_copy(update={"ollama": OllamaConfig(user="hxaudit-nobody-here")})
    os.chown(node.blobs, 0, 0)
    report = audit(config)
    assert codes(report) == [("HX215", str(node.paths.canonical))]
    assert "'hxaudit-nobody-here' (ollama.user) does not exist" in report.findings[0].message


def test_the_entry_cap_stops_the_walk(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "MAX_ENTRIES", 12)
    report = audit(node.config)
    assert report.scanned == 12
    finding = one(report, "HX292")
    assert finding.severity == "error" and "stopped after 12 entries" in finding.message


def test_the_findings_cap_keeps_the_report_bounded(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hxd.core.audit_report.MAX_FINDINGS", 3)
    for index in range(5):
        path = node.paths.bulk / f"open{index}"
        path.write_bytes(b"")
        os.chown(path, *node.ollama)
        path.chmod(0o666)
    result = run_audit(node.config, fix=True)
    assert len(result.changes) == 3  # the listed ones
    report = run_audit(node.config).report
    assert len(report.findings) == 2 and report.errors == 2
    monkeypatch.setattr("hxd.core.audit_report.MAX_FINDINGS", 1)
    for index in range(5):
        (node.paths.bulk / f"open{index}").chmod(0o666)
    report = audit(node.config)
    assert [f.code for f in report.findings] == ["HX200", "HX293"]
    assert report.findings[1].severity == "error" and "4 more findings (4 errors, 0 warnings)" in (
        report.findings[1].message
    )


def test_progress_and_cancellation(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "_CHECK_EVERY", 1)
    monkeypatch.setattr("hxd.core.jobs._MIN_INTERVAL_SEC", 0.0)
    seen: list[tuple[str, int]] = []

    def listener(state: JobState, changed: frozenset[str]) -> None:
        seen.append((state.phase, state.items_done))

    report = audit(node.config, JobControl("audit", listener))
    phases = [phase for index, (phase, _) in enumerate(seen) if index == 0 or seen[index - 1][0] != phase]
    keys = ("canonical", "bulk", "legacy", "env_file", "log_dir", "state_dir")
    assert phases == [f"audit {key}" for key in keys]
    counts = [done for _, done in seen]
    assert counts == sorted(counts) and counts[-1] == report.scanned
    control = JobControl("audit")
    control.cancel()
    with pytest.raises(Cancelled):
        audit(node.config, control)


def test_a_cancel_during_the_repairs_still_lists_every_change(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "_CHECK_EVERY", 1)
    (node.paths.bulk / "open").write_bytes(b"")
    os.chown(node.paths.bulk / "open", *node.ollama)
    (node.paths.bulk / "open").chmod(0o666)
    control = JobControl("audit")

    def repair_then_cancel(report: AuditReport, control: JobControl | None = None) -> list[Change]:
        changes = repair(report, control)
        assert control is not None
        control.cancel()
        return changes

    monkeypatch.setattr(audit_module, "repair", repair_then_cancel)
    result = run_audit(node.config, control, fix=True)
    assert [(c.path, c.after) for c in result.changes] == [(str(node.paths.bulk / "open"), "0644")]
    assert codes(result.report) == []


def test_fix_changes_exactly_what_it_reports(node: Node) -> None:
    paths = node.paths
    broken = {
        node.blobs / BLOB: (0o666, node.ollama),
        node.models / "qwen3": (0o700, (0, 0)),
        node.models / "qwen3/1.7b": (0o4644, node.other),
        paths.bulk / "blobs": (0o775, (node.ollama[0], node.other[1])),
        paths.env_file: (0o644, node.other),
        paths.log_dir: (0o777, (0, 0)),
        paths.state_dir / "last-audit.json": (0o602, node.other),
    }
    (node.blobs / BLOB).write_bytes(b"x")
    for path, (mode, owner) in broken.items():
        os.chown(path, *owner)
        path.chmod(mode)
    before = snapshot(node.base)
    result = run_audit(node.config, fix=True)
    after = snapshot(node.base)
    changed = {
        path: (old, after[path]) for path, old in before.items() if old != after[path]
    }  # every entry that differs in any way
    assert set(before) == set(after)
    reported = {(c.path, c.what): (c.before, c.after) for c in result.changes}
    assert reported == {
        (str(node.blobs / BLOB), "mode"): ("0666", "0644"),
        (str(node.models / "qwen3"), "mode"): ("0700", "0755"),
        (str(node.models / "qwen3"), "owner"): ("root:root", "ollama:ollama"),
        (str(node.models / "qwen3/1.7b"), "mode"): ("4644", "0644"),
        (str(node.models / "qwen3/1.7b"), "owner"): (f"{OTHER}:{OTHER}", "ollama:ollama"),
        (str(paths.env_file), "mode"): ("0644", "0640"),
        (str(paths.env_file), "owner"): (f"{OTHER}:{OTHER}", "root:ollama"),
        (str(paths.log_dir), "mode"): ("0777", "0775"),
        (str(paths.state_dir / "last-audit.json"), "mode"): ("0602", "0600"),
        (str(paths.state_dir / "last-audit.json"), "owner"): (f"{OTHER}:{OTHER}", "hxd:hxd"),
        (str(paths.bulk / "blobs"), "owner"): (f"ollama:{OTHER}", "ollama:ollama"),
    }
    assert set(changed) == {path for path, _ in reported}
    for entry, (old, new) in changed.items():
        assert old[0] == new[0]  # the same inode, changed in place
        whats = {what for (where, what) in reported if where == entry}
        assert (old[1] != new[1]) == ("mode" in whats)
        assert (old[2:] != new[2:]) == ("owner" in whats)
    assert codes(result.report) == []
    assert result.summary() == {"errors": 0, "warnings": 0, "infos": 0, "scanned": result.report.scanned, "changes": 11}


def test_fix_never_goes_through_a_symlink(node: Node) -> None:
    outside = node.base / "outside"
    bad = node.models / "bad"
    bad.mkdir()
    (bad / "tag").write_bytes(b"{}")
    for path, mode in ((bad, 0o777), (bad / "tag", 0o666)):
        os.chown(path, *node.ollama)
        path.chmod(mode)
    report = audit(node.config)
    assert {f.path for f in report.findings} == {str(bad), str(bad / "tag")}
    # Between the audit and the fix, the directory moves out of the store and a symlink takes its place.
    bad.rename(outside / "bad")
    bad.symlink_to(outside / "bad")
    before = snapshot(node.base)
    changes = repair(report)
    assert snapshot(node.base) == before
    assert {(c.path, c.error) for c in changes} == {
        (str(bad), "it was replaced since the audit (another inode at that path now)"),
        (str(bad / "tag"), "a directory on its path was replaced by a symlink or a file since the audit"),
    }
    assert stat.S_IMODE((outside / "bad/tag").stat().st_mode) == 0o666


def test_fix_refuses_what_changed_since_the_audit(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    target, other = node.blobs / BLOB, node.paths.bulk / "open"
    for path in (target, other):
        path.write_bytes(b"x")
        os.chown(path, *node.ollama)
        path.chmod(0o666)

    swapped: list[dict[str, tuple[int, int, int, int]]] = []

    def swap_then_repair(report: AuditReport, control: JobControl | None = None) -> list[Change]:
        replacement = target.with_name("replacement")
        replacement.write_bytes(b"y")
        os.chown(replacement, *node.ollama)
        replacement.chmod(0o666)
        replacement.rename(target)  # another inode, with the same name, mode and owner
        other.chmod(0o777)  # the same inode, with another mode
        swapped.append(snapshot(node.base))
        return repair(report, control)

    monkeypatch.setattr(audit_module, "repair", swap_then_repair)
    result = run_audit(node.config, fix=True)
    assert snapshot(node.base) == swapped[0]
    assert result.changes == []
    refused = [f for f in result.report.findings if f.code == "HX294"]
    assert [(f.path, f.severity) for f in refused] == [(str(target), "error"), (str(other), "error")]
    assert "not changed (mode 0666 -> 0644): it was replaced since the audit" in refused[0].message
    assert "its mode or owner changed since the audit" in refused[1].message


def test_hard_linked_files_are_reported_but_not_changed(node: Node) -> None:
    target = node.blobs / BLOB
    target.write_bytes(b"x")
    os.chown(target, *node.other)
    os.link(target, node.base / "outside/alias")
    report = audit(node.config)
    assert one(report, "HX210").hint == (
        f"not changed by --fix (it has 2 hard links, and a change would reach its other names too): "
        f"chown -h ollama:ollama {target}"
    )
    assert report.repairs == []
    # A link made between the audit and the fix stops the fix as well.
    (node.base / "outside/alias").unlink()
    report = audit(node.config)
    os.link(target, node.base / "outside/alias")
    assert [(c.what, c.error) for c in repair(report)] == [
        ("owner", "it has 2 hard links, and a change would reach its other names too")
    ]
    assert os.stat(target).st_uid == node.other[0]


def test_hxctl_offline_audit(node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(node, tmp_path)
    (node.blobs / BLOB).write_bytes(b"x")
    os.chown(node.blobs / BLOB, *node.ollama)
    (node.blobs / BLOB).chmod(0o666)
    args = argparse.Namespace(offline=True, config=config, bus=None, fix=False, json=False)
    assert audit_cli.run(args) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{node.blobs / BLOB}: error HX200: world-writable file (mode 0666): any local user can change its content",
        "    fix: hxctl audit --fix sets mode 0644",
        "audit: 1 error, 0 warnings, 0 notes",
    ]
    args.fix = args.json = True
    assert audit_cli.run(args) == 0
    assert json.loads(capsys.readouterr().out) == {
        "findings": [],
        "changes": [{"path": str(node.blobs / BLOB), "what": "mode", "before": "0666", "after": "0644"}],
        "errors": 0,
        "warnings": 0,
        "infos": 0,
    }


def test_unprivileged_fix_changes_nothing(node: Node) -> None:
    config = _write_config(node, node.base)  # readable to the other account, unlike tmp_path
    (node.blobs / BLOB).write_bytes(b"x")
    os.chown(node.blobs / BLOB, *node.ollama)
    (node.blobs / BLOB).chmod(0o666)
    node.paths.state_dir.chmod(0o700)
    before = snapshot(node.base)
    argv = ["--offline", "--config", str(config), "audit", "--fix"]
    code = f"import sys; from hxd.cli import main; sys.exit(main({argv!r}))"
    result = subprocess.run(
        [*as_user(OTHER), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert snapshot(node.base) == before
    # Its job cannot even take the node lock in hxd's private state directory: refused before anything is read.
    assert result.returncode == 1 and result.stdout == "", result
    assert f"{node.paths.state_dir}/locks: cannot use the lock directory (Permission denied)" in result.stderr


def _write_config(node: Node, directory: Path) -> Path:
    config = directory / "hxd.toml"
    config.write_text(dump_config(node.config))
    config.chmod(0o644)
    return config


def test_hxctl_audit_speaks_the_bus_contract(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, str, list[object]]] = []

    def call_hxd(args: argparse.Namespace, member: str, signature: str, body: list[object]) -> list[object]:
        calls.append((member, signature, body))
        finding = ("HX200", "error", "/data/x", "world-writable file (mode 0666)", "hxctl audit --fix sets mode 0644")
        return [[finding], [("/data/y", "owner", "root:root", "ollama:ollama")]]

    monkeypatch.setattr(audit_cli, "call_hxd", call_hxd)
    args = argparse.Namespace(offline=False, bus=None, fix=True, json=True)
    assert audit_cli.run(args) == 1
    assert [(member, signature) for member, signature, _ in calls] == [("Audit", "a{sv}")]
    options = calls[0][2][0]
    assert isinstance(options, dict) and options["fix"].signature == "b" and options["fix"].value is True
    output = json.loads(capsys.readouterr().out)
    assert output["findings"][0]["path"] == "/data/x" and output["errors"] == 1
    assert output["changes"] == [{"path": "/data/y", "what": "owner", "before": "root:root", "after": "ollama:ollama"}]
    args.fix = args.json = False
    assert audit_cli.run(args) == 1
    assert calls[1][2] == [{}]
    assert capsys.readouterr().out.splitlines()[0] == "changed /data/y: owner root:root -> ollama:ollama"
