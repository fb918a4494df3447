"""Jobs seen from hxctl: follow the job a Manager method starts, list hxd's jobs (``hxctl jobs``), cancel one
(``hxctl cancel JOB``), as Busy advises. All of it through the Job objects at /org/hxinfra/hxd1/jobs/N.

Following a job: call the Manager method that returns it, follow it to its end, print its progress.

The match for the jobs' signals is added before the call, so no update sent between the call and its reply is lost:
every job's PropertiesChanged and Finished arrive in the order hxd sent them, and the ones for our job's path are
applied once the reply names it. (No GetAll at the start: its snapshot would be newer than the signals queued before
its reply, and applying those after it would move the job backwards.) If hxd leaves the bus, NameOwnerChanged says
so. Ctrl-C asks hxd to cancel the job; a second one leaves at once. ``print_progress`` is also the JobControl
listener of ``--offline`` runs, so both look the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from hxd.bus import names
from hxd.bus.connection import bus_spec, call_method
from hxd.cli.client import CallFailed, Unreachable, checked, open_bus, unwrap
from hxd.cli.common import EXIT_OK
from hxd.core.errors import Cancelled, Failed, InvalidArgs, NotFound
from hxd.core.jobs import JobState, Listener

# Job property -> JobState field.
_FIELDS = {
    "Kind": "kind",
    "State": "state",
    "Phase": "phase",
    "BytesDone": "bytes_done",
    "BytesTotal": "bytes_total",
    "ItemsDone": "items_done",
    "ItemsTotal": "items_total",
    "Message": "message",
    "Result": "result",
}


def print_progress(state: JobState, changed: frozenset[str]) -> None:
    """A line on stderr per phase (``[3/11] measure llama3.2:3b``) and per message, so stdout stays for --json.

    The counter is the current phase's: one set with the phase, or one still counting. A count already complete
    that the phase left alone belongs to a phase before it (migrate counts blobs in copy only), so it is left out.
    """
    if "phase" in changed and state.phase:
        counting = state.items_total and ("items_total" in changed or state.items_done < state.items_total)
        counter = f"[{state.items_done}/{state.items_total}] " if counting else ""
        print(f"{counter}{state.phase}", file=sys.stderr, flush=True)
    if "message" in changed and state.message and state.state == "running":
        print(f"  {state.message}", file=sys.stderr, flush=True)


def follow_job(
    bus: str | None, member: str, signature: str, body: list[Any], listener: Listener = print_progress
) -> dict[str, Any]:
    """Call ``member`` on hxd's Manager (it returns a job's object path), follow the job, return its Result.

    Raises Unreachable, CallFailed when hxd refuses the call, and Failed or Cancelled when the job ends so.
    """
    state = asyncio.run(_follow(bus_spec(bus), member, signature, body, listener))
    if state.state == "cancelled":
        raise Cancelled(state.message or f"the {state.kind or 'job'} was cancelled")
    if state.state != "completed":
        raise Failed(state.message or f"the {state.kind or 'job'} ended {state.state}")
    return state.result


async def _follow(spec: str, member: str, signature: str, body: list[Any], listener: Listener) -> JobState:
    bus = await open_bus(spec)
    signals: asyncio.Queue[Message] = asyncio.Queue()
    bus.add_message_handler(lambda message: signals.put_nowait(message) if _watched(message) else None)
    loop = asyncio.get_running_loop()
    bus_itself = (names.DBUS_NAME, names.DBUS_PATH, names.DBUS_INTERFACE)
    try:
        for rule in (
            f"type='signal',sender='{names.BUS_NAME}',path_namespace='{names.JOBS_PATH}'",
            f"type='signal',sender='{names.DBUS_NAME}',member='NameOwnerChanged',arg0='{names.BUS_NAME}'",
        ):
            checked(await call_method(bus, *bus_itself, "AddMatch", "s", [rule]), spec)
        reply = await call_method(
            bus, names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, member, signature, body
        )
        (path,) = checked(reply, spec)
        job = _Job(path, listener)
        loop.add_signal_handler(signal.SIGINT, lambda: _cancel(bus, spec, job, loop))
        while not job.finished:
            job.handle(await signals.get())
        if not job.state.result:  # a job may publish its Result only as a property, not in PropertiesChanged
            job.apply(await _properties(bus, path))
        return job.state
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        bus.disconnect()


def _watched(message: Message) -> bool:
    return message.message_type == MessageType.SIGNAL and (
        (message.path or "").startswith(f"{names.JOBS_PATH}/") or message.member == "NameOwnerChanged"
    )


class _Job:
    """The job's properties as a JobState, updated from PropertiesChanged; ``finished`` once Finished came."""

    def __init__(self, path: str, listener: Listener) -> None:
        self.path = path
        self.listener = listener
        self.state = JobState(kind="")
        self.finished = False
        self.cancelling: asyncio.Task[None] | None = None

    def apply(self, properties: dict[str, Any]) -> None:
        changed = set()
        for name, value in properties.items():
            field = _FIELDS.get(name)
            if field is not None and getattr(self.state, field) != value:
                setattr(self.state, field, value)
                changed.add(field)
        if changed:
            self.listener(self.state, frozenset(changed))

    def handle(self, message: Message) -> None:
        if message.member == "NameOwnerChanged":  # the hxd that ran the job is gone, and the job with it
            raise Unreachable(f"hxd left the bus while the job ran ({self.path}); see `journalctl -u hxd` for why")
        if message.path != self.path:
            return
        if message.member == "PropertiesChanged" and message.body[0] == names.JOB_INTERFACE:
            self.apply(unwrap(message.body[1]))
        elif message.member == "Finished" and message.interface == names.JOB_INTERFACE:
            self.apply({"State": message.body[0], "Message": message.body[1]})
            self.finished = True


