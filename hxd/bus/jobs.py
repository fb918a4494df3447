"""Jobs on the bus: one object per long operation at ``/org/hxinfra/hxd1/jobs/N`` (UDisks2's jobs, rauc's Completed).

A job's state lives in properties announced with PropertiesChanged; it ends with ``Finished(state, message)`` and
stays readable for a while so a client that missed the signal can still read ``Result``. Clients subscribe
(``path_namespace='/org/hxinfra/hxd1/jobs'``) before calling the method that starts a job, so no update is lost.
Mutating jobs (migrate, rollback, prune, audit fixes) run one at a time; a second gets ``Error.Busy``.
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
from hxd.core.errors import Busy, Cancelled, Failed, HxdError
from hxd.core.jobs import JobControl, JobState

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

Work = Callable[[JobControl], dict[str, Any]]
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


class Job(HxdInterface):
    """``org.hxinfra.hxd1.Job``: a running or finished operation."""

    def __init__(self, control: JobControl, authority: Authority, action: str, exclusive: bool) -> None:
        super().__init__(names.JOB_INTERFACE, authority)
        self.control = control
        self.default_action = action  # cancelling needs what starting needed
        self.exclusive = exclusive

    @property
    def state(self) -> JobState:
        return self.control.state

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
        if self.state.state == "running" and not self.control.cancel():
            raise Failed(f"the {self.state.kind} is past the point where it can stop; it will finish, or undo itself")

    @dbus_property(access=PropertyAccess.READ)
    def Cancellable(self) -> DBusBool:
        return self.state.cancellable and self.state.state == "running"

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


class JobManager:
    """Starts jobs in worker threads, exports them, enforces one mutating job at a time, cleans up."""

    def __init__(self, bus: MessageBus, authority: Authority, on_change: Callable[[], None]) -> None:
        self._bus = bus
        self._authority = authority
        self._on_change = on_change
        self._next = 1
        self.jobs: dict[str, Job] = {}
        self._work: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, kind: str, action: str, work: Work, *, exclusive: bool = True) -> str:
        """Export a job running ``work`` in a thread and return its path. An ``exclusive`` job (one that changes
        files or stops Ollama) runs alone; others run beside each other but not beside an exclusive one, and one of
        each kind at a time."""
        for path, other in self.jobs.items():
            if other.state.state == "running" and (exclusive or other.exclusive or other.state.kind == kind):
                raise Busy(f"{other.state.kind} job {path} is running; wait for it or cancel it")
        loop = asyncio.get_running_loop()
        path = f"{names.JOBS_PATH}/{self._next}"
        self._next += 1
        holder: list[Job] = []

        def from_worker(_state: JobState, fields: frozenset[str]) -> None:
            loop.call_soon_threadsafe(holder[0].emit_properties_changed, holder[0].snapshot(fields))

        control = JobControl(kind, from_worker)
        job = Job(control, self._authority, action, exclusive)
        holder.append(job)
        self._bus.export(path, job)
        self.jobs[path] = job
        self._work[path] = asyncio.ensure_future(asyncio.to_thread(work, control))
        self._ended[path] = asyncio.Event()
        task = asyncio.create_task(self._finish(path, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._on_change()
        log.info("job started", job=path, kind=kind)
        return path

    async def _finish(self, path: str, job: Job) -> None:
        control = job.control
        try:
            result = await self._work[path]
            state, message = "completed", str(result.get("message", "done"))
        except Cancelled as exc:
            result, state, message = {}, "cancelled", str(exc)
        except HxdError as exc:
            result, state, message = {}, "failed", " ".join(str(exc).split())
        except Exception:
            log.exception("job crashed", job=path, kind=control.state.kind)
            result, state, message = {}, "failed", f"{control.state.kind} failed inside hxd; see `journalctl -u hxd`"
        del self._work[path]
        control.finish(state, message, result)
        self._ended.pop(path).set()
        await asyncio.sleep(0)  # the last PropertiesChanged (queued by finish) goes out before Finished
        job.Finished(state, message)
        log.info("job finished", job=path, kind=control.state.kind, state=state, message=message)
        self._on_change()
        await asyncio.sleep(RETENTION_SEC)
        self._bus.unexport(path, job)
        del self.jobs[path]
        self._on_change()

    def after(self, path: str, callback: Callable[[JobState], object]) -> None:
        """Call ``callback`` on the event loop once the job at ``path`` has ended (a recorder of its outcome)."""

        async def wait() -> None:
            callback(await self.outcome(path))

        task = asyncio.create_task(wait())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def outcome(self, path: str) -> JobState:
        """Wait for the job at ``path`` to end; for methods that answer with a job's result (Audit)."""
        ended = self._ended.get(path)
        if ended is not None:
            await ended.wait()
        return self.jobs[path].state

    def running(self) -> list[Job]:
        return [job for job in self.jobs.values() if job.state.state == "running"]

    async def shutdown(self, timeout: float) -> None:
        """Cancel what runs and wait for the work to stop (a migration past its point of no return finishes or
        rolls back first, which is why this can take a while)."""
        for job in self.running():
            job.control.cancel()
        if self._work:
            await asyncio.wait(list(self._work.values()), timeout=timeout)
        for task in self._tasks:
            task.cancel()
