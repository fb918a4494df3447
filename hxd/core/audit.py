"""Ownership and permission audit of everything hxd manages, and the repairs that are safe to make (``--fix``).

The trees are the configured paths: the model store (``paths.canonical``, ``paths.bulk``, ``paths.legacy``),
Ollama's env file and hxd's own ``paths.log_dir`` and ``paths.state_dir``. The expected state is the seed nodes'
(docs/node-layout.md): model storage ``ollama:ollama``, the env file ``root:<ollama group>`` 0640, nothing
world-writable. hxd's own directories belong to the ``hxd`` account (``units/sysusers.d/hxd.conf``, which systemd's
``StateDirectory=`` and ``LogsDirectory=`` give them to) or root; on a system without that account, to the account
running the audit.

Each finding has a stable code (HX2xx), a severity, the path, a one-line message and a fix hint. Codes are a
contract for scripts and never change meaning:

- HX200-HX204, every tree: world-writable (sticky directories excepted), setuid/setgid files, symlinks that
  dangle, loop, or point outside the managed paths.
- HX210-HX215, the model store: owner and group, directories the Ollama user cannot enter (also the directories
  above the store), names in ``blobs/`` that are not digests, in-progress downloads, a missing Ollama account.
- HX220-HX223, the env file: owner, mode, world-readable, not a regular file.
- HX230, hxd's own files: owned by another account.
- HX290-HX294, the audit itself: a path that does not exist, an entry it cannot read, the entry cap, the
  findings cap, a repair that was not made.

The walk uses ``lstat`` and directory descriptors opened with ``O_NOFOLLOW``, so it never follows a symlink, in
or out of a managed path; each real directory is walked once, by (st_dev, st_ino), so the canonical layout's
``blobs``/``manifests`` and legacy symlinks do not make it walk the store twice. Work is bounded by
``MAX_ENTRIES`` and the report by ``MAX_FINDINGS``. POSIX ACLs are not read: access is judged from the mode bits.

``repair`` (``--fix``) changes only modes and owners of regular files and directories inside the managed paths,
never the directories above them. Modes: ``audit.file_mode``/``audit.dir_mode`` in the store,
``audit.env_file_mode`` for the env file; in hxd's own trees, which its unit keeps private (UMask=0077), only the
bits at fault are cleared. Owners: the Ollama account in the store, ``root:<ollama group>`` for the env file, hxd's
account for its own. It reaches each entry again from its managed path's real directory, one
``O_PATH|O_NOFOLLOW`` component at a time, and refuses it if it is no longer the very inode with the very mode and
owner the audit saw (TOCTOU); a file with other hard links is never changed, since the change would reach its
other names.
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hxd.core.accounts import Account, can_enter, ollama_account, owner_name, user_name
from hxd.core.config import Config
from hxd.core.jobs import JobControl

Severity = Literal["error", "warning", "info"]
Kind = Literal["store", "env", "hxd"]

# The walk stops after this many entries (with HX292): a model store holds thousands of files, not millions.
MAX_ENTRIES = 5_000_000
# The report lists at most this many findings; HX293 counts the rest, and --fix repairs only the listed ones.
MAX_FINDINGS = 10_000
# Progress and cancellation are looked at once every this many entries.
_CHECK_EVERY = 1000
# The account hxd's unit runs as (User=hxd), created by units/sysusers.d/hxd.conf.
HXD_USER = "hxd"

# Ollama's BlobsPath accepts exactly these names (the ':' form is renamed to '-' by its fixBlobs at start).
DIGEST_NAME = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
# A download in progress: <blob>-partial (data), <blob>-partial-<N> (resume state), <blob>.tmp (tensor pulls).
PARTIAL_NAME = re.compile(r"sha256[:-][0-9a-fA-F]{64}(?:-partial(?:-[0-9]+)?|\.tmp)")
_PRUNE = "Ollama deletes names that are not digests from blobs/ when it starts (unless OLLAMA_NOPRUNE is set)"
_OUTSIDE = "it is outside the managed paths, so --fix does not change it"


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    path: str
    message: str
    hint: str


@dataclass(frozen=True)
class Repair:
    """What ``repair`` may change on one entry, and the entry as the audit saw it; it refuses if that differs."""

    path: str
    root: str  # the real path of the managed path the entry was found under, at audit time
    parts: tuple[str, ...]  # the components from ``root`` down to the entry
    dev: int
    ino: int
    mode: int  # st_mode, file type included
    uid: int
    gid: int
    new_mode: int | None  # permission bits to set, or None
    new_owner: tuple[int, int] | None  # (uid, gid) to set, or None


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    repairs: list[Repair] = field(default_factory=list)
    scanned: int = 0  # entries looked at (lstat'd), symlinks and the managed paths themselves included
    # Findings by severity, those beyond MAX_FINDINGS included.
    counts: dict[str, int] = field(default_factory=lambda: {"error": 0, "warning": 0, "info": 0})

    @property
    def errors(self) -> int:
        return self.counts["error"]

    @property
    def warnings(self) -> int:
        return self.counts["warning"]

    @property
    def infos(self) -> int:
        return self.counts["info"]


@dataclass(frozen=True)
class Change:
    """One change ``repair`` made (``error`` empty) or tried and did not make (``error`` says why)."""

    path: str
    what: Literal["mode", "owner"]
    before: str  # "0666", or "user:group"
    after: str
    error: str = ""


@dataclass(frozen=True)
class AuditResult:
    """An audit (with ``fix``: the one after the repairs, plus HX294 for each change not made) and the changes."""

    report: AuditReport
    changes: list[Change]

    def summary(self) -> dict[str, int]:
        """The counts for ``LastAudit`` and the feature state."""
        report = self.report
        return {
            "errors": report.errors,
            "warnings": report.warnings,
            "infos": report.infos,
            "scanned": report.scanned,
            "changes": len(self.changes),
        }


@dataclass(frozen=True)
class _Root:
    key: str  # the paths.* key
    path: Path
    kind: Kind


def run_audit(config: Config, control: JobControl | None = None, *, fix: bool = False) -> AuditResult:
    """Audit; with ``fix``, repair what is safe, then audit again to report what remains.

    Blocking (walks whole trees): the daemon calls it in a worker thread. ``control`` gets the progress and may
    cancel the first walk (Cancelled); once repairs start, they and the audit after them run to the end, so the
    list of changes always comes back complete.
    """
    report = audit(config, control)
    if not fix or not report.repairs:
        return AuditResult(report, [])
    attempted = repair(report, control)
    after = audit(config, control, cancellable=False)
    for change in attempted:
        if change.error:
            _add(
                after,
                "HX294",
                "error",
                change.path,
                f"not changed ({change.what} {change.before} -> {change.after}): {change.error}",
                "run hxctl audit again; if it stays, change it by hand",
                always=True,
            )
    after.findings.sort(key=_order)
    return AuditResult(after, [change for change in attempted if not change.error])


def audit(config: Config, control: JobControl | None = None, *, cancellable: bool = True) -> AuditReport:
    """Every check over every managed path; the findings sorted by path and code."""
    walk = _Audit(config, control, cancellable)
    walk.run()
    walk.report.findings.sort(key=_order)
    return walk.report


def _order(finding: Finding) -> tuple[str, str]:
    return finding.path, finding.code


def repair(report: AuditReport, control: JobControl | None = None) -> list[Change]:
    """Make the report's repairs; each change made or refused is listed, none raises."""
    if control is not None:
        control.update(phase="fix", items_done=0, items_total=len(report.repairs))
    changes: list[Change] = []
    for done, item in enumerate(report.repairs, 1):
        changes.extend(_repair(item))
        if control is not None:
            control.update(items_done=done)
    return changes


