"""Connecting to the bus, and the one hook dbus-fast lacks: knowing who called.

dbus-fast calls a method handler with its arguments only; polkit needs the caller's unique bus name. ``HxdBus``
wraps each handler so the message being handled is available in a ContextVar for the duration of the call (asyncio
copies the context into the task a coroutine handler runs in).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from dbus_fast import BusType, Message
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

current_message: ContextVar[Message] = ContextVar("current_message")

BUS_HELP = "system (default), session, or a D-Bus address such as unix:path=/run/hxd-test/bus; env HXD_BUS"


class HxdBus(MessageBus):
    """A MessageBus whose method handlers can see the message they are handling."""

    def _make_method_handler(
        self, interface: ServiceInterface, method: Any
    ) -> Callable[[Message, Callable[[Message], None]], None]:
        inner = super()._make_method_handler(interface, method)

        def handler(msg: Message, send_reply: Callable[[Message], None]) -> None:
            token = current_message.set(msg)
            try:
                inner(msg, send_reply)
            finally:
                current_message.reset(token)

        return handler


def bus_spec(cli_value: str | None) -> str:
    """The bus to use: the command line, else ``HXD_BUS``, else the system bus."""
    return cli_value or os.environ.get("HXD_BUS") or "system"


def describe(spec: str) -> str:
    """How to name the bus in an error message."""
    if spec == "system":
        return (
            "the system bus ("
            + os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")
            + ")"
        )
    if spec == "session":
        return "the session bus"
    return f"the bus at {spec}"


async def connect(spec: str) -> HxdBus:
    """Connect to ``system``, ``session`` or an explicit address, able to pass file descriptors (ValidateFile)."""
    if spec == "system":
        bus = HxdBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
    elif spec == "session":
        bus = HxdBus(bus_type=BusType.SESSION, negotiate_unix_fd=True)
    else:
        bus = HxdBus(bus_address=spec, negotiate_unix_fd=True)
    await bus.connect()
    return bus
