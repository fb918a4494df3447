"""The one decorator every exported method goes through (firewalld's pattern).

It does three things, so no method can forget them:
1. authorization is on by default: a method needs its interface's ``default_action`` unless it names another
   action or is marked ``public`` (read-only);
2. errors: a ``hxd.core.errors.HxdError`` reaches the caller as ``org.hxinfra.hxd1.Error.<ClassName>`` with its
   one-line message; anything else is logged with its traceback here and reaches the caller as
   ``org.hxinfra.hxd1.Error.Internal`` with no details (dbus-fast would otherwise send its own error name);
3. in-flight calls are tracked, so shutdown can let them finish before the name is released.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import structlog
from dbus_fast import DBusError, Variant
from dbus_fast.service import ServiceInterface, dbus_method

from hxd.bus import names
from hxd.bus.auth import Authority
from hxd.bus.connection import current_message
from hxd.core.errors import HxdError, InvalidArgs

log = structlog.get_logger("hxd.bus")

F = TypeVar("F", bound=Callable[..., Any])


class HxdInterface(ServiceInterface):
    """Base for hxd's interfaces: holds the authority and the in-flight call count."""

    default_action: str

    def __init__(self, name: str, authority: Authority) -> None:
        super().__init__(name)
        self.authority = authority
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @contextmanager
    def call(self) -> Iterator[None]:
        self.inflight += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.inflight -= 1
            if not self.inflight:
                self.idle.set()


def _dbus_error(member: str, exc: Exception) -> DBusError:
    """The error a caller sees for ``exc`` raised inside ``member``."""
    if isinstance(exc, DBusError):
        return exc
    if isinstance(exc, HxdError):
        message = " ".join(str(exc).split()) or type(exc).__name__
        return DBusError(names.error_name(exc), message)
    log.error("internal error in a D-Bus method", member=member, exc_info=exc)
    return DBusError(names.ERROR_INTERNAL, f"{member} failed inside hxd; see `journalctl -u hxd`")


def method(*, action: str | None = None, public: bool = False) -> Callable[[F], F]:
    """Export ``fn`` as a D-Bus method, authorized (unless ``public``), error-mapped and tracked.

    A public synchronous method stays synchronous: it is answered without a task switch (Status() is on the hot
    path). Anything that needs authorization is a coroutine, since asking polkit is a bus round trip.
    """

    def decorate(fn: F) -> F:
        member = fn.__name__
        # dbus-fast reads the D-Bus signature from the annotations and cannot read ``-> None`` when annotations
        # are strings (PEP 563); a method that returns nothing must have no return annotation for it.
        signature = inspect.signature(fn)
        if signature.return_annotation in (None, "None"):
            signature = signature.replace(return_annotation=inspect.Signature.empty)
        if public and not inspect.iscoroutinefunction(fn):
            # Not counted as in flight: it runs to completion inside one turn of the loop, before shutdown can.
            @functools.wraps(fn)
            def sync_wrapper(self: HxdInterface, *args: Any) -> Any:
                try:
                    return fn(self, *args)
                except Exception as exc:
                    raise _dbus_error(member, exc) from None

            sync_wrapper.__signature__ = signature  # type: ignore[attr-defined]
            return dbus_method(name=member)(sync_wrapper)  # type: ignore[return-value]

        @functools.wraps(fn)
        async def async_wrapper(self: HxdInterface, *args: Any) -> Any:
            with self.call():
                try:
                    if not public:
                        await self.authority.check(current_message.get(), action or self.default_action)
                    result = fn(self, *args)
                    return await result if inspect.isawaitable(result) else result
                except Exception as exc:
                    raise _dbus_error(member, exc) from None

        async_wrapper.__signature__ = signature  # type: ignore[attr-defined]
        return dbus_method(name=member)(async_wrapper)  # type: ignore[return-value]

    return decorate


def parse_options(options: dict[str, Variant], schema: dict[str, str]) -> dict[str, Any]:
    """The ``a{sv}`` options of a call as plain values, checked against ``schema`` (name -> D-Bus signature).

    Every method takes its options this way (as UDisks2 and fwupd do) so the API can grow without new signatures;
    an unknown name or a wrong type is the caller's mistake and says so.
    """
    values: dict[str, Any] = {}
    for name, variant in options.items():
        if name not in schema:
            raise InvalidArgs(f"unknown option {name!r}; valid options: {', '.join(sorted(schema))}")
        if variant.signature != schema[name]:
            raise InvalidArgs(f"option {name!r} must have type {schema[name]!r}, not {variant.signature!r}")
        values[name] = variant.value
    return values
