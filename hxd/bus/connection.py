"""Connecting to the bus, and what hxd changes in dbus-fast's connection (``HxdBus``):

- knowing who called: dbus-fast calls a method handler with its arguments only; polkit needs the caller's unique
  bus name. ``HxdBus`` wraps each handler so the message being handled is available in a ContextVar for the
  duration of the call (asyncio copies the context into the task a coroutine handler runs in);
- a full socket makes the writer wait until it is writable (``PatientWriter``), where dbus-fast 5.2.0 drops the
  connection.
"""

from __future__ import annotations

import array
import inspect
import os
import socket
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from typing import Any

from dbus_fast import BusType, Message, MessageFlag
from dbus_fast.aio import MessageBus
from dbus_fast.aio.message_bus import _future_set_exception, _future_set_result, _MessageWriter
from dbus_fast.service import ServiceInterface

current_message: ContextVar[Message] = ContextVar("current_message")

BUS_HELP = "system (default), session, or a D-Bus address such as unix:path=/run/hxd-test/bus; env HXD_BUS"


class PatientWriter(_MessageWriter):
    """dbus-fast's writer, except that a full socket means "wait until it is writable", never a lost connection.

    Replaces ``_MessageWriter.write_callback`` (dbus_fast/aio/message_bus.py, lines 87-132 in dbus-fast 5.2.0, which
    requirements.lock pins): its sends sit in an ``except Exception`` that ends the connection (``bus._finalize``),
    so EAGAIN (BlockingIOError) on the non-blocking socket counts as a broken socket. The socket fills whenever the
    bus daemon reads more slowly than hxd answers (about 8,000 Status() calls in a second do it), and the writer
    then writes to it: ``schedule_write`` sends at once when its queue is empty, without looking at ``self.buf`` (a
    message half written, waiting for the socket), and the loop below goes on after a message that filled the
    buffer. This copy differs only in its ``except BlockingIOError``: nothing was sent, so, as after a partial
    write, the rest of the message (and its descriptors) waits in ``self.buf`` for the writer callback, which the
    loop has registered already or ``schedule_write`` registers next. docs/upstream/dbus-fast-eagain.md has the
    change as a patch for upstream and the same flaw in dbus-next (its issue 153); tests/test_bus_writer.py fails
    on dbus-fast's own writer.
    """

    def write_callback(self, remove_writer: bool = True) -> None:
        sock, fd = self.sock, self.fd
        assert sock is not None and fd is not None  # connected before the writer is built
        try:
            while True:
                if self.buf is None:
                    if not self.messages:
                        if remove_writer:
                            self.loop.remove_writer(fd)
                        return
                    buf, unix_fds, fut = self.messages.popleft()
                    self.unix_fds = unix_fds
                    self.buf = memoryview(buf)
                    self.offset = 0
                    self.fut = fut
                if self.unix_fds and self.negotiate_unix_fd:
                    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", self.unix_fds))]
                    self.offset += sock.sendmsg([self.buf[self.offset :]], ancdata)
                    self.unix_fds = None
                else:
                    self.offset += sock.send(self.buf[self.offset :])
                if self.offset < len(self.buf):
                    return  # the rest when the socket is writable
                self.buf = None
                _future_set_result(self.fut, None)  # type: ignore[arg-type]  # dbus-fast's helpers take None too
        except BlockingIOError:
            return  # the fix: the socket is full; the rest when it is writable
        except Exception as e:
            if self.bus._user_disconnect:
                _future_set_result(self.fut, None)  # type: ignore[arg-type]
            else:
                _future_set_exception(self.fut, e)  # type: ignore[arg-type]
            self.bus._finalize(e)


class HxdBus(MessageBus):
    """A MessageBus whose method handlers can see the message they are handling.

    Synchronous methods (the read-only hot path, Status) get a handler of hxd's own: dbus-fast's searches every
    reply for file descriptors to attach whenever descriptor passing is negotiated (hxd negotiates it to receive
    ValidateFile's descriptor), which costs more than building Status's reply; hxd's replies never carry one.
    """

    async def connect(self) -> HxdBus:
        """Connect, then put PatientWriter in place of the writer dbus-fast builds inside connect(): nothing has
        gone through that one yet (Hello is sent on the socket directly), but it may have registered its callback."""
        await super().connect()
        assert self._writer is not None and not self._writer.messages and self._writer.buf is None
        assert self._fd is not None
        self._loop.remove_writer(self._fd)
        self._writer = PatientWriter(self)
        return self

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
