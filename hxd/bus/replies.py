"""Replies marshalled once: Status(), the hot path, answers with bytes built when the facts change, not per call.

Marshalling Status()'s ``a{sv}`` reply (about 1.5 KB of nested variants) took dbus-fast 5.2.0 about 20 us a call,
as long as the rest of hxd's handling of the call together; it made Status() 1.27-1.31x as slow as Peer.Ping
(bench/foundation.py, docs/benchmarks.md). A ``MarshalledBody`` holds the body's wire bytes; the one value that
changes per call (uptime) is a double in the body's last 8 bytes, patched in place. The header is still marshalled
per call by dbus-fast (serial, reply serial and destination differ): the reply is a Message whose body is an empty
``a{sv}``, and its marshalled body is swapped for the cached one.

Why this is sound: a D-Bus body starts 8-aligned (the header is padded to 8, D-Bus specification, "Message
Format"), so marshalled body bytes do not depend on the header before them; the header's body-length field is set
from the cached bytes; the signature field is the method's own. tests/test_introspection.py and every Status() read
through busctl decode these bytes with libsystemd, an independent unmarshaller.
"""

from __future__ import annotations

import struct

from dbus_fast import Message, MessageType, Variant
from dbus_fast._private.marshaller import Marshaller

_BODY_LENGTH = struct.Struct("<I")  # at offset 4 of a little-endian header (dbus-fast marshals little-endian)
_DOUBLE = struct.Struct("<d")


class MarshalledBody:
    """The wire bytes of an ``a{sv}`` reply whose last entry is a double (``last_key``), patched per call."""

    def __init__(self, values: dict[str, Variant], last_key: str) -> None:
        last = values[last_key]
        if last.signature != "d":
            raise ValueError(f"{last_key} must be a double to be patched in place, not {last.signature!r}")
        ordered = {key: value for key, value in values.items() if key != last_key}
        ordered[last_key] = last
        self._bytes = bytes(Marshaller("a{sv}", [ordered]).marshall())
        # The variant's double is 8-aligned and ends the body; check that, rather than trust it.
        if self._bytes[-8:] != _DOUBLE.pack(last.value):
            raise AssertionError("the marshalled body does not end with the double to patch")

    def with_last(self, value: float) -> PatchedBody:
        """What a method returns: the body with ``value`` as its last double; the connection sends it as is."""
        body = bytearray(self._bytes)
        _DOUBLE.pack_into(body, len(body) - 8, value)
        return PatchedBody(body)


class PatchedBody:
    """A method's result that is already wire bytes (see ``hxd.bus.connection``, which sends it unchanged)."""

    __slots__ = ("body",)

    def __init__(self, body: bytearray) -> None:
        self.body = body

    def reply_to(self, call: Message) -> Message:
        return _MarshalledReturn(call, self.body)


class _MarshalledReturn(Message):
    """A method return to ``call`` carrying ``body`` as already-marshalled ``a{sv}`` bytes."""

    def __init__(self, call: Message, body: bytearray) -> None:
        super().__init__(
            message_type=MessageType.METHOD_RETURN,
            reply_serial=call.serial,
            destination=call.sender,
            signature="a{sv}",
            body=[{}],
        )
        self.marshalled_body = body

    def _marshall(self, negotiate_unix_fd: bool) -> bytearray:
        """dbus-fast's header (with the empty body it was built with), then the cached body."""
        message = super()._marshall(negotiate_unix_fd)
        (fields_length,) = _BODY_LENGTH.unpack_from(message, 12)
        header_length = 16 + (fields_length + 7) // 8 * 8
        message[header_length:] = self.marshalled_body
        _BODY_LENGTH.pack_into(message, 4, len(self.marshalled_body))
        return message
