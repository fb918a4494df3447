"""Every failure reaches a caller as org.hxinfra.hxd1.Error.<Name> with one line, never a traceback."""

from __future__ import annotations

import asyncio

from dbus_fast import NameFlag
from dbus_fast.annotations import DBusStr

from hxd.bus.auth import Authority
from hxd.bus.connection import connect
from hxd.bus.methods import HxdInterface, method
from hxd.core.errors import Busy, NotFound
from hxsandbox.world import PrivateBus


class Faulty(HxdInterface):
    """Methods that fail in each way a real method can."""

    default_action = "org.hxinfra.hxd1.test"

    def __init__(self, authority: Authority) -> None:
        super().__init__("org.hxinfra.hxd1.Test", authority)

    @method(public=True)
    def Crash(self) -> None:
        raise RuntimeError("secret detail from /etc/shadow\nsecond line")

    @method(public=True)
    async def CrashLater(self) -> None:
        await asyncio.sleep(0)
        raise KeyError("secret key")

    @method(public=True)
    def Missing(self, model: DBusStr) -> None:
        raise NotFound(f"model {model}: no manifest in the store;\n  pull it first")

    @method(public=True)
    async def Occupied(self) -> None:
        raise Busy("a migration is running (job 3)")


async def call(address: str, member: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "dbus-send",
        f"--bus={address}",
        "--print-reply",
        "--dest=test.hxd.Faulty",
        "/test",
        f"org.hxinfra.hxd1.Test.{member}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_errors_are_typed_and_carry_no_traceback(bus: PrivateBus) -> None:
    server = await connect(bus.address)
    server.export("/test", Faulty(Authority(server)))
    await server.request_name("test.hxd.Faulty", NameFlag.DO_NOT_QUEUE)
    try:
        for member in ("Crash", "CrashLater"):
            code, stderr = await call(bus.address, member)
            assert code != 0
            assert stderr.startswith("Error org.hxinfra.hxd1.Error.Internal: "), stderr
            assert f"{member} failed inside hxd" in stderr
            assert "secret" not in stderr and "Traceback" not in stderr and ".py" not in stderr
            assert stderr.count("\n") == 1

        code, stderr = await call(bus.address, "Missing", "string:llama3")
        assert (
            stderr == "Error org.hxinfra.hxd1.Error.NotFound: model llama3: no manifest in the store; pull it first\n"
        )

        code, stderr = await call(bus.address, "Occupied")
        assert stderr == "Error org.hxinfra.hxd1.Error.Busy: a migration is running (job 3)\n"
    finally:
        server.disconnect()
