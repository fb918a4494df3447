"""Connecting to the bus, and what hxd adds to dbus-fast's connection (``HxdBus``), each in one place:

- a method handler can see the message it handles (``current_message``): polkit needs the caller's unique name;
- per-caller fairness: a caller (unique bus name) may have ``MAX_PENDING_PER_CALLER`` calls pending, and past
  ``MAX_PENDING`` in all only a caller's first; a call over either bound is answered at once with
  ``LimitsExceeded``, so a flooding client neither starves the others nor grows hxd's queue of replies without bound;
- descriptors: every file descriptor received with a message is closed as soon as the message is handled, except
  those a method takes as arguments (ValidateFile's), which are closed when its call ends, whatever the outcome
  (hxd asks for none in replies or signals, so theirs are closed too);
- a full socket makes the writer wait until it is writable (``PatientWriter``), where dbus-fast 5.2.0 drops the
  connection.
"""

from __future__ import annotations

import array
import asyncio
import inspect
import os
import socket
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from typing import Any

import structlog
from dbus_fast import BusType, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.aio.message_bus import _future_set_exception, _future_set_result, _MessageWriter
from dbus_fast.send_reply import SendReply
from dbus_fast.service import ServiceInterface

from hxd.bus import names
from hxd.bus.replies import PatchedBody
from hxd.core.errors import LimitsExceeded

log = structlog.get_logger("hxd.bus")

current_message: ContextVar[Message] = ContextVar("current_message")

BUS_HELP = "system (default), session, or a D-Bus address such as unix:path=/run/hxd-test/bus; env HXD_BUS"

