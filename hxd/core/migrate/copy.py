"""Putting blobs and manifests into bulk storage: staged, hashed while copied, fsynced, renamed into place.

Staging happens in ``bulk/.hxd-staging``, outside ``blobs/``: Ollama deletes every non-digest name in ``blobs/`` at
startup, so a half-written file there could vanish, and a final name only ever appears complete. The bytes hashed
are the bytes written (one buffer), so a blob whose content does not match its name never gets its final name.
On one filesystem nothing is copied: a hard link costs what a rename costs and leaves the source intact.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from hxd.core.atomic import fsync_directory, write_all
from hxd.core.errors import Failed
from hxd.core.jobs import JobControl
from hxd.core.store import read_manifest_file

_CHUNK = 4 << 20


@dataclass(frozen=True)
class Ownership:
    """What every file and directory hxd creates in bulk storage gets: Ollama's account and modes."""

    uid: int
    gid: int
    file_mode: int
    dir_mode: int


class Corrupt(Failed):
    """A source blob whose content does not hash to its name: the migration stops before anything is switched."""


def ensure_dir(path: Path, owner: Ownership) -> None:
    """Create ``path`` and missing parents with the owner and mode, each creation made durable."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        os.mkdir(directory, owner.dir_mode)
        os.chown(directory, owner.uid, owner.gid)
        os.chmod(directory, owner.dir_mode)  # mkdir's mode is masked by the umask
        fsync_directory(directory.parent)


def copy_blob(source: Path, staging: Path, blobs: Path, name: str, owner: Ownership, control: JobControl) -> None:
    """Copy one blob, resuming a ``.part`` left by an interrupted run; raises Corrupt on a hash mismatch."""
    part = staging / f"{name}.part"
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        with source.open("rb") as src:
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                offset = _rehash_prefix(fd, digest, view)
                src.seek(offset)
                control.advance(bytes_done=offset)
                while count := src.readinto(buffer):
                    digest.update(view[:count])
                    write_all(fd, view[:count])
                    control.advance(bytes_done=count)
                    if control.cancelled:
                        return  # the .part stays: a resume continues from here
                if digest.hexdigest() != name.removeprefix("sha256-"):
                    os.unlink(part)
                    raise Corrupt(
                        f"blob {name} in {source.parent} is corrupt: its content hashes to "
                        f"sha256:{digest.hexdigest()}; re-pull the models that use it, then migrate"
                    )
                _settle(fd, owner, os.fstat(src.fileno()))
            finally:
                os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            part.unlink(missing_ok=True)  # give the space back; a resume starts this blob over
        raise _copy_error(exc, name, source, blobs) from None
    os.rename(part, blobs / name)
    fsync_directory(blobs)


def _settle(fd: int, owner: Ownership, source: os.stat_result) -> None:
    """Give a written copy its owner, mode and the source's times, and make it durable before it is renamed in."""
    os.fchown(fd, owner.uid, owner.gid)
    os.fchmod(fd, owner.file_mode)
    os.utime(fd, ns=(source.st_atime_ns, source.st_mtime_ns))
    os.fsync(fd)


def _rehash_prefix(fd: int, digest: hashlib._Hash, view: memoryview) -> int:
    """Feed what a previous run already wrote to the hash (sha256 state cannot be saved); returns its length."""
    offset = 0
    while count := os.readv(fd, [view]):
        digest.update(view[:count])
        offset += count
    return offset


def link_blob(source: Path, blobs: Path, name: str, owner: Ownership) -> None:
    """Same filesystem: give the source's inode a second name in bulk storage (idempotent for a resume)."""
    target = blobs / name
    try:
        os.link(source, target)
    except FileExistsError:
        if not os.path.samefile(source, target):
            raise Failed(f"{target} exists and is not {source}; remove it and resume") from None
    os.chown(target, owner.uid, owner.gid)
    os.chmod(target, owner.file_mode)
    fsync_directory(blobs)


def copy_manifest(source: Path, staging: Path, target: Path, owner: Ownership) -> str:
    """Copy a manifest byte for byte with its mtime (its sha256 is the model's ID); returns that sha256."""
    data = read_manifest_file(source)
    st = source.stat()
    ensure_dir(target.parent, owner)
    temp = staging / f"manifest-{hashlib.sha256(str(target).encode()).hexdigest()[:16]}.part"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        _settle(fd, owner, st)
    finally:
        os.close(fd)
    os.rename(temp, target)
    fsync_directory(target.parent)
    return hashlib.sha256(data).hexdigest()


def _copy_error(exc: OSError, name: str, source: Path, blobs: Path) -> Failed:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Failed(
            f"no space left in {blobs.parent} while copying {name}; the source is untouched: free space "
            "and run hxctl migrate --resume, or hxctl rollback"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        where = exc.filename or source
        return Failed(f"permission denied on {where} while copying {name}; the source is untouched")
    return Failed(f"copying {name} from {source.parent} failed: {exc.strerror}; the source is untouched")
