"""Starting and stopping Ollama's systemd unit, behind an interface the core can be tested against.

The daemon's implementation talks to systemd over D-Bus (``org.freedesktop.systemd1``, waiting for the job to
finish; hxd.bus.systemd); unit tests use a fake with the same methods. Calls block: the core calls them from the
worker thread its job runs in.
"""

from __future__ import annotations

from typing import Protocol


class ServiceController(Protocol):
    def is_active(self, unit: str) -> bool:
        """True when the unit is active (or activating/reloading)."""
        ...

    def stop(self, unit: str) -> None:
        """Stop the unit and return once it is stopped; raises hxd.core.errors.Failed otherwise."""
        ...

    def start(self, unit: str) -> None:
        """Start the unit and return once it is started; raises hxd.core.errors.Failed otherwise."""
        ...
