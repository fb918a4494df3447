"""Durable, atomic file updates: a reader (or a crash) sees the old content or the new, never half of either.

The recipe (man 2 fsync, man 2 rename): write a temporary file in the target's directory, fsync it, rename it over
the target, fsync the directory. Every file hxd rewrites goes through here: the env file, the migration journal,
state files.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make renames and creations in ``directory`` durable: without this a crash can undo them."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temps(directory: Path, prefix: str) -> None:
    """Remove the temporary files that a process killed inside ``replace_file`` left in ``directory`` for targets
    whose names start with ``prefix``. Only for targets no other thread is replacing at the time."""
    for temp in directory.glob(f".{prefix}*.hxd-tmp"):
        temp.unlink(missing_ok=True)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_temp(target: Path, data: bytes, owner: tuple[int, int] | None, mode: int) -> str:
    """``data`` in a new synced file beside ``target``; removed again on failure."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".hxd-tmp")
    try:
        if owner is not None:
            os.fchown(fd, *owner)  # before chmod: chown clears set-id bits
        os.fchmod(fd, mode)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.unlink(temp)
        raise
    finally:
        os.close(fd)
    return temp


def replace_file(target: Path, data: bytes, *, like: os.stat_result | None = None, mode: int = 0o600) -> None:
    """Atomically and durably make ``target`` hold ``data``.

    With ``like`` the new file gets that owner, group and mode (to rewrite a file in place); otherwise ``mode`` and
    the caller's owner.
    """
    owner = (like.st_uid, like.st_gid) if like is not None else None
    temp = _write_temp(target, data, owner, stat.S_IMODE(like.st_mode) if like is not None else mode)
    try:
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
    fsync_directory(target.parent)
