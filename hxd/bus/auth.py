"""Authorizing callers through polkit, as systemd's daemons, UDisks2 and firewalld do.

The caller is identified as a ``system-bus-name`` subject (its unique name), which polkit resolves to credentials
itself; PID-based subjects are racy. When polkit is not on the bus (containers, minimal installs), only uid 0 is
allowed, as firewalld and tuned do. Interactive authentication is requested only when the caller set the
ALLOW_INTERACTIVE_AUTHORIZATION flag on its message.
"""

from __future__ import annotations

import asyncio

import structlog
from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from hxd.bus import names
from hxd.bus.connection import call_method
from hxd.core.errors import NotAuthorized

log = structlog.get_logger("hxd.auth")

_NO_POLKIT = ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner")
_ALLOW_USER_INTERACTION = 1
# polkit may show a password prompt when interactive; give the human time, but not forever.
_TIMEOUT_SEC = {False: 25.0, True: 120.0}


class Authority:
    """Checks one caller against one polkit action."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus

    async def check(self, caller: Message, action: str) -> None:
        """Return if the sender of ``caller`` may do ``action``; raise NotAuthorized otherwise."""
        sender = caller.sender
        if not sender:
            raise NotAuthorized(f"{action}: the call carries no sender; refusing")
        interactive = bool(caller.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
        subject = ["system-bus-name", {"name": Variant("s", sender)}]
        flags = _ALLOW_USER_INTERACTION if interactive else 0
        try:
            async with asyncio.timeout(_TIMEOUT_SEC[interactive]):
                reply = await call_method(
                    self._bus,
                    names.POLKIT_NAME,
                    names.POLKIT_PATH,
                    names.POLKIT_INTERFACE,
                    "CheckAuthorization",
                    "(sa{sv})sa{ss}us",
                    [subject, action, {}, flags, ""],
                )
        except TimeoutError:
            raise NotAuthorized(f"{action}: polkit did not answer in time; try again") from None
        if reply.message_type == MessageType.ERROR:
            if reply.error_name in _NO_POLKIT:
                await self._require_root(sender, action)
                return
            log.warning("polkit check failed", action=action, error=reply.error_name)
            raise NotAuthorized(f"{action}: polkit could not check the caller ({reply.error_name})")
        authorized, challenge, _details = reply.body[0]
        if not authorized:
            hint = "authentication is required; retry interactively" if challenge else "ask an administrator"
            raise NotAuthorized(f"{action}: not authorized ({hint})")

    async def _require_root(self, sender: str, action: str) -> None:
        reply = await call_method(
            self._bus, names.DBUS_NAME, names.DBUS_PATH, names.DBUS_INTERFACE, "GetConnectionUnixUser", "s", [sender]
        )
        if reply.message_type == MessageType.ERROR or reply.body[0] != 0:
            raise NotAuthorized(f"{action}: polkit is not running and only root may do this")
