"""The repairs ``--fix`` makes: modes and owners of regular files and directories inside the managed paths.

Never the directories above them, and never an entry that changed since the audit saw it: ``repair`` reaches each
entry again from its managed path's real directory, one ``O_PATH|O_NOFOLLOW`` component at a time, and refuses it if it
is no longer the very inode with the very mode and owner the audit saw (TOCTOU); the change is then made through
that descriptor, so a path swapped meanwhile cannot redirect it. A file with other hard links is never changed,
since the change would reach its other names (``refusal``, which the checks also ask, so that the report says so).
What to set comes from the checks (``audit_checks``), in the report's ``Repair`` items.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Literal

from hxd.core.accounts import owner_name
from hxd.core.audit_report import AuditReport, Change, Repair
from hxd.core.jobs import JobControl


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


def refusal(st: os.stat_result) -> str:
    """Why --fix must leave this entry alone, or ''."""
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return "hxd changes only regular files and directories"
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return f"it has {st.st_nlink} hard links, and a change would reach its other names too"
    return ""


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
    return refusal(st)
