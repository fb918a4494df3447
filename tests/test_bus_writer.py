"""hxd's bus writer waits when the socket is full, where dbus-fast 5.2.0's drops the connection (hxd exited 1 under
about 8,000 Status() calls a second).

The writer is driven directly, on one end of a socket pair with a small send buffer whose other end reads nothing
until every message is queued, so the socket is full long before the last one; then the peer reads, and every
byte and every descriptor must arrive in order, with no disconnect. The same test on dbus-fast's own writer is
expected to fail (strict xfail): when it passes, upstream has fixed the flaw and PatientWriter can go.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket

import pytest
from dbus_fast import Message
from dbus_fast.aio.message_bus import _MessageWriter

from hxd.bus.connection import PatientWriter

MESSAGES = 200
# Every this many messages, one carries a descriptor: one not sent on EAGAIN must be sent with its retry.
DESCRIPTOR_EVERY = 10


class WriterBus:
    """What a writer reads from its MessageBus, and a record of disconnects instead of one."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._negotiate_unix_fd = True
        self._user_disconnect = False
        self.unique_name = ":1.1"
        self.lost: list[Exception | None] = []

    def _finalize(self, err: Exception | None) -> None:
        self.lost.append(err)


def message(serial: int, fd: int) -> Message:
    return Message(
        destination=":1.2",
        path="/org/hxinfra/hxd1",
        interface="org.hxinfra.hxd1.Test",
        member="Fill",
        signature="s",
        body=["x" * 1000],
        serial=serial,
        unix_fds=[fd] if serial % DESCRIPTOR_EVERY == 0 else [],
    )


async def read_all(peer: socket.socket, size: int) -> tuple[bytes, list[int]]:
    """Everything the writer sends, ``size`` bytes, and the descriptors that came with them."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    fds: list[int] = []
    readable = asyncio.Event()
    loop.add_reader(peer.fileno(), readable.set)
    try:
        async with asyncio.timeout(10):
            while len(data) < size:
                await readable.wait()
                readable.clear()
                try:
                    chunk, ancdata, _, _ = peer.recvmsg(65536, socket.CMSG_SPACE(4 * 16))
                except BlockingIOError:
                    continue
                data += chunk
                for _, _, payload in ancdata:
                    fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    finally:
        loop.remove_reader(peer.fileno())
    return bytes(data), fds


@pytest.mark.parametrize(
    "writer_class",
    [
        PatientWriter,
        pytest.param(
            _MessageWriter,
            marks=pytest.mark.xfail(reason="dbus-fast 5.2.0 takes EAGAIN for a lost connection", strict=True),
        ),
    ],
)
async def test_a_full_socket_makes_the_writer_wait(writer_class: type[_MessageWriter]) -> None:
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    devnull = os.open("/dev/null", os.O_RDONLY)
    loop = asyncio.get_running_loop()
    sent: list[asyncio.Future[None]] = []
    try:
        ours.setblocking(False)
        peer.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        bus = WriterBus(ours, loop)
        writer = writer_class(bus)  # type: ignore[arg-type]
        messages = [message(serial, devnull) for serial in range(1, MESSAGES + 1)]
        expected = b"".join(bytes(m._marshall(True)) for m in messages)
        sent += [loop.create_future() for _ in messages]
        for each, future in zip(messages, sent, strict=True):
            writer.schedule_write(each, future)
        assert bus.lost == [], "the writer dropped the connection on a full socket"
        assert not all(future.done() for future in sent), "the socket never filled: the test proves nothing"

        data, fds = await read_all(peer, len(expected))
        async with asyncio.timeout(10):
            await asyncio.gather(*sent)
        assert bus.lost == []
        assert data == expected
        assert len(fds) == MESSAGES // DESCRIPTOR_EVERY
        for fd in fds:
            os.close(fd)
    finally:
        for future in sent:
            if future.done():
                future.exception()  # retrieved: dbus-fast's writer fails the one it was writing
        loop.remove_writer(ours.fileno())
        os.close(devnull)
        ours.close()
        peer.close()
