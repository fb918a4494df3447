"""Reading a file that another account may have written, without letting it hang hxd or run it out of memory.

A file in the model store belongs to the ``ollama`` account, and an environment file may be anything a path names:
a FIFO with no writer blocks an ``open`` or a ``read`` forever, a device or a file that grows while it is read never
ends. So a reader opens without blocking, checks with fstat that it has a regular file, and reads at most one byte
past its limit, whatever the size said: the size is only ever a hint for the message.
"""

from __future__ import annotations

import os
import stat

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
_CHUNK = 1 << 20
# O_NONBLOCK: opening a FIFO with no writer returns at once; O_NOCTTY: a terminal never becomes hxd's.
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO"), for a message that refuses it."""
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


def read_at_most(fd: int, limit: int) -> bytes:
    """Read ``fd`` to its end, but never more than ``limit + 1`` bytes: a result longer than ``limit`` means the
    file is over it, and nothing past that byte was read (memory and time stay bounded by ``limit``)."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit and (chunk := os.read(fd, min(_CHUNK, limit + 1 - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
