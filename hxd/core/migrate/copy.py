"""Putting blobs and manifests into bulk storage: staged, hashed, fsynced, renamed (or linked) into place.

Every name is reached through directory descriptors that refuse symlinks (hxd.core.safefs): the source store and
bulk storage belong to the ``ollama`` account, which may swap any name for a symlink while hxd works.

Staging happens in ``bulk/.hxd-staging``, a directory of hxd's own (mode 0700, so nobody else can plant a name in
it) outside ``blobs/``: Ollama deletes every non-digest name in ``blobs/`` at startup, so a half-written file there
could vanish, and a final name only ever appears complete and verified. The bytes hashed are the bytes written
(one buffer), so a blob whose content does not match its name never gets its final name.

On one filesystem a blob is hashed too (while Ollama still serves: the outage does not grow) and then linked from
the descriptor that was hashed, so "every blob verified" holds in both modes. A link shares the inode, so its
owner and mode are the source's: where they differ from what Ollama needs, the blob is copied instead, and the
source's own metadata is never changed (a rollback gives back the old store exactly).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hxd.core.atomic import write_all
from hxd.core.errors import Failed
from hxd.core.jobs import JobControl
from hxd.core.migrate.plan import STAGING
from hxd.core.safefs import Dir
from hxd.core.store import read_manifest_bytes

_CHUNK = 4 << 20


@dataclass(frozen=True)
class Ownership:
    """What every file and directory hxd creates in bulk storage gets: Ollama's account and modes."""

    uid: int
    gid: int
    file_mode: int
    dir_mode: int

    def matches(self, st: os.stat_result) -> bool:
        return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (self.uid, self.gid, self.file_mode)


class Corrupt(Failed):
    """A source blob whose content does not hash to its name: the migration stops before anything is switched."""


def open_staging(bulk: Dir) -> Dir:
    """hxd's own staging directory in bulk storage, 0700; anything else under that name (planted by the owner of
    bulk storage, or from an older hxd) is removed first, through descriptors, and never entered."""
    st = bulk.lstat(STAGING)
    mine = (os.geteuid(), os.getegid())
    if st is not None and not (
        stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_gid) == mine and st.st_mode & 0o777 == 0o700
    ):
        remove_tree(bulk, STAGING)
    return bulk.make_sub(STAGING, 0o700, owner=mine)


def remove_tree(parent: Dir, name: str) -> None:
    """Delete ``name`` in ``parent`` and all below it without following a symlink (shutil.rmtree's descriptor-based
    walk, which checks each directory it enters is the one it listed)."""
    st = parent.lstat(name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent.fd)
    else:
        parent.unlink(name)
    parent.fsync()


def place_blob(
    source: Dir, staging: Dir, blobs: Dir, name: str, owner: Ownership, control: JobControl, *, link: bool
) -> None:
    """Put the source blob ``name`` into ``blobs``, verified: linked (``link``: same filesystem, and the source
    already has Ollama's owner and mode) or copied. Raises Corrupt on a hash mismatch, Unsafe on a symlink."""
    with _opened(source, name) as src:
        st = os.fstat(src)
        if link and owner.matches(st):
            _check_hash(src, name, source.path, control)
            if not control.cancelled:
                _link(src, st, blobs, name)
            return
        _copy(src, st, source.path, staging, blobs, name, owner, control)


def blob_in_place(blobs: Dir, name: str, size: int) -> bool:
    """An earlier, interrupted run left ``name`` complete in ``blobs``: a regular file of the size whose content
    hashes to its name (checked here). A wrong one is removed, so it is put again."""
    st = blobs.lstat(name)
    if st is None:
        return False
    if stat.S_ISREG(st.st_mode) and st.st_size == size:
        with _opened(blobs, name) as fd:
            if _digest(fd, None) == name.removeprefix("sha256-"):
                return True
    blobs.unlink(name)
    return False


@contextmanager
def _opened(directory: Dir, name: str) -> Iterator[int]:
    fd = directory.open_file(name)
    try:
        yield fd
    finally:
        os.close(fd)


