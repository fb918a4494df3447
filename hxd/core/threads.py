"""A value that one thread sets and any number of callers wait for, from threads or from an event loop.

Blocking work that can hang (a driver call into NVML) runs in a daemon thread of its own, never in asyncio's
default executor: the executor's threads are joined when the interpreter exits, so one hung driver call would hold
up hxd's stop until systemd kills it. A daemon thread is left behind instead. Its callers wait on a ``Shared``,
each with a timeout of its own, so a hung call costs one thread however many callers come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class Shared(Generic[T]):
    """The outcome of one run of blocking work, for every caller that asked while it ran: threads block in
    ``wait``, coroutines await ``wait_async``; each gives up after its own timeout with TimeoutError.

    Waiting costs no thread, and a caller that gives up leaves nothing behind: a run that hangs for hours costs
    nothing per caller that came and went meanwhile (``asyncio.wrap_future`` of a concurrent.futures.Future would
    keep a callback per caller until the run ends). The first ``set`` wins and later ones are ignored, so a run
    can be answered early (when hxd stops) and still end on its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._value: T | None = None
        self._loops: dict[asyncio.AbstractEventLoop, asyncio.Future[None]] = {}  # one future per waiting loop

    def set(self, value: T) -> None:
        """Give every caller ``value`` (from any thread), unless a value was set already."""
        with self._lock:
            if self._done.is_set():
                return
            self._value = value
            self._done.set()
            loops, self._loops = self._loops, {}
        for loop, future in loops.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(_wake, future)

    def wait(self, timeout: float) -> T:
        """The value, blocking this thread up to ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise TimeoutError
        return cast(T, self._value)

    async def wait_async(self, timeout: float) -> T:
        """The value, awaited up to ``timeout`` seconds. Every caller on a loop shares one future; each awaits it
        through ``asyncio.shield``, which forgets the caller once it times out or is cancelled."""
        loop = asyncio.get_running_loop()
        with self._lock:
            future = None if self._done.is_set() else self._loops.get(loop)
            if future is None and not self._done.is_set():
                future = self._loops[loop] = loop.create_future()
        if future is not None:
            async with asyncio.timeout(timeout):
                await asyncio.shield(future)
        return cast(T, self._value)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
