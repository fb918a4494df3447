"""A mock polkit authority on the private bus, as udisks' and python-dbusmock's tests use.

It answers ``CheckAuthorization`` from a list of allowed actions, records every request (subject, action, flags),
and can delay its answer so tests can hold a call in flight. It runs in a thread with its own event loop so a test
can drive hxd from the outside with blocking tools (busctl, signals).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated, Any

from dbus_fast import NameFlag, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method

Subject = Annotated[tuple[str, dict[str, Variant]], DBusSignature("(sa{sv})")]
Details = Annotated[dict[str, str], DBusSignature("a{ss}")]
AuthResult = Annotated[tuple[bool, bool, dict[str, str]], DBusSignature("(bba{ss})")]
Str = Annotated[str, DBusSignature("s")]
UInt = Annotated[int, DBusSignature("u")]


class Authority(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self.allowed: set[str] = set()
        self.delay = 0.0
        self.requests: list[dict[str, Any]] = []

    @dbus_method()
    async def CheckAuthorization(
        self, subject: Subject, action_id: Str, details: Details, flags: UInt, cancellation_id: Str
    ) -> AuthResult:
        kind, fields = subject
        self.requests.append({"kind": kind, "name": fields["name"].value, "action": action_id, "flags": flags})
        await asyncio.sleep(self.delay)
        return (action_id in self.allowed, False, {})


class MockPolkit:
    """Start with ``with MockPolkit(address) as polkit:``; set ``polkit.authority.allowed``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.authority = Authority()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._bus: MessageBus | None = None

    async def _start(self) -> None:
        self._bus = await MessageBus(bus_address=self.address).connect()
        self._bus.export("/org/freedesktop/PolicyKit1/Authority", self.authority)
        await self._bus.request_name("org.freedesktop.PolicyKit1", NameFlag.DO_NOT_QUEUE)

    async def _stop(self) -> None:
        assert self._bus is not None
        self._bus.disconnect()

    def __enter__(self) -> MockPolkit:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
