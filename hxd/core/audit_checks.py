"""The audit's checks: what each entry of a managed path must look like, and the finding and repair when it does not.

The expected state is the seed nodes' (docs/node-layout.md): model storage ``ollama:ollama``, the env file
``root:<ollama group>`` 0640, nothing world-writable. hxd's own directories belong to the ``hxd`` account
(``units/sysusers.d/hxd.conf``, which systemd's ``StateDirectory=`` and ``LogsDirectory=`` give them to) or root; on
a system without that account, to the account running the audit. POSIX ACLs are not read: access is judged from the
mode bits.

An entry's problems become findings (HX200-HX230); those ``--fix`` addresses also become one ``Repair`` with the
target mode and owner. Modes: ``audit.file_mode``/``audit.dir_mode`` in the store, ``audit.env_file_mode`` for the
env file; in hxd's own trees, which its unit keeps private (UMask=0077), only the bits at fault are cleared. Owners:
the Ollama account in the store, ``root:<ollama group>`` for the env file, hxd's account for its own. The walk that
hands the entries over is ``hxd.core.audit``; the repairs are made by ``audit_repair``.
"""

from __future__ import annotations

import errno
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hxd.core.accounts import Account, can_enter, ollama_account, owner_name, user_name
from hxd.core.audit_repair import refusal
from hxd.core.audit_report import AuditReport, Repair, Severity
from hxd.core.config import Config

Kind = Literal["store", "env", "hxd"]

# The account hxd's unit runs as (User=hxd), created by units/sysusers.d/hxd.conf.
HXD_USER = "hxd"

# Ollama's BlobsPath accepts exactly these names (the ':' form is renamed to '-' by its fixBlobs at start).
DIGEST_NAME = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
# A download in progress: <blob>-partial (data), <blob>-partial-<N> (resume state), <blob>.tmp (tensor pulls).
PARTIAL_NAME = re.compile(r"sha256[:-][0-9a-fA-F]{64}(?:-partial(?:-[0-9]+)?|\.tmp)")
_PRUNE = "Ollama deletes names that are not digests from blobs/ when it starts (unless OLLAMA_NOPRUNE is set)"
_OUTSIDE = "it is outside the managed paths, so --fix does not change it"


@dataclass(frozen=True)
class Root:
    """One managed path, and which checks its entries get."""

    key: str  # the paths.* key
    path: Path
    kind: Kind


def managed_roots(config: Config) -> list[Root]:
    """The configured paths the audit covers, in the order it walks them."""
    paths = config.paths
    return [
        Root("canonical", paths.canonical, "store"),
        Root("bulk", paths.bulk, "store"),
        Root("legacy", paths.legacy, "store"),
        Root("env_file", paths.env_file, "env"),
        Root("log_dir", paths.log_dir, "hxd"),
        Root("state_dir", paths.state_dir, "hxd"),
    ]


def hxd_account() -> Account:
    """The account hxd runs as under its unit; the account running this audit where there is none."""
    try:
        entry = pwd.getpwnam(HXD_USER)
    except KeyError:
        uid, gid = os.geteuid(), os.getegid()
        return Account(user_name(uid), uid, gid, frozenset([*os.getgroups(), gid]))
    return Account(HXD_USER, entry.pw_uid, entry.pw_gid, frozenset(os.getgrouplist(HXD_USER, entry.pw_gid)))


@dataclass(frozen=True)
class _Problem:
    """A finding about to be made on one entry; ``fix`` is what --fix would change for it, if anything."""

    code: str
    severity: Severity
    message: str
    fix: Literal["mode", "owner", ""] = ""
    hint: str = ""  # for a problem --fix does not address
    clear: int = 0  # the mode bits at fault, for trees without a configured mode (hxd's own)