def _roots(config: Config) -> list[_Root]:
    paths = config.paths
    return [
        _Root("canonical", paths.canonical, "store"),
        _Root("bulk", paths.bulk, "store"),
        _Root("legacy", paths.legacy, "store"),
        _Root("env_file", paths.env_file, "env"),
        _Root("log_dir", paths.log_dir, "hxd"),
        _Root("state_dir", paths.state_dir, "hxd"),
    ]


def hxd_account() -> Account:
    """The account hxd runs as under its unit; the account running this audit where there is none."""
    try:
        entry = pwd.getpwnam(HXD_USER)
    except KeyError:
        uid, gid = os.geteuid(), os.getegid()
        return Account(user_name(uid), uid, gid, frozenset([*os.getgroups(), gid]))
    return Account(HXD_USER, entry.pw_uid, entry.pw_gid, frozenset(os.getgrouplist(HXD_USER, entry.pw_gid)))


def _add(
    report: AuditReport, code: str, severity: Severity, path: str, message: str, hint: str, *, always: bool = False
) -> bool:
    """Count a finding and list it while there is room (``always``: regardless); True when it was listed."""
    report.counts[severity] += 1
    if len(report.findings) >= MAX_FINDINGS and not always:
        return False
    report.findings.append(Finding(code, severity, path, message, hint))
    return True


