"""Many concurrent calls of one Manager method, as an unprivileged client makes them: run as a script (under
setpriv, as ``nobody``) so the bus sees another account; busctl would need a process per call.

``python tests/call_burst.py ADDRESS MEMBER CONNECTIONS CALLS GAP``: CONNECTIONS connections (a system bus allows
256 per user), CALLS calls sent at once on each (and 128 pending replies per connection), one connection's calls
GAP seconds after the previous one's. Prints ``sent`` once every call is written, then one JSON object: the replies
counted by error name (``ok`` for a method return), and the distinct messages of the errors.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from hxd.bus import names


async def burst(address: str, member: str, connections: int, calls: int, gap: float) -> dict[str, object]:
    buses = [await MessageBus(bus_address=address).connect() for _ in range(connections)]
    message = {
        "destination": names.BUS_NAME,
        "path": names.MANAGER_PATH,
        "interface": names.MANAGER_INTERFACE,
        "member": member,
    }
    pending = []
    for bus in buses:
        pending += [asyncio.ensure_future(bus.call(Message(**message))) for _ in range(calls)]
        await asyncio.sleep(gap)  # the calls are written on the first turn of the loop
    print("sent", flush=True)
    replies = await asyncio.gather(*pending)
    for bus in buses:
        bus.disconnect()
    kinds = Counter("ok" if r.message_type == MessageType.METHOD_RETURN else str(r.error_name) for r in replies)
    messages = sorted({str(r.body[0]) for r in replies if r.message_type == MessageType.ERROR})
    return {"replies": dict(kinds), "messages": messages}


if __name__ == "__main__":
    address, member, connections, calls, gap = sys.argv[1:]
    print(json.dumps(asyncio.run(burst(address, member, int(connections), int(calls), float(gap)))))
