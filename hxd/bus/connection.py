"""Connecting to the bus, and the one hook dbus-fast lacks: knowing who called.

dbus-fast calls a method handler with its arguments only; polkit needs the caller's unique bus name. ``HxdBus``
wraps each handler so the message being handled is available in a ContextVar for the duration of the call (asyncio
copies the context into the task a coroutine handler runs in).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from typing import Any

from dbus_fast import BusType, Message, MessageFlag
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

current_message: ContextVar[Message] = ContextVar("current_message")

BUS_HELP = "system (default), session, or a D-Bus address such as unix:path=/run/hxd-test/bus; env HXD_BUS"


class HxdBus(MessageBus):
    """A MessageBus whose method handlers can see the message they are handling.

    Synchronous methods (the read-only hot path, Status) get a handler of hxd's own: dbus-fast's searches every
    reply for file descriptors to attach whenever descriptor passing is negotiated (hxd negotiates it to receive
    ValidateFile's descriptor), which costs more than building Status's reply; hxd's replies never carry one.
    """

    def _make_method_handler(
        self, interface: ServiceInterface, method: Any
    ) -> Callable[[Message, Callable[[Message], None]], None]:
        if not inspect.iscoroutinefunction(method.fn):
            return partial(_reply_without_descriptors, interface, method)
        inner = super()._make_method_handler(interface, method)

        def handler(msg: Message, send_reply: Callable[[Message], None]) -> None:
            token = current_message.set(msg)
            try:
                inner(msg, send_reply)
            finally:
                current_message.reset(token)

        return handler


def _reply_without_descriptors(
    interface: ServiceInterface, method: Any, msg: Message, send_reply: Callable[[Message], None]
) -> None:
    token = current_message.set(msg)
    try:
        result = method.fn(interface, *msg.body)
    finally:
        current_message.reset(token)
    if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
        return
    body, _ = ServiceInterface._fn_result_to_body(result, method.out_signature_tree, replace_fds=False)
    send_reply(Message.new_method_return(msg, method.out_signature, body))


async def call_method(
    bus: MessageBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    unix_fds: list[int] | None = None,
) -> Message:
    """Call a method and return its reply: a method return or an error, which the caller judges."""
    reply = await bus.call(
        Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
            unix_fds=unix_fds or [],
        )
    )
    assert reply is not None  # None only for calls sent with NO_REPLY_EXPECTED
    return reply


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
