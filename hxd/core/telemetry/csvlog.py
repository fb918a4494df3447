"""An append-only CSV log with a header once per file, rotation by size and age, and torn-line repair.

Written for a sample every few minutes, so each append pays for safety (shared/reference/gpu-telemetry.md §5):
the file is opened, checked and fsync'd every time, which also follows a file that someone moved or deleted.

- The header is written when the file is empty; a file whose first line is another header (an older hxd's
  columns) is rotated away rather than appended to, so one file never mixes column sets.
- A last line without its newline (a crash or a full disk in the middle of a write) is cut off before the next
  append; a failed append is itself cut back to where it started, so a sample is in the file whole or not at all.
- Rotation renames ``telemetry.csv`` to ``telemetry.csv.1`` (``.1`` to ``.2``, ...) before an append that would
  make it larger than ``max_bytes``, or once its first row is ``max_age`` old; ``keep`` rotated files remain.
- New files get mode 0640, and a new directory 0750, whatever the umask (hxd.service has UMask=0077): group
  ``hxd`` may read the log.

Errors are ``OSError`` for the caller to turn into a state; nothing here swallows them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import structlog

log = structlog.get_logger("hxd.telemetry")

MODE = 0o640
DIR_MODE = 0o750
# Enough of the file's start for its header and first row (a row of the GPU log is ~350 bytes).
_HEAD_BYTES = 8192
_CHUNK = 4096


class CsvLog:
    """``path`` with ``header`` as its first line, rotated at ``max_bytes`` or ``max_age``, keeping ``keep``."""

    def __init__(self, path: Path, header: str, max_bytes: int, max_age: timedelta, keep: int) -> None:
        self.path = path
        self.header = header
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.keep = keep

    def append(self, lines: Sequence[str], now: datetime) -> None:
        """Append ``lines`` (without newlines) in one write and fsync; ``now`` decides rotation by age."""
        data = "".join(f"{line}\n" for line in lines).encode()
        try:
            self.path.parent.mkdir()
        except FileExistsError:
            pass
        else:
            os.chmod(self.path.parent, DIR_MODE)  # not through the umask: group hxd must be able to enter it
        fd = self._open()
        try:
            size = self._cut_torn_line(fd)
            if size and self._rotation_due(fd, size + len(data), now):
                self._rotate()
                os.close(fd)
                fd = self._open()
                size = 0
            if size == 0:
                data = f"{self.header}\n".encode() + data
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):  # all or nothing; failing that, the next append cuts the torn line
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def _open(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
        if os.fstat(fd).st_size == 0:
            os.fchmod(fd, MODE)
            _fsync_dir(self.path.parent)  # the new name must survive a crash as well as the rows in it
        return fd

    def _cut_torn_line(self, fd: int) -> int:
        """Cut the file back to its last newline; return its size."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        end = size
        while end > 0:
            start = max(0, end - _CHUNK)
            newline = os.pread(fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        os.ftruncate(fd, end)
        log.warning("cut a torn last line from the log", path=str(self.path), bytes=size - end)
        return end

    def _rotation_due(self, fd: int, size_after: int, now: datetime) -> bool:
        if size_after > self.max_bytes:
            return True
        lines = os.pread(fd, _HEAD_BYTES, 0).split(b"\n", 2)
        if lines[0].decode(errors="replace") != self.header:
            return True
        if len(lines) < 3:  # no complete first row yet
            return False
        try:
            first = datetime.fromisoformat(lines[1].split(b",", 1)[0].decode())
        except ValueError:
            return False  # not our timestamp; size still bounds the file
        return first.tzinfo is not None and now - first >= self.max_age

    def _rotate(self) -> None:
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
        _fsync_dir(self.path.parent)
        log.info("rotated the log", path=str(self.path), keep=self.keep)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