def _digest(fd: int, control: JobControl | None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while count := os.preadv(fd, [view], offset):
        digest.update(view[:count])
        offset += count
        if control is not None:
            control.advance(bytes_done=count)
            if control.cancelled:
                break
    return digest.hexdigest()


def _check_hash(fd: int, name: str, source: Path, control: JobControl) -> None:
    actual = _digest(fd, control)
    if not control.cancelled and actual != name.removeprefix("sha256-"):
        raise _corrupt(name, source, actual)


def _corrupt(name: str, source: Path, actual: str) -> Corrupt:
    return Corrupt(
        f"blob {name} in {source} is corrupt: its content hashes to sha256:{actual}; "
        "re-pull the models that use it, then migrate"
    )


def _link(src: int, st: os.stat_result, blobs: Dir, name: str) -> None:
    try:
        blobs.link_from(src, name)
    except FileExistsError:
        there = blobs.lstat(name)
        if there is None or (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
            raise Failed(f"{blobs.path / name} exists and is not the source's blob; remove it and resume") from None
    blobs.fsync()


def _copy(
    src: int,
    st: os.stat_result,
    source: Path,
    staging: Dir,
    blobs: Dir,
    name: str,
    owner: Ownership,
    control: JobControl,
) -> None:
    """Copy through ``<name>.part`` in staging, resuming one an interrupted run left."""
    part = f"{name}.part"
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        try:
            fd = staging.create(part)
        except FileExistsError:
            # Left by an interrupted run (perhaps already given Ollama's owner): only hxd can name anything in its
            # 0700 staging directory, but a second name of the inode elsewhere would make it someone else's file.
            fd = staging.open(part, os.O_RDWR)
            left = os.fstat(fd)
            if not stat.S_ISREG(left.st_mode) or left.st_nlink != 1:
                os.close(fd)
                raise Failed(f"{staging.path / part} is not the partial copy hxd left; remove it and resume") from None
        try:
            offset = _rehash_prefix(fd, digest, view)
            control.advance(bytes_done=offset)
            while count := os.preadv(src, [view], offset):
                digest.update(view[:count])
                write_all(fd, view[:count])
                offset += count
                control.advance(bytes_done=count)
                if control.cancelled:
                    return  # the .part stays: a resume continues from here
            if digest.hexdigest() != name.removeprefix("sha256-"):
                staging.unlink(part)
                raise _corrupt(name, source, digest.hexdigest())
            _settle(fd, owner, st)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            staging.unlink(part)  # give the space back; a resume starts this blob over
        raise _copy_error(exc, name, blobs) from None
    staging.rename(part, blobs, name)
    blobs.fsync()


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


def manifest_digest(source: Dir, relative: str) -> str:
    """The sha256 of a source manifest as it is now (what the journal holds for the copy made of it)."""
    with _opened(source, relative) as fd:
        return hashlib.sha256(read_manifest_bytes(fd, source.path / relative)).hexdigest()


def copy_manifest(source: Dir, relative: str, staging: Dir, manifests: Dir, owner: Ownership) -> str:
    """Copy a manifest byte for byte with its mtime (its sha256 is the model's ID); returns that sha256.
    ``relative`` is ``host/namespace/model/tag``; directories on the way are made with Ollama's owner."""
    with _opened(source, relative) as fd:
        st = os.fstat(fd)
        data = read_manifest_bytes(fd, source.path / relative)  # within the manifest limits, or StoreError
    *parents, leaf = relative.split("/")
    target = manifests
    opened: list[Dir] = []
    try:
        for part in parents:
            target = target.make_sub(part, owner.dir_mode, owner=(owner.uid, owner.gid))
            opened.append(target)
        temp = f"manifest-{hashlib.sha256(relative.encode()).hexdigest()[:16]}.part"
        staging.unlink(temp)  # left by an interrupted run: staging is hxd's own
        out = staging.create(temp)
        try:
            write_all(out, data)
            _settle(out, owner, st)
        finally:
            os.close(out)
        staging.rename(temp, target, leaf)
        target.fsync()
    finally:
        for directory in opened:
            directory.close()
    return hashlib.sha256(data).hexdigest()


def _copy_error(exc: OSError, name: str, blobs: Dir) -> Failed:
    bulk = blobs.path.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Failed(
            f"no space left in {bulk} while copying {name}; the source is untouched: free space "
            "and run hxctl migrate --resume, or hxctl rollback"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Failed(f"permission denied while copying {name} into {bulk}; the source is untouched")
    return Failed(f"copying {name} into {bulk} failed: {exc.strerror}; the source is untouched")
