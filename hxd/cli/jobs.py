"""Jobs seen from hxctl: call a Manager method that returns a job, follow it to its end, print its progress.

The match for the jobs' signals is added before the call, so no update sent between the call and its reply is lost:
every job's PropertiesChanged and Finished arrive in the order hxd sent them, and the ones for our job's path are
applied once the reply names it. (No GetAll at the start: its snapshot would be newer than the signals queued before
its reply, and applying those after it would move the job backwards.) If hxd leaves the bus, NameOwnerChanged says
so. Ctrl-C asks hxd to cancel the job; a second one leaves at once. ``print_progress`` is also the JobControl
listener of ``--offline`` runs, so both look the same.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from hxd.bus import names
from hxd.bus.connection import bus_spec, call_method
from hxd.cli.client import CallFailed, Unreachable, checked, open_bus, unwrap
from hxd.core.errors import Cancelled, Failed
from hxd.core.jobs import JobState, Listener

_PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
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
    reply = await call_method(bus, names.BUS_NAME, path, _PROPERTIES_INTERFACE, "GetAll", "s", [names.JOB_INTERFACE])
    if reply.message_type == MessageType.ERROR:
        return {}
    properties: dict[str, Any] = unwrap(reply.body[0])
    return properties
