"""The switch: each path changes from old to new in one atomic rename, and each change can be undone the same way.

Every name is changed through its parent directory's descriptor (hxd.core.safefs): the legacy path's parent and the
canonical directory may belong to the ``ollama`` account, which must not be able to redirect a rename by swapping
a name on the way.

``rename`` swaps a symlink for a symlink atomically but cannot put a symlink where a directory is (EISDIR), and
renaming the directory aside first leaves a moment with nothing at the path. ``renameat2(RENAME_EXCHANGE)`` swaps
the directory and a prepared symlink in one step; the old directory then sits at the symlink's former name, which
is chosen to be the backup's name. The new symlink is prepared under ``<backup>.new``, a name the journal implies
(it holds the backup's name before the step is taken), so an undo removes it too.
"""

from __future__ import annotations

import stat
from pathlib import Path

from hxd.core.errors import Failed
from hxd.core.safefs import Dir


def temp_name(backup: str) -> str:
    return f"{backup}.new"


def change(parent: Dir, name: str, target: Path) -> str:
    """How ``point`` will change ``name``, so the journal can hold the undo before the change happens:

    - "unchanged": it already is a symlink to ``target``;
    - "created": nothing there, the symlink is created (undo: remove it);
    - "replaced": a symlink, replaced (undo: the old symlink is kept at the backup and renamed back);
    - "exchanged": a directory, swapped with the new symlink; it stays, whole, at the backup (undo: swap back).
    """
    st = parent.lstat(name)
    if st is None:
        return "created"
    if stat.S_ISLNK(st.st_mode):
        return "unchanged" if Path(parent.readlink(name) or "") == target else "replaced"
    return "exchanged"


def point(parent: Dir, name: str, target: Path, backup: str) -> None:
    """Make ``name`` a symlink to ``target`` atomically, whatever is there now (see ``change``)."""
    how = change(parent, name, target)
    if how == "unchanged":
        return
    st = parent.lstat(name)
    if how == "exchanged" and not (st is not None and stat.S_ISDIR(st.st_mode)):
        raise Failed(f"{parent.path / name} is a file, not a directory or symlink; move it aside")
    temp = temp_name(backup)
    _fresh_symlink(parent, temp, target)
    if how == "created":
        parent.rename(temp, parent, name)
    elif how == "replaced":
        _fresh_symlink(parent, backup, Path(parent.readlink(name) or ""))  # the old link, kept for rollback
        parent.rename(temp, parent, name)
    else:
        parent.rename(temp, parent, backup)
        parent.exchange(backup, name)
        return
    parent.fsync()


def undo(parent: Dir, name: str, backup: str, how: str) -> None:
    """Reverse ``point``; safe to repeat (a crash may have interrupted an earlier undo or the step itself)."""
    here, kept = parent.lstat(name), parent.lstat(backup)
    if how == "created":
        if here is not None and stat.S_ISLNK(here.st_mode):
            parent.unlink(name)
    elif how == "replaced":
        if kept is not None and stat.S_ISLNK(kept.st_mode):
            parent.rename(backup, parent, name)
    elif how == "exchanged":
        if here is not None and stat.S_ISLNK(here.st_mode) and kept is not None and stat.S_ISDIR(kept.st_mode):
            parent.exchange(backup, name)
            kept = parent.lstat(backup)
        if kept is not None and stat.S_ISLNK(kept.st_mode):  # the symlink hxd made, now at the backup's name
            parent.unlink(backup)
    _remove_symlink(parent, temp_name(backup))
    parent.fsync()


def _fresh_symlink(parent: Dir, name: str, target: Path) -> None:
    _remove_symlink(parent, name)
    parent.symlink(target, name)


def _remove_symlink(parent: Dir, name: str) -> None:
    st = parent.lstat(name)
    if st is not None and stat.S_ISLNK(st.st_mode):
        parent.unlink(name)