class Checks:
    """The checks of one audit run: the accounts entries are judged against, and the report they go to."""

    def __init__(self, config: Config, report: AuditReport, territory: list[str]) -> None:
        self.config = config
        self.report = report
        self.ollama = ollama_account(config)
        self.hxd = hxd_account()
        self.territory = territory  # the managed paths' real paths: a symlink may point anywhere under these

    def accounts(self) -> None:
        """HX215 when there is no Ollama account, without which the store's owners and access cannot be judged."""
        if isinstance(self.ollama, str):
            self.report.add(
                "HX215",
                "error",
                str(self.config.paths.canonical),
                f"{self.ollama}: owners and access in the model store were not checked",
                "install Ollama (its package creates the account), or set ollama.user and ollama.group in hxd.toml",
            )

    def entry(self, root: Root, real: str, path: str, parts: tuple[str, ...], st: os.stat_result) -> None:
        """Check one entry, report its findings and the repair that addresses them."""
        if stat.S_ISLNK(st.st_mode):
            self.symlink(path)
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
        refused = refusal(st)
        listed = False
        for p in problems:
            if p.fix == "mode" and new_mode is not None:
                hint = _hint(refused, f"sets mode {new_mode:04o}", f"chmod {new_mode:04o} {path}")
            elif p.fix == "owner" and new_owner is not None:
                owner = owner_name(*new_owner)
                hint = _hint(refused, f"gives it to {owner}", f"chown -h {owner} {path}")
            else:
                hint = p.hint
            listed = self.report.add(p.code, p.severity, path, p.message, hint) or listed
        if listed and not refused and (new_mode is not None or new_owner is not None):
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

    def _hxd(self, root: Root, st: os.stat_result) -> list[_Problem]:
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

    def symlink(self, path: str) -> None:
        """HX202-HX204: the walk never follows a symlink, so say where one leads when that is a problem."""
        try:
            real = os.path.realpath(path, strict=True)
        except (FileNotFoundError, NotADirectoryError):
            self.report.add(
                "HX202",
                "error",
                path,
                f"dangling symlink: its target {_readlink(path)} does not exist",
                "remove the symlink, or restore what it points to",
            )
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.report.add(
                    "HX203",
                    "error",
                    path,
                    f"symlink loop: resolving {_readlink(path)} comes back to a symlink already followed",
                    "remove the symlink, or point it at a real file or directory",
                )
            else:
                self.unreadable(path, exc)
            return
        if not self._inside(real):
            self.report.add(
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

    def env_not_regular(self, path: str, what: str) -> None:
        """HX223: the env file's owner and mode are only judged on the file itself, not on a link or a directory."""
        self.report.add(
            "HX223",
            "warning",
            path,
            f"paths.env_file is {what}, so its owner and mode were not audited",
            "point paths.env_file at the file itself",
        )

    def ancestors(self, roots: list[Root]) -> None:
        """The directories above each managed path: nobody may rename it away, and Ollama must reach its store."""
        above: dict[str, set[str]] = {}  # directory -> the store directories below it
        for root in roots:
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
                self.unreadable(path, exc)
                continue
            self.report.scanned += 1
            mode = stat.S_IMODE(st.st_mode)
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                self.report.add(
                    "HX200",
                    "error",
                    path,
                    f"world-writable directory (mode {mode:04o}) above a managed path: any local user can rename "
                    "what hxd manages away and put something else in its place",
                    f"chmod o-w {path} (or +t); {_OUTSIDE}",
                )
            account = self.ollama
            if stores and not isinstance(account, str) and not can_enter(st, account):
                self.report.add(
                    "HX212",
                    "error",
                    path,
                    f"the Ollama user {account.name} cannot enter this directory (mode {mode:04o}, owner "
                    f"{owner_name(st.st_uid, st.st_gid)}), so Ollama cannot reach {', '.join(sorted(stores))}",
                    f"chmod o+x {path}, or give the group {self.config.ollama.group} access; {_OUTSIDE}",
                )

    def unreadable(self, path: str, exc: OSError | None) -> None:
        """HX291: nothing was checked at ``path`` (``exc`` None: it was replaced while the audit ran)."""
        reason = exc.strerror if exc is not None else "it was replaced while the audit ran"
        self.report.add(
            "HX291",
            "warning",
            path,
            f"cannot audit this entry: {reason}",
            "run the audit as root (hxd's unit has the capabilities to read everything it manages)",
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


def _hint(refused: str, change: str, command: str) -> str:
    return f"not changed by --fix ({refused}): {command}" if refused else f"hxctl audit --fix {change}"


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "(unreadable)"
