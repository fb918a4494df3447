"""The migration plan (``hxctl migrate --dry-run``): what moves where, and every reason to refuse, before any write.

A refusal is ``Refused`` (``org.hxinfra.hxd1.Error.Refused``) with a message that says what to change. A store that
already is the canonical layout is no refusal but nothing to do (``AlreadyAligned``), which the engine reports as
success. A run makes its own plan while it holds the node's lock, so nothing the dry run saw can be stale.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from hxd.core.accounts import Account, can_enter, ollama_account
from hxd.core.config import Config
from hxd.core.envfile_reader import read_envfile
from hxd.core.errors import InvalidArgs, Refused, Unreadable
from hxd.core.ollama_env import ollama_var
from hxd.core.paths import nearest_existing
from hxd.core.safepaths import check_path
from hxd.core.store import Store, StoreError

BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")
STAGING = ".hxd-staging"
# Free space kept beyond the bytes to copy: 5 %, at least 1 GiB (a full disk breaks Ollama's own writes too).
_MARGIN_FRACTION, _MARGIN_MIN = 0.05, 1 << 30


class AlreadyAligned(Refused):
    """The source already is the canonical layout. Raised to stop planning early; the engine turns it into a
    successful outcome, as ``systemctl enable`` of an enabled unit succeeds (a refusal only if it ever escaped)."""

    @property
    def outcome(self) -> dict[str, object]:
        """What a plan or a run reports instead of its summary: nothing changed, and why."""
        return {"changed": False, "message": str(self)}


@dataclass(frozen=True)
class Targets:
    """The paths a migration works on: the config's, or a call's overrides."""

    source: Path
    canonical: Path
    bulk: Path
    legacy: Path
    env_file: Path


@dataclass
class Plan:
    targets: Targets
    same_fs: bool
    blobs: dict[str, int]  # name -> size, every valid blob in the source
    manifests: list[str]  # paths relative to manifests/
    skipped: list[str]  # partial and temporary downloads, and other non-digest names in blobs/
    unreferenced: list[str]  # valid blobs no manifest references (copied anyway: nothing is lost)
    present: dict[str, int]  # blobs already in bulk/blobs (an earlier, interrupted run)
    bytes_total: int
    bytes_to_copy: int
    free_bytes: int
    owner: tuple[str, str, int, int]  # user, group, uid, gid
    foreign: list[str]  # same filesystem: blobs copied because their owner or mode is not Ollama's
    steps: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """The plan as plain values, for D-Bus, JSON and the dry-run table; ``changed``: the plan changes the node
        (false only in AlreadyAligned's outcome)."""
        t = self.targets
        return {
            "changed": True,
            "source": str(t.source),
            "canonical": str(t.canonical),
            "bulk": str(t.bulk),
            "legacy": str(t.legacy),
            "env_file": str(t.env_file),
            "same_filesystem": self.same_fs,
            "blobs": len(self.blobs),
            "manifests": len(self.manifests),
            "skipped": sorted(self.skipped),
            "unreferenced": sorted(self.unreferenced),
            "already_present": len(self.present),
            "bytes_total": self.bytes_total,
            "bytes_to_copy": self.bytes_to_copy,
            "free_bytes": self.free_bytes,
            "owner": f"{self.owner[0]}:{self.owner[1]}",
            "copied_for_owner_or_mode": len(self.foreign),
            "steps": self.steps,
        }


def targets(config: Config, overrides: dict[str, str]) -> Targets:
    """The configured paths with a call's overrides, each checked by the rule hxd.toml's paths follow
    (hxd.core.safepaths; InvalidArgs naming the option); the source defaults to what OLLAMA_MODELS names."""
    paths = {
        "canonical": config.paths.canonical,
        "bulk": config.paths.bulk,
        "legacy": config.paths.legacy,
        "env_file": config.paths.env_file,
    }
    checked = {}
    for key, value in overrides.items():
        try:
            checked[key] = check_path(value)
        except ValueError as exc:
            raise InvalidArgs(f"option {key}: {exc}") from None
    paths.update({k: v for k, v in checked.items() if k != "source"})
    if "source" in checked:
        source = checked["source"]
    else:
        try:
            models = ollama_var(read_envfile(paths["env_file"]).environment.get("OLLAMA_MODELS", ""))
        except Unreadable:
            models = ""
        source = Path(models) if models else paths["legacy"]
    return Targets(source=source, **paths)


def make_plan(config: Config, t: Targets, *, resuming: bool = False) -> Plan:
    """Inspect everything and refuse early; ``resuming`` accepts blobs an earlier run left in bulk storage.
    The trees belong to another account and can change while they are read: a file that vanishes or turns into
    something else on the way is a refusal that says so, not a crash."""
    try:
        return _make_plan(config, t, resuming)
    except OSError as exc:
        raise changed_under(exc, t.source) from None


def changed_under(exc: OSError, where: Path) -> Refused:
    """The refusal for a store that changed while hxd read it (its owner is at work): nothing was written yet."""
    return Refused(
        f"{exc.filename or where}: {exc.strerror} while planning; the store changed while hxd read it: "
        "run it again once nothing else writes to it"
    )


def _make_plan(config: Config, t: Targets, resuming: bool) -> Plan:
    source = _resolve(t.source, "source")
    for name, path in (("canonical", t.canonical), ("bulk", t.bulk), ("legacy", t.legacy)):
        _resolve(path, name, must_exist=False)
    if not source.is_dir():
        raise Refused(f"the source store {t.source} does not exist; pass --source or fix OLLAMA_MODELS")
    store = Store(source)
    if not (store.blobs_dir.is_dir() and store.manifests_dir.is_dir()):
        raise Refused(f"{source} is not an Ollama store (no blobs/ and manifests/ in it)")
    bulk = Path(os.path.realpath(t.bulk))
    if bulk == source or _inside(bulk, source) or _inside(source, bulk):
        raise Refused(f"the source {source} and the bulk storage {bulk} contain each other; pick another bulk")
    if not resuming and Path(os.path.realpath(t.bulk / "blobs")) == Path(os.path.realpath(store.blobs_dir)):
        raise AlreadyAligned(
            f"already aligned: {t.source} is the canonical layout (its blobs are in {t.bulk}); nothing to do"
        )
    if t.canonical.is_symlink():
        raise Refused(f"{t.canonical} is a symlink; the canonical path must be a directory (or not exist)")
    if os.path.realpath(t.legacy) != str(source) and _has_other_data(t.legacy):
        raise Refused(f"the legacy path {t.legacy} holds data that is not the source store; move it aside")
    account = _ollama(config)
    blobs, skipped, foreign = _blobs(store, (account.uid, account.gid, config.audit.file_mode))
    manifests, referenced = _manifests(store)
    present = _present(t.bulk, blobs, resuming)
    if not resuming:
        _refuse_other_data(t)
    same_fs = _mount(store.blobs_dir) == _mount(t.bulk)
    copied = [name for name in blobs if name not in present and (name in foreign or not same_fs)]
    to_copy = sum(blobs[name] for name in copied)
    free = _free(t.bulk)
    needed = to_copy + max(int(to_copy * _MARGIN_FRACTION), _MARGIN_MIN) if to_copy else 0
    if needed > free:
        raise Refused(f"{t.bulk} has {_gib(free)} free; copying needs {_gib(needed)} with a safety margin")
    _refuse_untraversable(account, [t.bulk, t.canonical])
    plan = Plan(
        t,
        same_fs,
        blobs,
        manifests,
        skipped,
        sorted(set(blobs) - referenced),
        present,
        sum(blobs.values()),
        to_copy,
        free,
        (account.name, config.ollama.group, account.uid, account.gid),
        sorted(foreign) if same_fs else [],
    )
    plan.steps = _steps(plan, config.ollama.unit)
    return plan


def _resolve(path: Path, name: str, must_exist: bool = True) -> Path:
    """Resolve symlinks, naming the path on a loop; a missing path resolves as far as it exists."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        if not must_exist:
            return Path(os.path.realpath(path))
        raise Refused(f"the {name} path {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"the {name} path {path} is a symlink loop") from None
        raise Refused(f"the {name} path {path} cannot be resolved: {exc.strerror}") from None


def _inside(path: Path, parent: Path) -> bool:
    return parent in path.parents


def _has_other_data(path: Path) -> bool:
    """True for a real, non-empty directory or a file: something a symlink must not replace."""
    if path.is_symlink() or not os.path.lexists(path):
        return False
    return not path.is_dir() or any(path.iterdir())


def _blobs(store: Store, wanted: tuple[int, int, int]) -> tuple[dict[str, int], list[str], set[str]]:
    """Valid blobs (name -> size), other names, and the blobs whose owner, group or mode is not ``wanted``
    (Ollama's): on one filesystem these are copied, not linked, since a link shares the source's inode."""
    blobs: dict[str, int] = {}
    skipped: list[str] = []
    foreign: set[str] = set()
    with os.scandir(store.blobs_dir) as entries:
        for entry in entries:
            if BLOB_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                blobs[entry.name] = st.st_size
                if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != wanted:
                    foreign.add(entry.name)
            else:
                skipped.append(entry.name)
    return blobs, skipped, foreign


def _manifests(store: Store) -> tuple[list[str], set[str]]:
    manifests: list[str] = []
    referenced: set[str] = set()
    for path in store.manifest_files():
        try:
            manifest = store.read_manifest(path)
        except StoreError as exc:
            raise Refused(f"the source store has a manifest hxd cannot use: {exc}") from None
        manifests.append(str(path.relative_to(store.manifests_dir)))
        referenced.update(layer.blob_name for layer in manifest.layers)
    missing = sorted(referenced - {p.name for p in store.blobs_dir.iterdir()})
    if missing:
        raise Refused(
            f"the source store is incomplete: {missing[0]} is referenced but missing "
            f"({len(missing)} in all); re-pull the affected models first"
        )
    return manifests, referenced


def _present(bulk: Path, blobs: dict[str, int], resuming: bool) -> dict[str, int]:
    """Blobs already in bulk/blobs with the right size (from an interrupted run); verified again unless journaled."""
    if not resuming:
        return {}
    found: dict[str, int] = {}
    for name, size in blobs.items():
        try:
            if (bulk / "blobs" / name).stat().st_size == size:
                found[name] = size
        except FileNotFoundError:
            continue
    return found


def _refuse_other_data(t: Targets) -> None:
    """A fresh migration writes into empty (or absent) bulk directories and an empty canonical directory only."""
    for part in ("blobs", "manifests"):
        directory = t.bulk / part
        if directory.is_dir() and any(directory.iterdir()):
            raise Refused(f"{directory} already holds data; empty it, or resume the migration that left it")
    for sub in (t.bulk / STAGING,):
        if sub.exists():
            raise Refused(f"{sub} exists from an earlier migration; resume it (hxctl migrate --resume)")
    if t.canonical.is_dir():
        for entry in t.canonical.iterdir():
            if entry.name in ("blobs", "manifests") and entry.is_symlink():
                continue
            if Path(os.path.realpath(t.canonical)) == Path(os.path.realpath(t.source)):
                continue  # the store itself lives at the canonical path (llm-02): its subdirectories get swapped
            raise Refused(f"{t.canonical} holds {entry.name}, which is not part of the canonical layout")


def _mount(path: Path) -> tuple[int, int]:
    """The filesystem and the mount ``path`` (or, while it does not exist, its nearest parent) is on.

    The device number alone does not tell whether a hard link will work: bind mounts of one filesystem share it,
    yet link() between them fails with EXDEV, and hxd's unit makes each of its paths a bind mount
    (``ReadWritePaths=``). The mount's id (``mnt_id`` in /proc/self/fdinfo) tells them apart.
    """
    fd = os.open(nearest_existing(path), os.O_PATH | os.O_CLOEXEC)
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines())
        return os.fstat(fd).st_dev, int(fields["mnt_id"])
    finally:
        os.close(fd)


def _free(path: Path) -> int:
    st = os.statvfs(nearest_existing(path))
    return st.f_bavail * st.f_frsize


def _ollama(config: Config) -> Account:
    account = ollama_account(config)
    if isinstance(account, str):
        user, group = config.ollama.user, config.ollama.group
        raise Refused(f"the Ollama account {user}:{group} does not exist; set ollama.user/group")
    return account


def _refuse_untraversable(account: Account, paths: list[Path]) -> None:
    """Every existing ancestor of the new paths must let the Ollama user through, or Ollama cannot open its store."""
    for path in paths:
        for parent in reversed(path.parents):
            if not parent.exists():
                break
            st = parent.stat()
            if not can_enter(st, account):
                raise Refused(
                    f"{parent} ({stat.filemode(st.st_mode)}) does not let {account.name} through; "
                    f"chmod o+x {parent} or pick another path"
                )


def _steps(plan: Plan, unit: str) -> list[str]:
    t = plan.targets
    how = "hash, then hard-link (same filesystem)" if plan.same_fs else "copy, hashing every byte,"
    foreign = (
        f" ({len(plan.foreign)} of them copied: their owner or mode is not {plan.owner[0]}:{plan.owner[1]}'s)"
        if plan.foreign
        else ""
    )
    return [
        f"{how} {len(plan.blobs) - len(plan.present)} blobs{foreign} ({_gib(plan.bytes_total)}) from {t.source}/blobs "
        f"to {t.bulk}/blobs via {t.bulk}/{STAGING}, while Ollama keeps serving",
        f"copy {len(plan.manifests)} manifests byte for byte (mtimes kept) to {t.bulk}/manifests",
        "verify: every manifest's blobs present with the right size, every copied blob's sha256 equal to its name",
        f"set owner {plan.owner[0]}:{plan.owner[1]} on everything copied",
        f"stop {unit} (systemd), copy what changed since the first copy",
        f"switch: {t.canonical}/blobs -> {t.bulk}/blobs, {t.canonical}/manifests -> {t.bulk}/manifests, "
        f"{t.legacy} -> {t.canonical} (the old directory is kept as a backup), OLLAMA_MODELS={t.canonical} "
        f"in {t.env_file}",
        f"start {unit}; check that /api/tags lists the same models with the same digests, else roll back",
    ]


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.2f} GiB"