@dataclass(frozen=True)
class _Problem:
    """A finding about to be made on one entry; ``fix`` is what --fix would change for it, if anything."""

    code: str
    severity: Severity
    message: str
    fix: Literal["mode", "owner", ""] = ""
    hint: str = ""  # for a problem --fix does not address
    clear: int = 0  # the mode bits at fault, for trees without a configured mode (hxd's own)


# An open directory: its descriptor (for stat and open relative to it) and its listing.
_Listing = tuple[int, "os._ScandirIterator[str]"]


class _Audit:
    """One audit run: the accounts, the managed paths, what has been walked, and the report."""

    def __init__(self, config: Config, control: JobControl | None, cancellable: bool) -> None:
        self.config = config
        self.control = control
        self.cancellable = cancellable
        self.report = AuditReport()
        self.ollama = ollama_account(config)
        self.hxd = hxd_account()
        self.roots = _roots(config)
        self.seen_dirs: set[tuple[int, int]] = set()
        self.root_ids: dict[tuple[int, int], str] = {}  # each managed path that is no symlink -> its key
        self.territory: list[str] = []  # their real paths: a symlink may point anywhere under these
        self.stopped = False
        for root in self.roots:
            try:
                st = os.lstat(root.path)
            except OSError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                self.root_ids.setdefault((st.st_dev, st.st_ino), root.key)
                self.territory.append(os.path.realpath(root.path))

    def run(self) -> None:
        if isinstance(self.ollama, str):
            _add(
                self.report,
                "HX215",
                "error",
                str(self.config.paths.canonical),
                f"{self.ollama}: owners and access in the model store were not checked",
                "install Ollama (its package creates the account), or set ollama.user and ollama.group in hxd.toml",
            )
        self._ancestors()
        for root in self.roots:
            if self.stopped:
                break
            if self.control is not None:
                self.control.update(phase=f"audit {root.key}", items_done=self.report.scanned, items_total=0)
            self._root(root)
        if self.control is not None:
            self.control.update(items_done=self.report.scanned)
        if len(self.report.findings) >= MAX_FINDINGS:
            self._omitted()

    # The walk.

    def _count(self, path: str) -> bool:
        """Count one entry; False (after HX292, once) when the cap is reached and the audit must stop."""
        report = self.report
        if report.scanned >= MAX_ENTRIES:
            if not self.stopped:
                self.stopped = True
                _add(
                    report,
                    "HX292",
                    "error",
                    path,
                    f"the audit stopped after {MAX_ENTRIES} entries; this entry and those after it were not checked",
                    "a model store holds thousands of files, not millions: find what fills these trees and remove it",
                    always=True,
                )
            return False
        report.scanned += 1
        if self.control is not None and report.scanned % _CHECK_EVERY == 0:
            if self.cancellable:
                self.control.check()
            self.control.update(items_done=report.scanned)
        return True

    def _root(self, root: _Root) -> None:
        path = str(root.path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            _add(
                self.report,
                "HX290",
                "info",
                path,
                f"paths.{root.key} does not exist, so there is nothing to audit there",
                f"nothing to do, unless it lives elsewhere: then set paths.{root.key} in hxd.toml",
            )
            return
        except OSError as exc:
            self._unreadable(path, exc)
            return
        if not self._count(path):
            return
        if stat.S_ISLNK(st.st_mode):
            self._symlink(path)
            if root.kind == "env":
                self._env_not_regular(path, "a symlink")
            return
        ident = (st.st_dev, st.st_ino)
        if self.root_ids.get(ident) != root.key:
            return  # the same directory or file as another managed path, audited under that one
        real = os.path.realpath(path)
        if root.kind == "env":
            if stat.S_ISREG(st.st_mode):
                self._entry(root, real, path, (), st)
            else:
                self._env_not_regular(path, "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            return
        self._entry(root, real, path, (), st)
        if stat.S_ISDIR(st.st_mode):
            self.seen_dirs.add(ident)
            listing = self._open_dir(real, None, path, st)
            if listing is not None:
                self._descend(root, real, listing, path)

    def _open_dir(self, name: str, dir_fd: int | None, path: str, st: os.stat_result) -> _Listing | None:
        """The directory ``name`` opened without following a symlink and listed, if it is still the one ``st`` is."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None  # gone since it was listed
        except OSError as exc:
            self._unreadable(path, exc)
            return None
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                self._unreadable(path, None)
            else:
                return fd, os.scandir(fd)  # scandir reads a duplicate of fd and closes that itself
        except OSError as exc:  # EMFILE, in a very deep tree
            self._unreadable(path, exc)
        os.close(fd)
        return None

    def _descend(self, root: _Root, real: str, top: _Listing, top_path: str) -> None:
        """Everything under the directory ``top``, depth first, one descriptor and listing per level."""
        stack: list[tuple[_Listing, str, tuple[str, ...]]] = [(top, top_path, ())]
        try:
            while stack and not self.stopped:
                (fd, entries), dir_path, dir_parts = stack[-1]
                entry = next(entries, None)
                if entry is None:
                    stack.pop()
                    entries.close()
                    os.close(fd)
                    continue
                name = entry.name
                path, parts = f"{dir_path}/{name}", (*dir_parts, name)
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since it was listed (Ollama renames and prunes its downloads)
                except OSError as exc:
                    self._unreadable(path, exc)
                    continue
                ident = (st.st_dev, st.st_ino)
                if self.root_ids.get(ident, root.key) != root.key or ident in self.seen_dirs:
                    continue  # another managed path (audited on its own terms), or a directory already walked
                if not self._count(path):
                    break
                self._entry(root, real, path, parts, st)
                if stat.S_ISDIR(st.st_mode):
                    self.seen_dirs.add(ident)
                    child = self._open_dir(name, fd, path, st)
                    if child is not None:
                        stack.append((child, path, parts))
        finally:
            for (fd, entries), _, _ in stack:
                entries.close()
                os.close(fd)

    # The checks.

    def _entry(self, root: _Root, real: str, path: str, parts: tuple[str, ...], st: os.stat_result) -> None:
        """Check one entry, report its findings and the repair that addresses them."""
        if stat.S_ISLNK(st.st_mode):
            self._symlink(path)
            in_blobs = root.kind == "store" and parts[:-1] == ("blobs",)
            problems = _blob_name(parts[-1], is_dir=False) if in_blobs else []
        else:
            problems = self._common(st)
            if root.kind == "store":
                problems += self._store(parts, st)
            elif root.kind == "env":
                problems += self._env(st, problems)
            else:
                problems += self._hxd(root, st)
        if not problems:
            return
        new_mode = self._target_mode(root.kind, st, problems) if any(p.fix == "mode" for p in problems) else None
        new_owner = self._target_owner(root.kind, st) if any(p.fix == "owner" for p in problems) else None
        refusal = _refusal(st)
        listed = False
        for p in problems:
            if p.fix == "mode" and new_mode is not None:
                hint = _hint(refusal, f"sets mode {new_mode:04o}", f"chmod {new_mode:04o} {path}")
            elif p.fix == "owner" and new_owner is not None:
                owner = owner_name(*new_owner)
                hint = _hint(refusal, f"gives it to {owner}", f"chown -h {owner} {path}")
            else:
                hint = p.hint
            listed = _add(self.report, p.code, p.severity, path, p.message, hint) or listed
        if listed and not refusal and (new_mode is not None or new_owner is not None):
            self.report.repairs.append(
                Repair(path, real, parts, st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid, new_mode, new_owner)
            )

    def _common(self, st: os.stat_result) -> list[_Problem]:
        mode = st.st_mode
        is_dir = stat.S_ISDIR(mode)
        problems = []
        if mode & stat.S_IWOTH and not (is_dir and mode & stat.S_ISVTX):
            problems.append(
                _Problem(
                    "HX200",
                    "error",
                    f"world-writable {'directory' if is_dir else 'file'} (mode {stat.S_IMODE(mode):04o}): any local "
                    f"user can {'add, remove and rename its entries' if is_dir else 'change its content'}",
                    fix="mode",
                    clear=stat.S_IWOTH,
                )
            )
        if not is_dir and mode & (stat.S_ISUID | stat.S_ISGID):
            bits = " and ".join(
                name for bit, name in ((stat.S_ISUID, "setuid"), (stat.S_ISGID, "setgid")) if mode & bit
            )
            problems.append(
                _Problem(
                    "HX201",
                    "error",
                    f"{bits} file (mode {stat.S_IMODE(mode):04o}, owner {owner_name(st.st_uid, st.st_gid)}): "
                    "nothing hxd manages needs to run with another account's rights",
                    fix="mode",
                    clear=stat.S_ISUID | stat.S_ISGID,
                )
            )
        return problems

    def _store(self, parts: tuple[str, ...], st: os.stat_result) -> list[_Problem]:
        is_dir = stat.S_ISDIR(st.st_mode)
        problems = _blob_name(parts[-1], is_dir) if parts[:-1] == ("blobs",) else []
        account = self.ollama
        if isinstance(account, str):
            return problems
        expected = f"model storage is {account.name}:{self.config.ollama.group}"
        if st.st_uid != account.uid:
            owner = owner_name(st.st_uid, st.st_gid)
            problems.append(
                _Problem("HX210", "error", f"owned by {owner}, not by the Ollama user: {expected}", "owner")
            )
        elif st.st_gid != account.gid:
            owner = owner_name(st.st_uid, st.st_gid)
            problems.append(
                _Problem("HX211", "warning", f"owned by {owner}, not the Ollama group: {expected}", "owner")
            )
        if is_dir and not can_enter(st, account):
            problems.append(
                _Problem(
                    "HX212",
                    "error",
                    f"the Ollama user {account.name} cannot enter this directory "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}, owner {owner_name(st.st_uid, st.st_gid)})",
                    "mode",
                )
            )
        return problems

    def _env(self, st: os.stat_result, common: list[_Problem]) -> list[_Problem]:
        account = self.ollama
        mode = stat.S_IMODE(st.st_mode)
        wanted = self.config.audit.env_file_mode
        problems = []
        group_ok = isinstance(account, str) or st.st_gid == account.gid
        if st.st_uid != 0 or not group_ok:
            problems.append(
                _Problem(
                    "HX220",
                    "error",
                    f"owned by {owner_name(st.st_uid, st.st_gid)}, not root:{self.config.ollama.group}: "
                    "only root may change what Ollama's service starts with",
                    fix="owner",
                )
            )
        if mode & stat.S_IROTH:
            problems.append(
                _Problem(
                    "HX222",
                    "error",
                    f"world-readable (mode {mode:04o}): any local user can read Ollama's settings",
                    fix="mode",
                )
            )
        elif mode != wanted and not common:
            problems.append(
                _Problem("HX221", "warning", f"mode {mode:04o}, not {wanted:04o} (audit.env_file_mode)", fix="mode")
            )
        return problems

    def _hxd(self, root: _Root, st: os.stat_result) -> list[_Problem]:
        if st.st_uid in (0, self.hxd.uid):
            return []
        what = "logs" if root.key == "log_dir" else "state"
        return [
            _Problem(
                "HX230",
                "error",
                f"owned by {owner_name(st.st_uid, st.st_gid)}, not by hxd ({self.hxd.name}) or root: "
                f"that account can change hxd's {what}",
                fix="owner",
            )
        ]

    def _target_mode(self, kind: Kind, st: os.stat_result, problems: list[_Problem]) -> int:
        """The configured mode in Ollama's trees; in hxd's own (which hxd keeps private) the bits at fault cleared."""
        audit = self.config.audit
        if kind == "store":
            return audit.dir_mode if stat.S_ISDIR(st.st_mode) else audit.file_mode
        if kind == "env":
            return audit.env_file_mode
        clear = 0
        for p in problems:
            clear |= p.clear
        return stat.S_IMODE(st.st_mode) & ~clear

    def _target_owner(self, kind: Kind, st: os.stat_result) -> tuple[int, int]:
        account = self.ollama
        if kind == "hxd":
            return self.hxd.uid, self.hxd.gid
        if kind == "env":
            return 0, st.st_gid if isinstance(account, str) else account.gid
        assert not isinstance(account, str)  # no store owner problems are found without the account
        return account.uid, account.gid

    def _symlink(self, path: str) -> None:
        try:
            real = os.path.realpath(path, strict=True)
        except (FileNotFoundError, NotADirectoryError):
            _add(
                self.report,
                "HX202",
                "error",
                path,
                f"dangling symlink: its target {_readlink(path)} does not exist",
                "remove the symlink, or restore what it points to",
            )
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                _add(
                    self.report,
                    "HX203",
                    "error",
                    path,
                    f"symlink loop: resolving {_readlink(path)} comes back to a symlink already followed",
                    "remove the symlink, or point it at a real file or directory",
                )
            else:
                self._unreadable(path, exc)
            return
        if not self._inside(real):
            _add(
                self.report,
                "HX204",
                "warning",
                path,
                f"symlink to {_readlink(path)}, which resolves to {real}, outside the managed paths: hxd neither "
                "audits nor changes what is there",
                "point it inside the managed paths, or configure that tree as one of them (paths.* in hxd.toml)",
            )

    def _inside(self, real: str) -> bool:
        """Whether the real path ``real`` is a managed path or lies under one."""
        return any(real == top or real.startswith(top.rstrip("/") + "/") for top in self.territory)

    def _env_not_regular(self, path: str, what: str) -> None:
        _add(
            self.report,
            "HX223",
            "warning",
            path,
            f"paths.env_file is {what}, so its owner and mode were not audited",
            "point paths.env_file at the file itself",
        )

    def _ancestors(self) -> None:
        """The directories above each managed path: nobody may rename it away, and Ollama must reach its store."""
        above: dict[str, set[str]] = {}  # directory -> the store directories below it
        for root in self.roots:
            if not os.path.lexists(root.path):
                continue
            link = os.path.islink(root.path)
            real = (
                Path(os.path.realpath(root.path.parent)) / root.path.name if link else Path(os.path.realpath(root.path))
            )
            for parent in reversed(real.parents):
                below = above.setdefault(str(parent), set())
                if root.kind == "store" and not link:
                    below.add(str(root.path))
        for path, stores in above.items():
            if self._inside(path):
                continue  # inside a managed path: the walk checks it
            try:
                st = os.lstat(path)
            except OSError as exc:
                self._unreadable(path, exc)
                continue
            self.report.scanned += 1
            mode = stat.S_IMODE(st.st_mode)
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                _add(
                    self.report,
                    "HX200",
                    "error",
                    path,
                    f"world-writable directory (mode {mode:04o}) above a managed path: any local user can rename "
                    "what hxd manages away and put something else in its place",
                    f"chmod o-w {path} (or +t); {_OUTSIDE}",
                )
            account = self.ollama
            if stores and not isinstance(account, str) and not can_enter(st, account):
                _add(
                    self.report,
                    "HX212",
                    "error",
                    path,
                    f"the Ollama user {account.name} cannot enter this directory (mode {mode:04o}, owner "
                    f"{owner_name(st.st_uid, st.st_gid)}), so Ollama cannot reach {', '.join(sorted(stores))}",
                    f"chmod o+x {path}, or give the group {self.config.ollama.group} access; {_OUTSIDE}",
                )

    def _unreadable(self, path: str, exc: OSError | None) -> None:
        reason = exc.strerror if exc is not None else "it was replaced while the audit ran"
        _add(
            self.report,
            "HX291",
            "warning",
            path,
            f"cannot audit this entry: {reason}",
            "run the audit as root (hxd's unit has the capabilities to read everything it manages)",
        )

    def _omitted(self) -> None:
        listed = {severity: 0 for severity in self.report.counts}
        for finding in self.report.findings:
            listed[finding.severity] += 1
        more = {severity: count - listed[severity] for severity, count in self.report.counts.items()}
        total = sum(more.values())
        if not total:
            return
        worst: Severity = "error" if more["error"] else "warning" if more["warning"] else "info"
        self.report.counts[worst] += 1
        self.report.findings.append(
            Finding(
                "HX293",
                worst,
                str(self.config.paths.canonical),
                f"{total} more findings ({more['error']} errors, {more['warning']} warnings) are not listed: the "
                f"report keeps the first {MAX_FINDINGS}",
                "fix the listed ones (hxctl audit --fix repairs what it can), then audit again",
            )
        )


def _blob_name(name: str, is_dir: bool) -> list[_Problem]:
    if DIGEST_NAME.fullmatch(name) and not is_dir:
        return []
    if PARTIAL_NAME.fullmatch(name) and not is_dir:
        return [
            _Problem(
                "HX214",
                "info",
                f"a download in progress (or abandoned); {_PRUNE}, so it goes unless the download is resumed",
                hint="nothing to do while a pull runs; otherwise resume it (ollama pull) or let Ollama prune it",
            )
        ]
    what = "a directory" if is_dir else "not a blob digest name (sha256-<64 hex digits>)"
    fate = "Ollama ignores it" if is_dir else f"{_PRUNE}, so whatever this is will be lost"
    return [
        _Problem(
            "HX213",
            "warning",
            f"{what} in blobs/: {fate}",
            hint="move it out of the model store if it is needed; otherwise remove it",
        )
    ]


def _refusal(st: os.stat_result) -> str:
    """Why --fix must leave this entry alone, or ''."""
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return "hxd changes only regular files and directories"
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return f"it has {st.st_nlink} hard links, and a change would reach its other names too"
    return ""


def _hint(refusal: str, change: str, command: str) -> str:
    return f"not changed by --fix ({refusal}): {command}" if refusal else f"hxctl audit --fix {change}"


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "(unreadable)"


# The repairs.


def _repair(item: Repair) -> list[Change]:
    # The mode first: chown clears setuid and setgid bits, which would make the audited mode unrecognizable.
    planned: list[tuple[Literal["mode", "owner"], str, str, Callable[[str], None]]] = []
    if (new_mode := item.new_mode) is not None:
        before = f"{stat.S_IMODE(item.mode):04o}"
        planned.append(("mode", before, f"{new_mode:04o}", lambda target: os.chmod(target, new_mode)))
    if (new_owner := item.new_owner) is not None:
        before = owner_name(item.uid, item.gid)
        planned.append(("owner", before, owner_name(*new_owner), lambda target: os.chown(target, *new_owner)))
    try:
        fd = _reach(item.root, item.parts)
    except OSError as exc:
        reason = (
            "a directory on its path was replaced by a symlink or a file since the audit"
            if exc.errno in (errno.ELOOP, errno.ENOTDIR)
            else f"cannot reach it: {exc.strerror}"
        )
        return [Change(item.path, what, before, after, reason) for what, before, after, _ in planned]
    try:
        refusal = _changed(os.fstat(fd), item)
        if refusal:
            return [Change(item.path, what, before, after, refusal) for what, before, after, _ in planned]
        changes = []
        for what, before, after, change in planned:
            try:
                # By the descriptor's /proc link: the very inode reached above, whatever its path is meanwhile.
                change(f"/proc/self/fd/{fd}")
            except OSError as exc:
                changes.append(Change(item.path, what, before, after, exc.strerror or str(exc)))
                continue
            now = os.fstat(fd)
            made = f"{stat.S_IMODE(now.st_mode):04o}" if what == "mode" else owner_name(now.st_uid, now.st_gid)
            changes.append(Change(item.path, what, before, made))
        return changes
    finally:
        os.close(fd)


def _reach(root: str, parts: tuple[str, ...]) -> int:
    """An O_PATH descriptor of ``root``/``parts``, opened one component at a time, following no symlink."""
    fd = os.open(root, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if index < len(parts) - 1 else 0)
            child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _changed(st: os.stat_result, item: Repair) -> str:
    """Why the entry reached now is not the one the audit saw (and so must not be changed), or ''."""
    if (st.st_dev, st.st_ino) != (item.dev, item.ino):
        return "it was replaced since the audit (another inode at that path now)"
    if (st.st_mode, st.st_uid, st.st_gid) != (item.mode, item.uid, item.gid):
        return "its mode or owner changed since the audit"
    return _refusal(st)
