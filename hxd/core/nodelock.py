"""The node-wide lock: one process at a time changes a node, whichever runs the job (hxd, or hxctl --offline).

Jobs of two processes must exclude each other, or the daemon and an offline client could migrate the same store at
once and write one journal from both sides. The lock is ``flock(2)`` on files in ``<state_dir>/locks/``: the kernel
drops a lock when its holder dies (kill -9, power loss included), so there is no stale lock to clean up, and flock
locks belong to the open file, so two jobs of one process exclude each other exactly as two processes do.

Two files take part in each job:

- ``node.lock``: exclusive for a job that changes files or stops Ollama (migrate, rollback, prune, audit --fix),
  shared for the others (smoke, audit), which may run beside each other but not beside a change;
- ``<kind>.lock``: exclusive, one job of a kind at a time on the node; it also carries the holder's record
  (program, pid, job, since) so that the job that loses names the one that won.

Both are taken without waiting: a second job is refused at once with Busy, never queued.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from hxd.core.errors import Busy, Failed
from hxd.core.schedule import iso

LOCK_DIR = "locks"
NODE_LOCK = "node.lock"
_RECORD_MAX = 4096


@dataclass(frozen=True)
class Holder:
    """Who holds a job's locks, as the loser is told."""

    program: str  # "hxd" or "hxctl --offline"
    pid: int
    kind: str  # the job's kind: migrate, rollback, prune, smoke, audit
    job: str  # "3" for hxd's /org/hxinfra/hxd1/jobs/3; "" for an offline client
    since: str  # ISO 8601, UTC

    @classmethod
    def now(cls, program: str, kind: str, job: str = "") -> Holder:
        return cls(program, os.getpid(), kind, job, iso(datetime.now(UTC)))

    def describe(self) -> str:
        """One clause naming the holder and what to do about it."""
        if self.job:
            what = f"{self.kind} job {self.job} of {self.program} (pid {self.pid})"
            todo = f"wait for it (hxctl jobs) or cancel it (hxctl cancel {self.job})"
        else:
            what = f"{self.kind} in {self.program} (pid {self.pid})"
            todo = "wait for it or stop that process"
        return f"{what} has been running since {self.since}; {todo}"


class Claim:
    """The locks one job holds; ``release`` (or the holder's death) gives them back."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def release(self) -> None:
        """Close the lock files, which drops their locks; the stale record stays and is ignored (nobody holds it)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(state_dir: Path, holder: Holder, *, exclusive: bool) -> Claim:
    """Take the locks of a job of ``holder.kind``; raise Busy naming the job that holds them.

    ``exclusive`` jobs change the node and run alone; the others share the node with each other.
    """
    directory = _lock_dir(state_dir)
    fds: list[int] = []
    try:
        fds.append(_open(directory, f"{holder.kind}.lock"))
        if not _try_lock(fds[0], fcntl.LOCK_EX):
            raise Busy(f"another {holder.kind} is running: {_describe(fds[0], holder.kind)}")
        _record(fds[0], holder)
        fds.append(_open(directory, NODE_LOCK))
        if not _try_lock(fds[1], fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH):
            raise Busy(f"the node is busy: {_holders(directory, holder.kind)}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(directory)
    return Claim(fds)


def _lock_dir(state_dir: Path) -> int:
    """``<state_dir>/locks`` opened as a directory; created (0755, like the state directory) when missing."""
    path = state_dir / LOCK_DIR
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise Failed(
            f"{path}: cannot use the lock directory ({exc.strerror}); jobs run as root or the hxd account "
            "(hxctl --offline too), and paths.state_dir must be theirs"
        ) from None


def _open(directory: int, name: str) -> int:
    """A lock file in the lock directory, created if missing; never a symlink or anything but a regular file."""
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=directory)
    except OSError as exc:
        raise Failed(f"{LOCK_DIR}/{name}: cannot open the lock file ({exc.strerror}); remove it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Failed(f"{LOCK_DIR}/{name} is not a regular file; remove it")
    return fd


def _try_lock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _record(fd: int, holder: Holder) -> None:
    """Write the holder's record into its kind's lock file (held exclusively, so only this job writes it)."""
    data = json.dumps(asdict(holder), sort_keys=True).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _describe(fd: int, kind: str) -> str:
    """The record in a lock file that someone holds, as one clause."""
    try:
        data = json.loads(os.pread(fd, _RECORD_MAX, 0))
        return Holder(**data).describe()
    except (OSError, ValueError, TypeError):
        return f"a {kind} job whose holder has not recorded itself yet; try again in a moment"


def _holders(directory: int, own_kind: str) -> str:
    """Name the jobs that hold the node: the record of every kind lock held now, except our own kind's."""
    found: list[str] = []
    others = (n for n in os.listdir(directory) if n.endswith(".lock") and n not in (NODE_LOCK, f"{own_kind}.lock"))
    for name in sorted(others):
        with contextlib.suppress(OSError):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
            try:
                if not _try_lock(fd, fcntl.LOCK_SH):  # held exclusively: a job of that kind is running
                    found.append(_describe(fd, name.removesuffix(".lock")))
            finally:
                os.close(fd)
    return "; ".join(found) or "a job that has not recorded itself yet holds it; try again in a moment"
