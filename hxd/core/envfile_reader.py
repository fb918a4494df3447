"""Reading an environment file from disk the way PID1 loads it, then parsing it with ``envfile_parser``.

systemd reads the whole file at once and refuses one over ``READ_LIMIT``; hxd must also never hang or run away on
what a path may name (a FIFO with no writer, a device, a file that grows while it is read), and must say in one
line, naming the path, why a file could not be read. hxctl opens the file with its caller's rights
(``open_envfile``) and hands the descriptor to hxd, so hxd never opens a path an unprivileged caller chose.
``envfile_writer`` reads the file it rewrites through here too, so both see the same bytes and the same refusals.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import replace
from pathlib import Path

from hxd.core.envfile_parser import READ_LIMIT, EnvFile, parse_envfile
from hxd.core.errors import Unreadable
from hxd.core.readlimit import OPEN_FLAGS, file_kind, read_at_most

_OS_REASONS = {
    errno.ENOENT: "does not exist",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?)",
    errno.ENOTDIR: "a component of the path is not a directory",
    errno.ENXIO: "is a socket, not a regular file",
}


def os_reason(error: OSError) -> str:
    """One line for an OSError, in words an operator recognises, falling back to ``strerror``."""
    return _OS_REASONS.get(error.errno or 0, error.strerror or str(error))


def _check_regular(path: Path, info: os.stat_result) -> None:
    """Refuse what is not a plain file before reading a byte: a FIFO would block, a device could be endless."""
    if not stat.S_ISREG(info.st_mode):
        raise Unreadable(f"{path}: is {file_kind(info.st_mode)}, not a regular file")
    if info.st_size > READ_LIMIT:
        raise Unreadable(f"{path}: is {info.st_size} bytes; systemd refuses environment files over {READ_LIMIT} bytes")


def _read_fd(path: Path, fd: int) -> bytes:
    """Read to end of file but never more than ``READ_LIMIT`` + 1 bytes, in case the file grows while we read."""
    data = read_at_most(fd, READ_LIMIT)
    if len(data) > READ_LIMIT:
        raise Unreadable(f"{path}: grew past {READ_LIMIT} bytes while being read; systemd refuses it")
    return data


def open_envfile(path: Path) -> int:
    """Open for reading without blocking (O_NONBLOCK: a FIFO with no writer must not hang us).

    hxctl opens a file this way with the caller's own rights before handing the descriptor to hxd.
    """
    try:
        return os.open(path, OPEN_FLAGS)
    except OSError as error:
        raise Unreadable(f"{path}: cannot open: {os_reason(error)}") from error


def read_regular_file(path: Path) -> tuple[bytes, os.stat_result]:
    """Open, check that it is a regular file within the limit, then read; also its stat, for a writer to copy."""
    fd = open_envfile(path)
    try:
        return _read_open_file(path, fd)
    finally:
        os.close(fd)


def _read_open_file(path: Path, fd: int) -> tuple[bytes, os.stat_result]:
    """Check that ``fd`` is a regular file within the size limit, then read it whole."""
    try:
        info = os.fstat(fd)
        _check_regular(path, info)
        return _read_fd(path, fd), info
    except OSError as error:
        raise Unreadable(f"{path}: cannot read: {os_reason(error)}") from error


def read_envfile(path: Path) -> EnvFile:
    """Read ``path`` the way PID1 does and parse it; content problems come back in ``EnvFile.error``.

    Raises ``Unreadable`` (one line naming the path) when the file cannot be read at all: missing, unreadable,
    a symlink loop, a directory or other non-regular file, or larger than ``READ_LIMIT`` (judged from its size,
    without reading it). A file that reads but that systemd rejects (NUL byte, invalid UTF-8) is not an exception:
    the caller gets ``loads=False`` and an ``error`` that starts with the path.
    """
    data, _ = read_regular_file(path)
    return _parsed(path, data)


def read_envfile_fd(fd: int, name: Path) -> EnvFile:
    """Like ``read_envfile`` for a file the caller opened (hxd's D-Bus ValidateFile gets it passed as a descriptor,
    so hxd never opens a path an unprivileged caller chose); ``name`` is only used in messages."""
    data, _ = _read_open_file(name, fd)
    return _parsed(name, data)


def _parsed(path: Path, data: bytes) -> EnvFile:
    parsed = parse_envfile(data)
    if parsed.error is None:
        return parsed
    return replace(parsed, error=f"{path}: {parsed.error}")
