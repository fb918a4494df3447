"""A pre-marshalled reply is byte for byte the message dbus-fast would have marshalled from the values."""

import pytest
from dbus_fast import Message, Variant

from hxd.bus.replies import MarshalledBody

VALUES = {
    "version": Variant("s", "0.1.0"),
    "uptime_sec": Variant("d", 0.0),
    "features": Variant("a{ss}", {"validate": "ok", "migrate": "unchecked"}),
    "last_audit": Variant("a{sv}", {"problems": Variant("t", 3)}),
}


def test_the_reply_is_the_message_dbus_fast_would_marshal() -> None:
    call = Message(destination="org.hxinfra.hxd1", path="/org/hxinfra/hxd1", member="Status", serial=7)
    call.sender = ":1.42"
    marshalled = MarshalledBody(VALUES, last_key="uptime_sec")
    for uptime in (0.0, 12.5, 86400.125):
        ours = marshalled.with_last(uptime).reply_to(call)
        ours.serial = 9
        # The patched value ends the body, so it goes last in the reference too.
        expected = {k: v for k, v in VALUES.items() if k != "uptime_sec"} | {"uptime_sec": Variant("d", uptime)}
        reference = Message.new_method_return(call, "a{sv}", [expected])
        reference.serial = 9
        assert bytes(ours._marshall(False)) == bytes(reference._marshall(False))


def test_a_last_value_that_is_not_a_double_is_refused() -> None:
    with pytest.raises(ValueError, match="uptime_sec must be a double"):
        MarshalledBody(dict(VALUES, uptime_sec=Variant("s", "1")), last_key="uptime_sec")
