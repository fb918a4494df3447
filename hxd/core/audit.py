"""Ownership and permission audit of everything hxd manages, and the repairs that are safe to make (``--fix``).

The trees are the configured paths: the model store (``paths.canonical``, ``paths.bulk``, ``paths.legacy``),
Ollama's env file and hxd's own ``paths.log_dir`` and ``paths.state_dir``. This module walks them and hands each
entry to ``audit_checks`` (what each must look like); the findings and repairs go into an ``audit_report``;
``--fix`` makes the repairs with ``audit_repair`` and audits again, to report what remains.

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
``MAX_ENTRIES`` and the report by ``MAX_FINDINGS`` (``audit_report``).
"""

from __future__ import annotations

import os
import stat

from hxd.core.audit_checks import Checks, Root, managed_roots
from hxd.core.audit_repair import repair
from hxd.core.audit_report import AuditReport, AuditResult, Finding
from hxd.core.config import Config
from hxd.core.jobs import JobControl

# The walk stops after this many entries (with HX292): a model store holds thousands of files, not millions.
MAX_ENTRIES = 5_000_000
# Progress and cancellation are looked at once every this many entries.
_CHECK_EVERY = 1000


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
            after.add(
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
    walk = _Walk(config, control, cancellable)
    walk.run()
    walk.report.findings.sort(key=_order)
    return walk.report


def _order(finding: Finding) -> tuple[str, str]:
    return finding.path, finding.code


# An open directory: its descriptor (for stat and open relative to it) and its listing.
_Listing = tuple[int, "os._ScandirIterator[str]"]


class _Walk:
    """One audit run: the managed paths, what has been walked, the checks and their report."""

    def __init__(self, config: Config, control: JobControl | None, cancellable: bool) -> None:
        self.config = config
        self.control = control
        self.cancellable = cancellable
        self.report = AuditReport()
        self.roots = managed_roots(config)
        self.seen_dirs: set[tuple[int, int]] = set()
        self.root_ids: dict[tuple[int, int], str] = {}  # each managed path that is no symlink -> its key
        territory: list[str] = []  # their real paths: a symlink may point anywhere under these
        self.stopped = False
        for root in self.roots:
            try:
                st = os.lstat(root.path)
            except OSError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                self.root_ids.setdefault((st.st_dev, st.st_ino), root.key)
                territory.append(os.path.realpath(root.path))
        self.checks = Checks(config, self.report, territory)

    def run(self) -> None:
        self.checks.accounts()
        self.checks.ancestors(self.roots)
        for root in self.roots:
            if self.stopped:
                break
            if self.control is not None:
                self.control.update(phase=f"audit {root.key}", items_done=self.report.scanned, items_total=0)
            self._root(root)
        if self.control is not None:
            self.control.update(items_done=self.report.scanned)
        self.report.add_unlisted(str(self.config.paths.canonical))

    def _count(self, path: str) -> bool:
        """Count one entry; False (after HX292, once) when the cap is reached and the audit must stop."""
        report = self.report
        if report.scanned >= MAX_ENTRIES:
            if not self.stopped:
                self.stopped = True
                report.add(
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

    def _root(self, root: Root) -> None:
        path = str(root.path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self.report.add(
                "HX290",
                "info",
                path,
                f"paths.{root.key} does not exist, so there is nothing to audit there",
                f"nothing to do, unless it lives elsewhere: then set paths.{root.key} in hxd.toml",
            )
            return
        except OSError as exc:
            self.checks.unreadable(path, exc)
            return
        if not self._count(path):
            return
        if stat.S_ISLNK(st.st_mode):
            self.checks.symlink(path)
            if root.kind == "env":
                self.checks.env_not_regular(path, "a symlink")
            return
        ident = (st.st_dev, st.st_ino)
        if self.root_ids.get(ident) != root.key:
            return  # the same directory or file as another managed path, audited under that one
        real = os.path.realpath(path)
        if root.kind == "env":
            if stat.S_ISREG(st.st_mode):
                self.checks.entry(root, real, path, (), st)
            else:
                self.checks.env_not_regular(path, "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            return
        self.checks.entry(root, real, path, (), st)
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
            self.checks.unreadable(path, exc)
            return None
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                self.checks.unreadable(path, None)
            else:
                return fd, os.scandir(fd)  # scandir reads a duplicate of fd and closes that itself
        except OSError as exc:  # EMFILE, in a very deep tree
            self.checks.unreadable(path, exc)
        os.close(fd)
        return None

    def _descend(self, root: Root, real: str, top: _Listing, top_path: str) -> None:
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
                    self.checks.unreadable(path, exc)
                    continue
                ident = (st.st_dev, st.st_ino)
                if self.root_ids.get(ident, root.key) != root.key or ident in self.seen_dirs:
                    continue  # another managed path (audited on its own terms), or a directory already walked
                if not self._count(path):
                    break
                self.checks.entry(root, real, path, parts, st)
                if stat.S_ISDIR(st.st_mode):
                    self.seen_dirs.add(ident)
                    child = self._open_dir(name, fd, path, st)
                    if child is not None:
                        stack.append((child, path, parts))
        finally:
            for (fd, entries), _, _ in stack:
                entries.close()
                os.close(fd)
