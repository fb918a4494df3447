"""The service controller the daemon gives the core: systemd's D-Bus API (``org.freedesktop.systemd1``).

StopUnit/StartUnit return a job; the unit has stopped (or started) only when systemd announces ``JobRemoved`` for
that job with result ``done``, so hxd subscribes first and waits for it, as ``systemctl`` does. The core calls these
methods from a worker thread; they hop to the event loop that owns the bus connection and block until done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from hxd.bus import names
from hxd.bus.connection import call_method
from hxd.core.errors import Failed

_JOB_TIMEOUT_SEC = 180.0  # longer than systemd's default TimeoutStopSec (90 s): systemd decides, not hxd
_ACTIVE = ("active", "activating", "reloading")
T = TypeVar("T")


class SystemdController:
    """Implements hxd.core.service.ServiceController over D-Bus, for calls from worker threads."""

    def __init__(self, bus: MessageBus, loop: asyncio.AbstractEventLoop) -> None:
        self._bus = bus
        self._loop = loop

    def is_active(self, unit: str) -> bool:
        return self._wait(self._active_state(unit)) in _ACTIVE

    def stop(self, unit: str) -> None:
        self._wait(self._job("StopUnit", unit))

    def start(self, unit: str) -> None:
        self._wait(self._job("StartUnit", unit))

    def _wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _call(
        self, path: str, interface: str, member: str, signature: str = "", body: list[Any] | None = None
    ) -> Message:
        return await call_method(self._bus, names.SYSTEMD_NAME, path, interface, member, signature, body)

    async def _match(self, member: str, rule: str) -> None:
        """AddMatch or RemoveMatch on the bus itself."""
        await call_method(self._bus, names.DBUS_NAME, names.DBUS_PATH, names.DBUS_INTERFACE, member, "s", [rule])

    async def _active_state(self, unit: str) -> str:
        reply = await self._call(names.SYSTEMD_PATH, names.SYSTEMD_MANAGER, "GetUnit", "s", [unit])
        if reply.message_type == MessageType.ERROR:
            if reply.error_name == "org.freedesktop.systemd1.NoSuchUnit":
                return "inactive"  # not loaded: systemd loads units on demand, so it is not running either
            raise Failed(f"systemd: cannot look up {unit}: {reply.body[0] if reply.body else reply.error_name}")
        state = await self._call(
            reply.body[0], names.PROPERTIES_INTERFACE, "Get", "ss", [names.SYSTEMD_UNIT, "ActiveState"]
        )
        if state.message_type == MessageType.ERROR:
            raise Failed(f"systemd: cannot read the state of {unit}: {state.error_name}")
        return str(state.body[0].value)

    async def _job(self, method: str, unit: str) -> None:
        """Call StopUnit/StartUnit(unit, "replace") and wait for its JobRemoved."""
        finished: dict[str, asyncio.Future[str]] = {}

        def on_signal(msg: Message) -> None:
            if msg.member == "JobRemoved" and msg.interface == names.SYSTEMD_MANAGER:
                _id, job, _unit, result = msg.body
                future = finished.setdefault(job, self._loop.create_future())
                if not future.done():
                    future.set_result(result)

        match = f"type='signal',sender='{names.SYSTEMD_NAME}',interface='{names.SYSTEMD_MANAGER}',member='JobRemoved'"
        self._bus.add_message_handler(on_signal)
        try:
            await self._match("AddMatch", match)
            # Its error on a second job ("already subscribed") is harmless: the subscription holds until hxd exits.
            await self._call(names.SYSTEMD_PATH, names.SYSTEMD_MANAGER, "Subscribe")
            reply = await self._call(names.SYSTEMD_PATH, names.SYSTEMD_MANAGER, method, "ss", [unit, "replace"])
            if reply.message_type == MessageType.ERROR:
                detail = reply.body[0] if reply.body else reply.error_name
                raise Failed(f"systemd refused to {method.removesuffix('Unit').lower()} {unit}: {detail}")
            job = reply.body[0]
            future = finished.setdefault(job, self._loop.create_future())
            try:
                async with asyncio.timeout(_JOB_TIMEOUT_SEC):
                    result = await future
            except TimeoutError:
                raise Failed(
                    f"systemd did not finish the {method} job for {unit} in {_JOB_TIMEOUT_SEC:.0f} s"
                ) from None
            if result != "done":
                raise Failed(
                    f"systemd: {method.removesuffix('Unit').lower()} {unit} ended with result {result!r}; "
                    f"see journalctl -u {unit}"
                )
        finally:
            self._bus.remove_message_handler(on_signal)
            await self._match("RemoveMatch", match)