def _cancel(bus: MessageBus, spec: str, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
    """First Ctrl-C: ask hxd to cancel (the job ends as cancelled); the default handler takes the next one."""
    loop.remove_signal_handler(signal.SIGINT)
    print("hxctl: cancelling the job (Ctrl-C again to stop waiting for it)", file=sys.stderr, flush=True)
    job.cancelling = loop.create_task(_ask_cancel(bus, spec, job.path))  # held: the loop keeps weak references


async def _ask_cancel(bus: MessageBus, spec: str, path: str) -> None:
    try:
        checked(await call_method(bus, names.BUS_NAME, path, names.JOB_INTERFACE, "Cancel"), spec)
    except (CallFailed, Unreachable) as exc:  # e.g. not authorized: the job runs on and we keep following it
        print(f"hxctl: cannot cancel the job: {exc}", file=sys.stderr, flush=True)


async def _properties(bus: MessageBus, path: str) -> dict[str, Any]:
    """The job's properties; empty when the object is already gone."""
    reply = await call_method(
        bus, names.BUS_NAME, path, names.PROPERTIES_INTERFACE, "GetAll", "s", [names.JOB_INTERFACE]
    )
    if reply.message_type == MessageType.ERROR:
        return {}
    properties: dict[str, Any] = unwrap(reply.body[0])
    return properties


# --- hxctl jobs, hxctl cancel ---------------------------------------------------------------------------------

# (heading, key) of the table; --json has the same keys.
_COLUMNS = (
    ("JOB", "job"),
    ("PATH", "path"),
    ("KIND", "kind"),
    ("STATE", "state"),
    ("PHASE", "phase"),
    ("PROGRESS", "progress"),
    ("CANCELLABLE", "cancellable"),
    ("MESSAGE", "message"),
)


def add_parsers(commands: Any) -> None:
    jobs = commands.add_parser(
        "jobs",
        help="list hxd's jobs, running and ended in the last 5 minutes",
        description="A line per job: its number, object path, kind, state, phase, progress, whether it can still "
        "be cancelled, and its message.",
    )
    jobs.add_argument("--json", action="store_true", help="print one JSON array: an object per job")
    jobs.set_defaults(run=run_jobs)
    cancel = commands.add_parser(
        "cancel",
        help="ask one of hxd's jobs to stop at its next safe point",
        description="Exit status 0 when the job was asked to stop (or had been cancelled), 1 when there is no such "
        "job, it already ended otherwise, or it is past the point where it can stop.",
    )
    cancel.add_argument("job", metavar="JOB", help=f"the job's number (3) or object path ({names.job_path(3)})")
    cancel.set_defaults(run=run_cancel)


def run_jobs(args: argparse.Namespace) -> int:
    jobs = asyncio.run(_list(_spec(args)))
    if args.json:
        print(json.dumps(jobs, sort_keys=True))
    elif not jobs:
        print("no jobs")
    else:
        table = [[heading for heading, _ in _COLUMNS], *([_cell(job[key]) for _, key in _COLUMNS] for job in jobs)]
        widths = [max(len(row[column]) for row in table) for column in range(len(_COLUMNS))]
        for row in table:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def run_cancel(args: argparse.Namespace) -> int:
    path = _path(args.job)
    job = asyncio.run(_cancel_job(_spec(args), path))
    what = f"job {_number(path)} ({job['Kind']})" if job else f"job {_number(path)}"
    state = job.get("State", "running")  # no properties: it left the bus the moment after
    if state == "running":
        print(f"{what}: asked to stop; it ends at its next safe point")
    elif state == "cancelled":
        print(f"{what}: cancelled")
    else:
        raise Failed(f"{what} already ended: {state}: {job['Message']}; nothing to cancel")
    return EXIT_OK


def _spec(args: argparse.Namespace) -> str:
    """The bus to ask: jobs are hxd's, and --offline has no hxd to ask."""
    if args.offline:
        raise InvalidArgs(
            f"hxctl {args.command} asks hxd for its jobs; drop --offline (a job of hxctl --offline "
            "stops with Ctrl-C where it runs)"
        )
    return bus_spec(args.bus)


def _number(path: str) -> int:
    return int(path.rsplit("/", 1)[1])


def _path(job: str) -> str:
    """The object path of the job ``JOB`` names, by number or by path; InvalidArgs for anything else."""
    number = job.removeprefix(f"{names.JOBS_PATH}/")
    if not number.isdigit() or job not in (number, names.job_path(int(number))):
        raise InvalidArgs(
            f"{job!r} is not a job: give its number (3) or object path ({names.job_path(3)}), as `hxctl jobs` "
            "lists them"
        )
    return names.job_path(int(number))


async def _list(spec: str) -> list[dict[str, Any]]:
    """Every job the Manager's Jobs property names, with its properties; one gone meanwhile is left out."""
    bus = await open_bus(spec)
    try:
        reply = await call_method(
            bus,
            names.BUS_NAME,
            names.MANAGER_PATH,
            names.PROPERTIES_INTERFACE,
            "Get",
            "ss",
            [names.MANAGER_INTERFACE, "Jobs"],
        )
        [paths] = checked(reply, spec)
        jobs = []
        for path in sorted(paths, key=_number):
            properties = await _properties(bus, path)
            if properties:
                jobs.append(_row(path, properties))
        return jobs
    finally:
        bus.disconnect()


def _row(path: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "job": _number(path),
        "path": path,
        "kind": properties["Kind"],
        "state": properties["State"],
        "phase": properties["Phase"],
        "progress": properties["Progress"],
        "cancellable": properties["Cancellable"],
        "message": properties["Message"],
    }


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0%}"
    return str(value) or "-"


async def _cancel_job(spec: str, path: str) -> dict[str, Any]:
    """Call the job's Cancel and return its properties afterwards (empty if it left the bus meanwhile); NotFound
    when hxd has no such job."""
    bus = await open_bus(spec)
    try:
        try:
            checked(await call_method(bus, names.BUS_NAME, path, names.JOB_INTERFACE, "Cancel"), spec)
        except CallFailed as exc:
            if exc.error_name != names.ERROR_UNKNOWN_METHOD:
                raise
            raise NotFound(
                f"there is no job {_number(path)} in hxd: `hxctl jobs` lists its jobs (an ended one for 5 minutes)"
            ) from None
        return await _properties(bus, path)
    finally:
        bus.disconnect()
