"""The switch: each path changes from old to new in one atomic rename, and each change can be undone the same way.

``os.replace`` swaps a symlink for a symlink atomically but cannot put a symlink where a directory is (EISDIR), and
renaming the directory aside first leaves a moment with nothing at the path. ``renameat2(RENAME_EXCHANGE)`` swaps
the directory and a prepared symlink in one step; the old directory then sits at the symlink's former name, which
is chosen to be the backup's name. The stdlib has no wrapper, hence ctypes (man 2 rename; Linux >= 3.15).
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from hxd.core.atomic import fsync_directory
from hxd.core.errors import Failed

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """Atomically swap the directory entries ``a`` and ``b`` (both must exist; types may differ)."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS):
            raise Failed(f"the filesystem of {a.parent} cannot swap entries atomically (renameat2 RENAME_EXCHANGE)")
        raise Failed(f"swapping {a} and {b} failed: {os.strerror(code)}")
    fsync_directory(a.parent)
    if b.parent != a.parent:
        fsync_directory(b.parent)


def change(link: Path, target: Path) -> str:
    """How ``point`` will change ``link``, so the journal can hold the undo before the change happens:

    - "unchanged": it already is a symlink to ``target``;
    - "created": nothing there, the symlink is created (undo: remove it);
    - "replaced": a symlink, replaced (undo: the old symlink is kept at the backup and renamed back);
    - "exchanged": a directory, swapped with the new symlink; it stays, whole, at the backup (undo: swap back).
    """
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return "unchanged"
    if not os.path.lexists(link):
        return "created"
    return "replaced" if link.is_symlink() else "exchanged"


def point(link: Path, target: Path, backup: Path) -> None:
    """Make ``link`` a symlink to ``target`` atomically, whatever is there now (see ``change``)."""
    how = change(link, target)
    if how == "unchanged":
        return
    if how == "exchanged" and not link.is_dir():
        raise Failed(f"{link} is a file, not a directory or symlink; move it aside")
    temp = backup.with_name(backup.name + ".new")
    _fresh_symlink(temp, target)
    if how == "created":
        os.rename(temp, link)
        fsync_directory(link.parent)
    elif how == "replaced":
        _fresh_symlink(backup, Path(os.readlink(link)))  # the old link, kept for rollback
        os.replace(temp, link)
        fsync_directory(link.parent)
    else:
        os.rename(temp, backup)
        exchange(backup, link)


def undo(link: Path, backup: Path, how: str) -> None:
    """Reverse ``point``; safe to repeat (a crash may have interrupted an earlier undo)."""
    if how == "created":
        if link.is_symlink():
            os.unlink(link)
            fsync_directory(link.parent)
    elif how == "replaced":
        if os.path.lexists(backup):
            os.replace(backup, link)
            fsync_directory(link.parent)
    elif how == "exchanged":
        if link.is_symlink() and backup.is_dir() and not backup.is_symlink():
            exchange(backup, link)
        if backup.is_symlink():  # the symlink hxd made, now at the backup's name
            os.unlink(backup)
            fsync_directory(link.parent)


def _fresh_symlink(path: Path, target: Path) -> None:
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)
