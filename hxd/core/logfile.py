"""Append-only result logs that survive crashes and stay bounded: whole lines, fsync, rotation by size.

hxd's result logs are read by people and by hxd itself (the smoke regression check reads its own history), so a line
must be all there or not there at all. Each append is one ``write`` of whole lines followed by ``fsync``; a failed
write is cut back to where it started. A crash in the middle of one can still leave a torn last line: the next append
cuts the file back to its last newline first, so a torn line is never glued to the next one. Rotation works like
logrotate's ``rotate N``: ``file`` -> ``file.1`` -> ... -> ``file.N``, the oldest dropped. Writers (the daemon and
``hxctl --offline``) take turns with flock(2). New files get mode 0640 and a new directory 0750, whatever the umask
(hxd.service has UMask=0077), so group ``hxd`` may read the logs. The same rules as telemetry's CSV log
(hxd.core.telemetry.csvlog), which adds a header and rotation by age.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

import structlog

from hxd.core.atomic import fsync_directory, write_all
from hxd.core.errors import Failed

log = structlog.get_logger("hxd.logfile")

MODE = 0o640
DIR_MODE = 0o750
_BLOCK = 64 * 1024


def append_lines(path: Path, lines: Sequence[str], rotate_size: int, keep: int) -> None:
    """Append ``lines`` (without their newlines) to ``path`` in one write, and fsync.

    The file is rotated first when the new lines would take it past ``rotate_size`` bytes, keeping ``keep`` rotated
    files. Raises Failed naming the file.
    """
    data = "".join(f"{line}\n" for line in lines).encode()
    try:
        try:
            path.parent.mkdir(parents=True)
        except FileExistsError:
            pass
        else:
            os.chmod(path.parent, DIR_MODE)
        while not _append(path, data, rotate_size, keep):
            pass
    except OSError as exc:
        raise Failed(
            f"{path}: cannot append: {exc.strerror or exc}; check that hxd may write to {path.parent}"
        ) from None


def _append(path: Path, data: bytes, rotate_size: int, keep: int) -> bool:
    """One try; False when the file was rotated (by us, or by the writer we waited for) and must be opened again."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                return False
        except FileNotFoundError:
            return False
        size = _cut_torn_line(path, fd)
        if size and size + len(data) > rotate_size:
            _rotate(path, keep)
            return False
        if size == 0:
            os.fchmod(fd, MODE)
            fsync_directory(path.parent)  # the new name must survive a crash as well as the lines in it
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):  # all or nothing; failing that, the next append cuts the torn line
                os.ftruncate(fd, size)
            raise
        return True
    finally:
        os.close(fd)


def _cut_torn_line(path: Path, fd: int) -> int:
    """Truncate the file to its last newline if it does not end with one; returns the size after."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end, length = size, 0
    while end > 0:
        start = max(end - _BLOCK, 0)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            length = start + newline + 1
            break
        end = start
    os.ftruncate(fd, length)
    log.warning("cut a torn last line from the log", path=str(path), bytes=size - length)
    return length


def _rotate(path: Path, keep: int) -> None:
    for index in range(keep, 0, -1):
        source = path if index == 1 else path.with_name(f"{path.name}.{index - 1}")
        if source.exists():
            os.replace(source, path.with_name(f"{path.name}.{index}"))
    fsync_directory(path.parent)
