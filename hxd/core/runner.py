"""The job runner: every long operation of a process (hxd, or hxctl --offline) starts, runs and ends here.

One place decides what may run: a job takes the node-wide lock (hxd.core.nodelock) before anything of it runs, so
the daemon and an offline client exclude each other the way two jobs of the daemon do, and the loser gets Busy
naming the holder. The number of worker threads is bounded by the same rule: one job of each kind at a time.

A job is started in two steps so that a caller can prepare it (plan a migration, read a journal) while holding
its locks: ``reserve`` takes the locks and creates the job, ``start`` launches its work in a thread (``abandon``
gives the locks back when the preparation fails). Observers (the bus adapter exporting jobs as D-Bus objects) hear
of each job through ``dispatch``: the daemon's event loop (``call_soon_threadsafe``), or a direct call offline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from hxd.core import nodelock
from hxd.core.errors import Cancelled, Failed, HxdError
from hxd.core.jobs import JobControl, JobState, RunState

log = structlog.get_logger("hxd.jobs")

Dispatch = Callable[[Callable[[], None]], object]


@dataclass(frozen=True)
class Outcome:
    """What a job's work returns: a one-line message, the Result shown to clients, and the typed value for the
    code that started it (an AuditResult, a SmokeRun)."""

    message: str
    result: dict[str, Any] = field(default_factory=dict)
    value: object = None


Work = Callable[[JobControl], Outcome]


class JobObserver(Protocol):
    """Told about jobs. ``job_started`` and ``job_ended`` arrive through the runner's dispatch (the event loop);
    ``job_changed`` in the worker thread, so a phase shorter than one loop turn is still seen with its values."""

    def job_started(self, job: Job) -> None: ...

    def job_changed(self, job: Job, fields: frozenset[str]) -> None: ...

    def job_ended(self, job: Job) -> None: ...


class Job:
    """One operation: its control (progress, cancel), its locks while it runs, and how it ended."""

    def __init__(self, runner: JobRunner, number: int, kind: str, exclusive: bool, claim: nodelock.Claim) -> None:
        self.number = number
        self.exclusive = exclusive
        self.control = JobControl(kind, lambda _state, fields: runner.changed(self, fields))
        self.claim = claim
        self.outcome: Outcome | None = None
        self.error: HxdError | None = None  # why it failed or was cancelled, typed (hxctl --offline raises it)
        self.ended = threading.Event()

    @property
    def kind(self) -> str:
        return self.control.state.kind

    @property
    def state(self) -> JobState:
        return self.control.state


class JobRunner:
    """Runs the jobs of one process under the node-wide lock in ``state_dir``."""

    def __init__(self, program: str, state_dir: Callable[[], Path], *, numbered: bool) -> None:
        """``program`` names this process in lock records; ``numbered`` jobs are named by number there (hxd's jobs
        are D-Bus objects ``jobs/N`` that hxctl can cancel); ``state_dir`` is read at each reservation, so a
        reloaded config takes effect for the next job."""
        self.program = program
        self.state_dir = state_dir
        self.numbered = numbered
        self.dispatch: Dispatch = lambda callback: callback()
        self.observers: list[JobObserver] = []
        self.jobs: dict[int, Job] = {}  # running ones
        self._next = 1
        self._lock = threading.Lock()

    def reserve(self, kind: str, *, exclusive: bool) -> Job:
        """Take the locks for a job of ``kind`` (Busy when another holds them) and create the job, not started.
        ``exclusive`` jobs change files or stop Ollama and run alone on the node."""
        with self._lock:
            number, self._next = self._next, self._next + 1
        holder = nodelock.Holder.now(self.program, kind, str(number) if self.numbered else "")
        claim = nodelock.acquire(self.state_dir(), holder, exclusive=exclusive)
        return Job(self, number, kind, exclusive, claim)

    def abandon(self, job: Job) -> None:
        """Give back the locks of a reserved job that will not start (its preparation failed)."""
        job.claim.release()

    def start(self, job: Job, work: Work, on_end: Callable[[Job], None] | None = None) -> Job:
        """Run ``work`` in a thread; ``on_end`` is called through dispatch once the job has ended, before the
        observers hear of it. Observers hear of the start before the work can report anything."""

        def launch() -> None:
            self.jobs[job.number] = job
            for observer in self.observers:
                observer.job_started(job)
            threading.Thread(target=self._run, args=(job, work, on_end), name=f"hxd-{job.kind}", daemon=True).start()
            log.info("job started", job=job.number, kind=job.kind, program=self.program)

        self.dispatch(launch)
        return job

    def changed(self, job: Job, fields: frozenset[str]) -> None:
        """Tell the observers, in the worker thread; an observer's failure is logged, never the job's end."""
        for observer in self.observers:
            try:
                observer.job_changed(job, fields)
            except Exception:
                log.exception("a job observer failed", job=job.number, kind=job.kind)

    def _run(self, job: Job, work: Work, on_end: Callable[[Job], None] | None) -> None:
        try:
            job.outcome = work(job.control)
            state, message = RunState.COMPLETED, job.outcome.message
        except Cancelled as exc:
            job.error, state, message = exc, RunState.CANCELLED, str(exc)
        except HxdError as exc:
            job.error, state, message = exc, RunState.FAILED, " ".join(str(exc).split())
        except Exception:
            log.exception("job crashed", job=job.number, kind=job.kind)
            message = f"{job.kind} failed inside hxd; see `journalctl -u hxd`"
            job.error, state = Failed(message), RunState.FAILED
        finally:
            job.claim.release()
        job.control.finish(state, message, job.outcome.result if job.outcome else {})
        log.info("job finished", job=job.number, kind=job.kind, state=str(state), message=message)

        def ended() -> None:
            self.jobs.pop(job.number, None)
            if on_end is not None:
                on_end(job)
            for observer in self.observers:
                observer.job_ended(job)
            job.ended.set()

        self.dispatch(ended)

    def cancel_all(self) -> None:
        """Ask every running job to stop at its next safe point (a migration past its point of no return finishes
        or undoes itself first)."""
        for job in list(self.jobs.values()):
            job.control.cancel()