# A call is pending from the moment hxd reads it until its reply has been written to the bus socket (a call that
# wants no reply: until its method returns). hxctl has one call pending at a time; 32 leave room for a client that
# pipelines. Past 1024 pending in all, only a caller's first pending call is taken: that bounds hxd's queue of
# replies and running methods (1024 plus one per connection, which the bus limits) while a caller that waits for
# each reply, as hxctl does, is never refused.
MAX_PENDING_PER_CALLER = 32
MAX_PENDING = 1024
# At most one log line per this many seconds about refused calls, with their count: a flood must not flood the
# journal too.
_REFUSAL_LOG_INTERVAL_SEC = 10.0


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
    """dbus-fast's MessageBus with hxd's additions (this module's docstring lists them).

    Every message goes through ``_process_message``: a call is admitted (it holds one of its caller's pending
    slots) or refused, and the descriptors of any message are closed there once it is handled. Methods get
    handlers of hxd's own: a synchronous one (the read-only hot path, Status) is answered on the spot, without
    dbus-fast's search of each reply for descriptors to attach (hxd's replies never carry one); a coroutine
    method runs as a task that owns the descriptors it takes as arguments until it ends.
    """

    def __init__(
        self, bus_address: str | None = None, bus_type: BusType = BusType.SESSION, negotiate_unix_fd: bool = False
    ) -> None:
        super().__init__(bus_address, bus_type, negotiate_unix_fd=negotiate_unix_fd)
        self._pending: dict[str, int] = {}  # caller -> calls pending
        self._pending_total = 0
        # (caller, serial) of admitted calls not yet answered; the bus refuses a call that reuses the serial of one
        # still pending (AccessDenied), so each reply gives back exactly one slot.
        self._awaiting_reply: set[tuple[str, int]] = set()
        self._calls: set[asyncio.Task[Any]] = set()  # held: the loop keeps only weak references to tasks
        # The descriptors taken by the coroutine method that the message being handled started; None if none started.
        self._taken: frozenset[int] | None = None
        self._refused = 0
        self._refusal_logged = -_REFUSAL_LOG_INTERVAL_SEC

    async def connect(self) -> HxdBus:
        """Connect, then put PatientWriter in place of the writer dbus-fast builds inside connect(): nothing has
        gone through that one yet (Hello is sent on the socket directly), but it may have registered its callback."""
        await super().connect()
        assert self._writer is not None and not self._writer.messages and self._writer.buf is None
        assert self._fd is not None
        self._loop.remove_writer(self._fd)
        self._writer = PatientWriter(self)
        return self

    def _process_message(self, msg: Message) -> None:
        """Every message hxd reads comes here (from dbus-fast's reader)."""
        self._taken = None
        try:
            if msg.message_type is not MessageType.METHOD_CALL:
                super()._process_message(msg)
            elif self._admit(msg):
                self._handle_call(msg)
        finally:
            for fd in msg.unix_fds:
                if self._taken is None or fd not in self._taken:
                    os.close(fd)

    def _admit(self, msg: Message) -> bool:
        """Take one of the caller's pending slots for ``msg``, or answer it with an error at once."""
        caller = msg.sender or ""
        pending = self._pending.get(caller, 0)
        if pending >= MAX_PENDING_PER_CALLER:
            error = LimitsExceeded(
                f"{caller} has {pending} calls to hxd pending, the most one caller may have; wait for their replies"
            )
        elif pending and self._pending_total >= MAX_PENDING:
            error = LimitsExceeded(
                f"hxd has {self._pending_total} calls pending from all callers and takes no second one from "
                f"{caller} now; wait for the reply to its first"
            )
        else:
            self._pending[caller] = pending + 1
            self._pending_total += 1
            return True
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            super().send(Message.new_error(msg, names.error_name(error), str(error)))
        self._log_refusal(caller, str(error))
        return False

    def _log_refusal(self, caller: str, reason: str) -> None:
        self._refused += 1
        now = self._loop.time()
        if now - self._refusal_logged >= _REFUSAL_LOG_INTERVAL_SEC:
            log.warning("calls refused before they ran", refused=self._refused, last_caller=caller, reason=reason)
            self._refused = 0
            self._refusal_logged = now

    def _handle_call(self, msg: Message) -> None:
        """dbus-fast finds the handler and calls it; the slot is given back when the reply is written (``send``)
        or, for a call that wants none, when its method returns."""
        caller = msg.sender or ""
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            super()._process_message(msg)
            if self._taken is None:  # no coroutine started: the method has returned
                self._release(caller)
            return
        self._awaiting_reply.add((caller, msg.serial))
        super()._process_message(msg)

    def _release(self, caller: str, *_: object) -> None:
        pending = self._pending[caller] - 1
        if pending:
            self._pending[caller] = pending
        else:
            del self._pending[caller]
        self._pending_total -= 1

    def send(self, msg: Message) -> asyncio.Future[None]:  # type: ignore[override]  # as dbus-fast's aio send
        future: asyncio.Future[None] = super().send(msg)
        answers = (msg.destination or "", msg.reply_serial)
        if msg.reply_serial and answers in self._awaiting_reply:
            self._awaiting_reply.remove(answers)
            if future.done():  # written at once; a callback would run only after the reader has read on
                self._release(answers[0])
            else:
                future.add_done_callback(partial(self._release, answers[0]))
        return future

    def _make_method_handler(
        self, interface: ServiceInterface, method: Any
    ) -> Callable[[Message, Callable[[Message], None]], None]:
        if inspect.iscoroutinefunction(method.fn):
            return partial(self._start_call, interface, method)
        return partial(_reply_without_descriptors, interface, method)

    def _start_call(
        self, interface: ServiceInterface, method: Any, msg: Message, send_reply: Callable[[Message], None]
    ) -> None:
        """Run a coroutine method as a task that sees ``msg`` as current_message (a task copies the context it is
        created in) and owns the descriptors passed as its (top-level) ``h`` arguments until it ends."""
        args = ServiceInterface._msg_body_to_args(msg) if msg.unix_fds else msg.body
        types = method.in_signature_tree.types
        taken = frozenset(
            arg for arg, kind in zip(args, types, strict=True) if kind.token == "h" and arg in msg.unix_fds
        )
        token = current_message.set(msg)
        try:
            task = asyncio.ensure_future(method.fn(interface, *args))
        finally:
            current_message.reset(token)
        self._taken = taken
        self._calls.add(task)
        task.add_done_callback(partial(self._call_ended, method, msg, send_reply, taken))

    def _call_ended(
        self,
        method: Any,
        msg: Message,
        send_reply: Callable[[Message], None],
        taken: frozenset[int],
        task: asyncio.Task[Any],
    ) -> None:
        self._calls.discard(task)
        for fd in taken:
            os.close(fd)
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it: hxd's methods log their own failures
            self._release(msg.sender or "")
            return
        assert isinstance(send_reply, SendReply)  # dbus-fast's for a call that wants a reply
        with send_reply:  # an exception becomes an error reply
            body, _ = ServiceInterface._fn_result_to_body(task.result(), method.out_signature_tree, replace_fds=False)
            send_reply(Message.new_method_return(msg, method.out_signature, body))


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
    if isinstance(result, PatchedBody):
        send_reply(result.reply_to(msg))
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
