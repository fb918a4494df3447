"""File operations in trees another account can write: never follow a symlink there, never trust a name.

The migration works in directories the ``ollama`` account owns (the source store, bulk storage) while hxd holds
root's powers over files. A path string is re-resolved by the kernel at every use, so between hxd's check and its
use the owner can swap any component for a symlink to ``/etc/shadow`` (man 7 path_resolution). Hence:

- A tree is entered once, as a directory descriptor (``Dir``); every later open, create, rename, link and unlink is
  relative to a descriptor and names one component, opened with ``O_NOFOLLOW``, so a swapped name is refused
  (ELOOP) instead of followed. Paths below a descriptor are opened with ``openat2(RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS)`` where the kernel has it (Linux 5.6, man 2 openat2), component by component with
  ``O_NOFOLLOW`` where it does not.
- What was opened is checked with ``fstat`` (a regular file, or a directory), and owner and mode are set with
  ``fchown``/``fchmod`` on that descriptor, never by name.
- Files are created with ``O_EXCL``: a name someone planted is never written through.
- A second name for an inode is made from its open descriptor (``linkat`` of ``/proc/self/fd/N`` with
  ``AT_SYMLINK_FOLLOW``, man 2 linkat), so the inode linked is the one that was opened and hashed.

Entering a tree from an absolute path follows a symlink only where systemd's ``chase()`` with ``CHASE_SAFE``
would (src/basic/chase.c): the symlink belongs to root and sits in a directory only root can change. Everything
else on the way is refused: a configured path under an account's control is that account's to redirect.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path
from typing import Self

from hxd.core.errors import Failed

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # the same number on every Linux architecture (asm-generic/unistd.h, since 5.6)
_RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x04, 0x08
_RENAME_EXCHANGE = 2
_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS


class Unsafe(Failed):
    """A symlink, or a file of the wrong type, where hxd expected a plain file or directory of a tree it manages."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_has_openat2: bool | None = None


def _unsafe(where: str, exc: OSError) -> Unsafe:
    return Unsafe(
        f"{where}: {exc.strerror}; hxd does not follow symlinks in trees another account can write: "
        "put a plain file or directory there, or remove it"
    )


class Dir:
    """An open directory; ``path`` is for messages only and is never used to reach anything."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def enter(cls, path: Path) -> Dir:
        """Open the directory at absolute ``path``, following only symlinks root made in root's directories."""
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        parts = list(path.parts[1:])
        links = 0
        where = Path("/")
        try:
            while parts:
                name = parts.pop(0)
                if name in ("", "."):
                    continue
                if name == "..":  # from a symlink's target: go back up the directories already entered
                    os.close(fd)
                    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    parts, where = [*where.parent.parts[1:], *parts], Path("/")
                    continue
                try:
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    holder = os.fstat(fd)
                    if not stat.S_ISLNK(st.st_mode):
                        raise Unsafe(f"{where / name} is not a directory") from None
                    if st.st_uid != 0 or holder.st_uid != 0 or holder.st_mode & 0o022:
                        raise _unsafe(str(where / name), exc) from None
                    links += 1
                    if links > _MAX_LINKS:
                        raise Unsafe(f"{path}: too many levels of symlinks") from None
                    target = os.readlink(name, dir_fd=fd)
                    parts = [*Path(target).parts, *parts]
                    if target.startswith("/"):
                        os.close(fd)
                        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                        parts, where = parts[1:], Path("/")
                    continue
                os.close(fd)
                fd, where = child, where / name
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- opening --------------------------------------------------------------------------------------------

    def open(self, relative: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
        """Open ``relative`` (one or more components) beneath this directory, refusing symlinks on the way."""
        flags |= os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return _open_beneath(self.fd, relative, flags, mode)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
                raise _unsafe(str(self.path / relative), exc) from None
            raise

    def open_file(self, relative: str) -> int:
        """A regular file beneath this directory, for reading; Unsafe for anything else (a FIFO too: opened
        without blocking, so one cannot hang hxd)."""
        fd = self.open(relative, os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Unsafe(f"{self.path / relative} is not a regular file")
        return fd

    def create(self, name: str, mode: int = 0o600) -> int:
        """A new file that nobody else has had a chance to name (O_EXCL); FileExistsError if the name is taken."""
        return self.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

    def sub(self, relative: str) -> Dir:
        fd = self.open(relative, os.O_RDONLY | os.O_DIRECTORY)
        return Dir(fd, self.path / relative)

    def make_sub(self, name: str, mode: int, owner: tuple[int, int] | None = None) -> Dir:
        """The subdirectory ``name``, created if missing (owner and mode then set on the opened directory)."""
        try:
            os.mkdir(name, mode, dir_fd=self.fd)
            created = True
        except FileExistsError:
            created = False
        sub = self.sub(name)
        if created:
            if owner is not None:
                os.fchown(sub.fd, *owner)
            os.fchmod(sub.fd, mode)  # mkdir's mode is masked by the umask
            self.fsync()
        return sub

    # --- names ----------------------------------------------------------------------------------------------

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def rename(self, name: str, into: Dir, new: str) -> None:
        os.rename(name, new, src_dir_fd=self.fd, dst_dir_fd=into.fd)

    def exchange(self, a: str, b: str) -> None:
        """Swap two entries of this directory atomically (renameat2 RENAME_EXCHANGE, Linux >= 3.15)."""
        if _libc.renameat2(self.fd, os.fsencode(a), self.fd, os.fsencode(b), _RENAME_EXCHANGE) != 0:
            code = ctypes.get_errno()
            if code in (errno.EINVAL, errno.ENOSYS):
                raise Failed(f"the filesystem of {self.path} cannot swap entries atomically (renameat2)")
            raise Failed(f"swapping {self.path / a} and {self.path / b} failed: {os.strerror(code)}")
        self.fsync()

    def link_from(self, fd: int, name: str) -> None:
        """Give the open file ``fd`` the name ``name`` here: the very inode that was opened, never a name's."""
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=self.fd, follow_symlinks=True)

    def unlink(self, name: str) -> bool:
        """Remove the entry ``name`` (a file or symlink, never followed); False if it was not there."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def rmdir(self, name: str) -> bool:
        """Remove an empty subdirectory; False if it is missing or not empty."""
        try:
            os.rmdir(name, dir_fd=self.fd)
        except OSError:
            return False
        return True

    def symlink(self, target: Path, name: str) -> None:
        os.symlink(target, name, dir_fd=self.fd)

    def readlink(self, name: str) -> str | None:
        try:
            return os.readlink(name, dir_fd=self.fd)
        except OSError:
            return None

    def fsync(self) -> None:
        os.fsync(self.fd)


def _open_beneath(dirfd: int, relative: str, flags: int, mode: int) -> int:
    global _has_openat2
    if _has_openat2 is not False:
        how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
        fd = _libc.syscall(  # variadic: every argument with its C type, so none is passed with a wrong width
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(relative)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            _has_openat2 = True
            return int(fd)
        code = ctypes.get_errno()
        if _has_openat2 or code not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter without openat2
            raise OSError(code, os.strerror(code), relative)
        _has_openat2 = False
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OSError(errno.EXDEV, "not beneath the directory", relative)
    fd = dirfd
    try:
        for part in parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            if fd != dirfd:
                os.close(fd)
            fd = child
        return os.open(parts[-1], flags, mode, dir_fd=fd)
    finally:
        if fd != dirfd:
            os.close(fd)
