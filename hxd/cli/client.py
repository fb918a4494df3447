"""hxctl's side of the bus: one call, its reply, and errors turned into messages a person can act on."""

from __future__ import annotations

from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.errors import InvalidAddressError

from hxd.bus import names
from hxd.bus.connection import BUS_HELP, HxdBus, call_method, connect, describe
from hxd.core.errors import InvalidArgs

# D-Bus errors that mean "nobody owns org.hxinfra.hxd1" rather than "hxd said no".
_NOT_RUNNING = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
)


class Unreachable(Exception):
    """hxd cannot be reached: no bus, or nobody owns the name. The message says what to run."""


class CallFailed(Exception):
    """hxd answered with an error; ``short_name`` is the part after ``org.hxinfra.hxd1.Error.``."""

    def __init__(self, error_name: str, text: str) -> None:
        super().__init__(text)
        self.error_name = error_name
        self.short_name = error_name.removeprefix(names.ERROR_PREFIX)


async def open_bus(spec: str) -> HxdBus:
    """A connection to the bus hxd is on; InvalidArgs when ``--bus`` (or HXD_BUS) is not a D-Bus address, a usage
    error rather than a bus that is down; else Unreachable with what to do."""
    try:
        return await connect(spec)
    except InvalidAddressError as exc:
        if spec not in ("system", "session"):  # those two name their address in DBUS_*_BUS_ADDRESS, not on our line
            raise InvalidArgs(f"the bus {spec!r} is not a D-Bus address ({exc}); --bus takes {BUS_HELP}") from None
        reason = str(exc)
    except Exception as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    raise Unreachable(
        f"cannot connect to {describe(spec)}: {reason}; "
        "is dbus running? (use --bus to pick another bus, or --offline to run without hxd)"
    )


def checked(reply: Message | None, spec: str) -> list[Any]:
    """A reply's body with variants unwrapped; an error reply raised as Unreachable (nobody owns hxd's name) or
    CallFailed (hxd, or the bus, said no)."""
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        error_name = reply.error_name or ""
        text = reply.body[0] if reply.body else error_name
        if error_name in _NOT_RUNNING:
            raise Unreachable(
                f"hxd is not running on {describe(spec)} ({names.BUS_NAME} has no owner): "
                "start it with `systemctl start hxd`, or use --offline"
            )
        raise CallFailed(error_name, text)
    return [unwrap(value) for value in reply.body]


async def call(
    spec: str, member: str, signature: str = "", body: list[Any] | None = None, unix_fds: list[int] | None = None
) -> list[Any]:
    """Call ``member`` on hxd's Manager and return the reply body with variants unwrapped.

    A file descriptor argument (``h``) is written in ``body`` as its index in ``unix_fds``, as on the wire.
    """
    bus = await open_bus(spec)
    try:
        reply = await call_method(
            bus, names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, member, signature, body, unix_fds
        )
    finally:
        bus.disconnect()
    return checked(reply, spec)


def unwrap(value: Any) -> Any:
    """Variants all the way down to plain Python values, for printing and JSON."""
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {key: unwrap(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap(item) for item in value]
    return value
