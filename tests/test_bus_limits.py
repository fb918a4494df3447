"""HxdBus's bounds on pending calls and its rule for received descriptors, on a service of methods that hold their
call until the test lets them go (so what is pending is exact), in this process on the session bus.

tests/test_bus_abuse.py checks the same against hxd itself, as ``nobody`` on a system-like bus.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from dbus_fast import Message, MessageFlag, MessageType, NameFlag
from dbus_fast.annotations import DBusUnixFd

from hxd.bus import connection
from hxd.bus.auth import Authority
from hxd.bus.connection import MAX_PENDING_PER_CALLER, HxdBus, connect
from hxd.bus.methods import HxdInterface, method
from hxsandbox.world import PrivateBus

NAME = "test.hxd.Limits"
INTERFACE = "org.hxinfra.hxd1.Test"
LIMITS_EXCEEDED = "org.hxinfra.hxd1.Error.LimitsExceeded"


class Holding(HxdInterface):
    """Methods whose calls stay pending until ``release`` is set."""

    default_action = "org.hxinfra.hxd1.test"

    def __init__(self, authority: Authority) -> None:
        super().__init__(INTERFACE, authority)
        self.release = asyncio.Event()

    @method(public=True)
    async def Hold(self) -> None:
        await self.release.wait()

    @method(public=True)
    async def HoldFile(self, file: DBusUnixFd) -> None:
        await self.release.wait()
        os.fstat(file)  # still open: an error reply (Internal) otherwise


@pytest.fixture
async def service(bus: PrivateBus) -> AsyncIterator[Holding]:
    server = await connect(bus.address)
    holding = Holding(Authority(server))
    server.export("/test", holding)
    await server.request_name(NAME, NameFlag.DO_NOT_QUEUE)
    yield holding
    holding.release.set()
    server.disconnect()


def call(member: str, signature: str = "", body: list[object] | None = None, fds: list[int] | None = None) -> Message:
    return Message(
        destination=NAME,
        path="/test",
        interface=INTERFACE,
        member=member,
        signature=signature,
        body=body or [],
        unix_fds=fds or [],
    )


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


def held(client: HxdBus, number: int) -> list[asyncio.Task[Message | None]]:
    return [asyncio.ensure_future(client.call(call("Hold"))) for _ in range(number)]


async def test_a_caller_over_its_bound_is_answered_at_once_and_others_still_get_through(
    bus: PrivateBus, service: Holding
) -> None:
    flooder, other = await connect(bus.address), await connect(bus.address)
    try:
        calls = held(flooder, MAX_PENDING_PER_CALLER + 8)
        await until(lambda: service.inflight == MAX_PENDING_PER_CALLER and sum(c.done() for c in calls) == 8)
        refused = [c.result() for c in calls if c.done()]
        assert {reply.error_name for reply in refused if reply} == {LIMITS_EXCEEDED}
        assert refused[0] and refused[0].body == [
            f"{flooder.unique_name} has {MAX_PENDING_PER_CALLER} calls to hxd pending, the most one caller may "
            "have; wait for their replies"
        ]

        others = held(other, 1)
        await until(lambda: service.inflight == MAX_PENDING_PER_CALLER + 1)  # taken, not refused

        service.release.set()
        async with asyncio.timeout(10):
            replies = await asyncio.gather(*calls, *others)
        returns = [reply for reply in replies if reply and reply.message_type == MessageType.METHOD_RETURN]
        assert len(returns) == MAX_PENDING_PER_CALLER + 1
        again = await flooder.call(call("Hold"))
        assert again and again.message_type == MessageType.METHOD_RETURN  # every slot was given back
    finally:
        flooder.disconnect()
        other.disconnect()


async def test_a_call_that_wants_no_reply_holds_its_slot_until_its_method_returns(
    bus: PrivateBus, service: Holding
) -> None:
    client = await connect(bus.address)
    try:
        for _ in range(MAX_PENDING_PER_CALLER):
            silent = call("Hold")
            silent.flags = MessageFlag.NO_REPLY_EXPECTED
            await client.send(silent)
        await until(lambda: service.inflight == MAX_PENDING_PER_CALLER)
        refused = await client.call(call("Hold"))
        assert refused and refused.error_name == LIMITS_EXCEEDED
        service.release.set()
        await until(lambda: service.inflight == 0)
        answered = await client.call(call("Hold"))
        assert answered and answered.message_type == MessageType.METHOD_RETURN
    finally:
        client.disconnect()


async def test_past_the_total_only_a_callers_first_call_is_taken(
    bus: PrivateBus, service: Holding, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "MAX_PENDING", MAX_PENDING_PER_CALLER + 4)
    first, second, third = [await connect(bus.address) for _ in range(3)]
    try:
        calls = held(first, MAX_PENDING_PER_CALLER) + held(second, 4)
        await until(lambda: service.inflight == MAX_PENDING_PER_CALLER + 4)
        [over] = held(second, 1)
        refused = await over
        assert refused and refused.error_name == LIMITS_EXCEEDED
        assert refused.body == [
            f"hxd has {MAX_PENDING_PER_CALLER + 4} calls pending from all callers and takes no second one from "
            f"{second.unique_name} now; wait for the reply to its first"
        ]
        newcomer = held(third, 1)  # a caller with nothing pending is always taken
        await until(lambda: service.inflight == MAX_PENDING_PER_CALLER + 5)
        service.release.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*calls, *newcomer)
    finally:
        for client in (first, second, third):
            client.disconnect()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_received_descriptors_are_closed_at_once_except_those_a_method_takes(
    bus: PrivateBus, service: Holding
) -> None:
    client = await connect(bus.address)
    attached = [os.open("/dev/null", os.O_RDONLY) for _ in range(16)]
    try:
        idle = open_descriptors()
        # A call that finds no method, and one whose method takes no descriptor: all 16 closed at once, while
        # HoldFile keeps the one it takes (the fourth) until its call ends.
        unknown = await client.call(call("NoSuchMember", fds=attached))
        assert unknown is not None and unknown.error_name == "org.freedesktop.DBus.Error.UnknownMethod"
        calls = [
            asyncio.ensure_future(client.call(call("Hold", fds=attached))),
            asyncio.ensure_future(client.call(call("HoldFile", "h", [3], attached))),
        ]
        await until(lambda: service.inflight == 2)
        assert open_descriptors() == idle + 1

        service.release.set()
        async with asyncio.timeout(10):
            replies = await asyncio.gather(*calls)
        assert [reply.message_type for reply in replies if reply] == [MessageType.METHOD_RETURN] * 2
        assert open_descriptors() == idle
    finally:
        for fd in attached:
            os.close(fd)
        client.disconnect()


def test_hxd8_states_the_bounds() -> None:
    """hxd(8) documents the bounds: changing one changes the page."""
    page = (Path(__file__).resolve().parents[1] / "packaging/man/hxd.8").read_text()
    limits = page.split(".SS Limits\n", 1)[1].split(".SS ", 1)[0]
    assert f"\n.B {MAX_PENDING_PER_CALLER}\ncalls pending" in limits
    assert f"\n.B {connection.MAX_PENDING}\npending from all callers" in limits
