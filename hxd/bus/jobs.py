"""Jobs on the bus: each job of the core's runner as an object at ``/org/hxinfra/hxd1/jobs/N`` (UDisks2's jobs,
rauc's Completed).

The core (hxd.core.runner) decides what runs and holds the node's lock; this module only shows its jobs. A job's
state lives in properties announced with PropertiesChanged; it ends with ``Finished(state, message)`` and stays
readable for a while so a client that missed the signal can still read ``Result``. Clients subscribe
(``path_namespace='/org/hxinfra/hxd1/jobs'``) before calling the method that starts a job; the object is exported
before the job's work starts, so no update is lost.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any

import structlog
from dbus_fast import PropertyAccess, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusDict, DBusDouble, DBusSignature, DBusStr, DBusUInt64
from dbus_fast.service import dbus_property, dbus_signal

from hxd.bus import names
from hxd.bus.auth import Authority
from hxd.bus.methods import HxdInterface, method
from hxd.core.errors import Failed
from hxd.core.jobs import JobState, RunState
from hxd.core.runner import Job as CoreJob
from hxd.core.runner import JobRunner

log = structlog.get_logger("hxd.jobs")

# How long a finished job stays on the bus for clients to read its Result.
RETENTION_SEC = 300.0
_PROPERTY = {
    "phase": "Phase",
    "state": "State",
    "message": "Message",
    "result": "Result",
    "bytes_done": "BytesDone",
    "bytes_total": "BytesTotal",
    "items_done": "ItemsDone",
    "items_total": "ItemsTotal",
    "cancellable": "Cancellable",
}

FinishedSignal = Annotated[tuple[str, str], DBusSignature("ss")]


def to_variants(result: dict[str, Any]) -> dict[str, Variant]:
    """A result as ``a{sv}``: strings, booleans, integers and floats as themselves, anything else as JSON text."""
    variants: dict[str, Variant] = {}
    for key, value in result.items():
        if isinstance(value, bool):
            variants[key] = Variant("b", value)
        elif isinstance(value, int):
            variants[key] = Variant("x", value)
        elif isinstance(value, float):
            variants[key] = Variant("d", value)
        elif isinstance(value, str):
            variants[key] = Variant("s", value)
        else:
            variants[key] = Variant("s", json.dumps(value, sort_keys=True))
    return variants


def action_of(job: CoreJob) -> str:
    """The polkit action that starting ``job`` needed, and so cancelling it needs."""
    if job.kind == "smoke":
        return names.ACTION_SMOKE
    if job.kind == "audit":
        return names.ACTION_AUDIT_FIX if job.exclusive else names.ACTION_AUDIT
    return names.ACTION_MIGRATE


def job_path(job: CoreJob) -> str:
    return names.job_path(job.number)


class Job(HxdInterface):
    """``org.hxinfra.hxd1.Job``: a running or finished operation."""

    def __init__(self, job: CoreJob, authority: Authority) -> None:
        super().__init__(names.JOB_INTERFACE, authority)
        self.job = job
        self.default_action = action_of(job)  # cancelling needs what starting needed
        self.ended = asyncio.Event()

    @property
    def state(self) -> JobState:
        return self.job.state

    def snapshot(self, fields: frozenset[str]) -> dict[str, Any]:
        """The properties behind the JobState fields that changed, read now: called in the worker thread, so a
        phase that lasts less than one loop turn is still announced with its own values."""
        props = {_PROPERTY[f] for f in fields if f in _PROPERTY}
        if props & {"BytesDone", "BytesTotal", "ItemsDone", "ItemsTotal", "State"}:
            props.add("Progress")
        return {name: getattr(self, name) for name in props}

    @method()
    def Cancel(self) -> None:
        """Ask the job to stop at its next safe point; refused once Cancellable is false."""
        if self.state.state == RunState.RUNNING and not self.job.control.cancel():
            raise Failed(f"the {self.state.kind} is past the point where it can stop; it will finish, or undo itself")

    @dbus_property(access=PropertyAccess.READ)
    def Cancellable(self) -> DBusBool:
        return self.state.cancellable and self.state.state == RunState.RUNNING

    @dbus_signal()
    def Finished(self, state: DBusStr, message: DBusStr) -> FinishedSignal:
        return state, message

    @dbus_property(access=PropertyAccess.READ)
    def Kind(self) -> DBusStr:
        return self.state.kind

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self.state.state

    @dbus_property(access=PropertyAccess.READ)
    def Phase(self) -> DBusStr:
        return self.state.phase

    @dbus_property(access=PropertyAccess.READ)
    def Progress(self) -> DBusDouble:
        return self.state.progress

    @dbus_property(access=PropertyAccess.READ)
    def BytesDone(self) -> DBusUInt64:
        return self.state.bytes_done

    @dbus_property(access=PropertyAccess.READ)
    def BytesTotal(self) -> DBusUInt64:
        return self.state.bytes_total

    @dbus_property(access=PropertyAccess.READ)
    def ItemsDone(self) -> DBusUInt64:
        return self.state.items_done

    @dbus_property(access=PropertyAccess.READ)
    def ItemsTotal(self) -> DBusUInt64:
        return self.state.items_total

    @dbus_property(access=PropertyAccess.READ)
    def Message(self) -> DBusStr:
        return self.state.message

    @dbus_property(access=PropertyAccess.READ)
    def Result(self) -> DBusDict:
        return to_variants(self.state.result)


class JobExporter:
    """Exports the runner's jobs (a JobObserver): each as a Job object from its start until RETENTION_SEC after its
    end. All calls but ``job_changed`` arrive on the event loop (the runner's dispatch)."""

    def __init__(self, bus: MessageBus, authority: Authority, runner: JobRunner, on_change: Callable[[], None]) -> None:
        self._bus = bus
        self._authority = authority
        self._loop = asyncio.get_running_loop()
        self._on_change = on_change
        self.jobs: dict[str, Job] = {}  # by path: running ones and those ended within RETENTION_SEC
        self._tasks: set[asyncio.Task[None]] = set()
        runner.dispatch = self._loop.call_soon_threadsafe
        runner.observers.append(self)

    def job_started(self, job: CoreJob) -> None:
        path = job_path(job)
        exported = Job(job, self._authority)
        self._bus.export(path, exported)
        self.jobs[path] = exported
        self._on_change()

    def job_changed(self, job: CoreJob, fields: frozenset[str]) -> None:
        exported = self.jobs[job_path(job)]
        self._loop.call_soon_threadsafe(exported.emit_properties_changed, exported.snapshot(fields))

    def job_ended(self, job: CoreJob) -> None:
        path = job_path(job)
        exported = self.jobs[path]
        exported.ended.set()
        task = asyncio.create_task(self._retire(path, exported))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._on_change()

    async def _retire(self, path: str, exported: Job) -> None:
        await asyncio.sleep(0)  # the last PropertiesChanged (queued by the worker) goes out before Finished
        exported.Finished(exported.state.state, exported.state.message)
        await asyncio.sleep(RETENTION_SEC)
        self._bus.unexport(path, exported)
        del self.jobs[path]
        self._on_change()

    async def outcome(self, job: CoreJob) -> CoreJob:
        """Wait for ``job`` to end; for methods that answer with a job's result (Audit)."""
        await self.jobs[job_path(job)].ended.wait()
        return job

    def running(self) -> list[Job]:
        return [job for job in self.jobs.values() if job.state.state == RunState.RUNNING]

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
