"""Append-only logs that survive crashes and stay bounded: whole lines, fsync, rotation, an optional header.

hxd's logs (the GPU CSV, the smoke results) are read by people and by hxd itself (the smoke regression check reads
its own history), so a line must be all there or not there at all:

- each append is one ``write`` of whole lines followed by ``fsync``; a failed write is cut back to where it
  started, and a last line torn by a crash or a full disk is cut off before the next append, so a torn line is
  never glued to the next one;
- a file with a ``header`` starts with it, and a file whose first line is another header (an older hxd's columns)
  is rotated away rather than appended to, so one file never mixes column sets;
- rotation works like logrotate's ``rotate N`` (``file`` -> ``file.1`` -> ... -> ``file.N``, the oldest dropped),
  before an append that would make the file larger than ``max_bytes``, or once its first row (whose first field
  is an ISO-8601 time) is ``max_age`` old;
- writers (the daemon and ``hxctl --offline``) take turns with flock(2), and follow a file someone moved;
- new files get mode 0640 and a new directory 0750, whatever the umask (hxd.service has UMask=0077), so group
  ``hxd`` may read them.

Errors are ``OSError`` for the caller to turn into a state or a message; nothing here swallows them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from hxd.core.atomic import fsync_directory, write_all
from hxd.core.errors import Failed

log = structlog.get_logger("hxd.logfile")

MODE = 0o640
DIR_MODE = 0o750
# Enough of the file's start for its header and first row.
_HEAD_BYTES = 8192
_BLOCK = 64 * 1024


@dataclass(frozen=True)
class AppendLog:
    """``path``, rotated at ``max_bytes`` (or ``max_age`` of its first row), keeping ``keep`` rotated files."""

    path: Path
    max_bytes: int
    keep: int
    header: str | None = None
    max_age: timedelta | None = None

    def append(self, lines: Sequence[str], now: datetime | None = None) -> None:
        """Append ``lines`` (without newlines) in one write, and fsync; ``now`` decides rotation by age."""
        data = "".join(f"{line}\n" for line in lines).encode()
        try:
            self.path.parent.mkdir(parents=True)
        except FileExistsError:
            pass
        else:
            os.chmod(self.path.parent, DIR_MODE)  # not through the umask: group hxd must be able to enter it
        while not self._append(data, now):
            pass

    def _append(self, data: bytes, now: datetime | None) -> bool:
        """One try; False when the file was rotated (by us, or by the writer we waited for): open it again."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    return False
            except FileNotFoundError:
                return False
            size = self._cut_torn_line(fd)
            if size and self._rotation_due(fd, size + len(data), now):
                self._rotate()
                return False
            if size == 0:
                os.fchmod(fd, MODE)
                fsync_directory(self.path.parent)  # the new name must survive a crash as well as its lines
                if self.header is not None:
                    data = f"{self.header}\n".encode() + data
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

    def _cut_torn_line(self, fd: int) -> int:
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
        log.warning("cut a torn last line from the log", path=str(self.path), bytes=size - length)
        return length

    def _rotation_due(self, fd: int, size_after: int, now: datetime | None) -> bool:
        if size_after > self.max_bytes:
            return True
        if self.header is None and self.max_age is None:
            return False
        lines = os.pread(fd, _HEAD_BYTES, 0).split(b"\n", 2)
        if self.header is not None and lines[0].decode(errors="replace") != self.header:
            return True
        rows = lines[1:] if self.header is not None else lines
        if self.max_age is None or now is None or len(rows) < 2:  # no complete first row yet
            return False
        try:
            first = datetime.fromisoformat(rows[0].split(b",", 1)[0].decode())
        except ValueError:
            return False  # not a timestamp of ours; the size still bounds the file
        return first.tzinfo is not None and now - first >= self.max_age

    def _rotate(self) -> None:
        """``file`` -> ``file.1`` -> ... -> ``file.keep``; files numbered past ``keep`` (a lowered keep) go too."""
        prefix = f"{self.path.name}."
        for old in self.path.parent.glob(f"{prefix}*"):
            suffix = old.name.removeprefix(prefix)
            if suffix.isdigit() and int(suffix) >= self.keep:
                old.unlink()
        for number in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{prefix}{number}")
            if older.exists():
                older.replace(self.path.with_name(f"{prefix}{number + 1}"))
        self.path.replace(self.path.with_name(f"{prefix}1"))
        fsync_directory(self.path.parent)
        log.info("rotated the log", path=str(self.path), keep=self.keep)


def append_lines(path: Path, lines: Sequence[str], rotate_size: int, keep: int) -> None:
    """``AppendLog(path, rotate_size, keep).append(lines)`` for result logs, raising Failed naming the file."""
    try:
        AppendLog(path, rotate_size, keep).append(lines)
    except OSError as exc:
        raise Failed(
            f"{path}: cannot append: {exc.strerror or exc}; check that hxd may write to {path.parent}"
        ) from None
