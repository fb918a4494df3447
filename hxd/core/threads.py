"""Blocking work off the event loop, in a daemon thread.

Not ``asyncio.to_thread`` for calls into drivers (NVML): the default executor's threads are joined when the
interpreter exits, so one hung driver call would hold up hxd's stop until systemd kills it. A daemon thread is
left behind instead, and the awaiting side can still be cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_daemon_thread(work: Callable[[], T], name: str) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():  # the awaiting task may have been cancelled meanwhile
            setter(value)

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:
            loop.call_soon_threadsafe(deliver, future.set_exception, exc)
        else:
            loop.call_soon_threadsafe(deliver, future.set_result, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
