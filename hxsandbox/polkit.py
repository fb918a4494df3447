"""A mock polkit authority on the private bus, as udisks' and python-dbusmock's tests use.

It answers ``CheckAuthorization`` from a list of allowed actions, records every request (subject, action, flags),
and can delay its answer so tests can hold a call in flight. It runs in a thread (hxsandbox.world.BusService) so a test
can drive hxd from the outside with blocking tools (busctl, signals).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from dbus_fast import Variant
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method

from hxd.bus import names
from hxsandbox.world import BusService

Subject = Annotated[tuple[str, dict[str, Variant]], DBusSignature("(sa{sv})")]
Details = Annotated[dict[str, str], DBusSignature("a{ss}")]
AuthResult = Annotated[tuple[bool, bool, dict[str, str]], DBusSignature("(bba{ss})")]
Str = Annotated[str, DBusSignature("s")]
UInt = Annotated[int, DBusSignature("u")]

# Every polkit action hxd checks (names.ACTION_*): what the demo's stand-in allows, what the shipped policy must define.
HXD_ACTIONS = frozenset(value for key, value in vars(names).items() if key.startswith("ACTION_"))


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


class MockPolkit(BusService):
    """Start with ``with MockPolkit(address) as polkit:``; set ``polkit.authority.allowed``."""

    def __init__(self, address: str) -> None:
        self.authority = Authority()
        super().__init__(
            address, "org.freedesktop.PolicyKit1", {"/org/freedesktop/PolicyKit1/Authority": self.authority}
        )
