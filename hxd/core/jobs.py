"""Long operations (migrate, smoke, audit) as jobs: progress reported from a worker thread, cancellation, result.

The core runs a job's work in a worker thread with a ``JobControl``; it knows nothing of D-Bus. The bus adapter
turns each job into an object at ``/org/hxinfra/hxd1/jobs/N`` with properties and a ``Finished`` signal (UDisks2's
jobs, rauc's Completed); hxctl --offline prints the same updates directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hxd.core.errors import Cancelled

# At most this many progress updates a second reach observers; phase and message changes always do.
_MIN_INTERVAL_SEC = 0.1


class RunState(StrEnum):
    """Where a job is: running, then one of the three ends (the Job's ``State`` property on the bus)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class JobState:
    """What a job shows: the bus Job object's properties, one to one."""

    kind: str
    state: RunState = RunState.RUNNING
    phase: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    items_done: int = 0
    items_total: int = 0
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    cancellable: bool = True  # False once the work is past the point where stopping would leave things half done

    @property
    def progress(self) -> float:
        """0..1 from bytes when the job moves bytes, else from items."""
        if self.bytes_total:
            return min(self.bytes_done / self.bytes_total, 1.0)
        if self.items_total:
            return min(self.items_done / self.items_total, 1.0)
        return 1.0 if self.state != RunState.RUNNING else 0.0


@dataclass(frozen=True)
class JobSummary:
    """A job as Status() lists it: its kind and state for scripts and metrics, a line for people."""

    kind: str
    state: str
    text: str  # "migrate running (copy, 52%)", "audit completed: audit finished"

    @classmethod
    def of(cls, state: JobState) -> JobSummary:
        running = state.state == RunState.RUNNING
        detail = f" ({state.phase}, {state.progress:.0%})" if running else f": {state.message}"
        return cls(state.kind, state.state, f"{state.kind} {state.state}{detail}")


Listener = Callable[[JobState, frozenset[str]], None]


class JobControl:
    """Handed to the work function: report progress, learn about cancellation. Thread-safe.

    ``listener`` is called with the state and the names of the fields that changed, from the worker thread; the bus
    adapter hops to its event loop itself. Byte and item counters are coalesced to ``_MIN_INTERVAL_SEC``.
    """

    def __init__(self, kind: str, listener: Listener | None = None) -> None:
        self.state = JobState(kind)
        self._listener = listener
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._last_sent = 0.0
        self._pending: set[str] = set()

    def update(self, **changes: Any) -> None:
        """Set fields of the state (phase, bytes_done, bytes_total, items_done, items_total, message)."""
        with self._lock:
            for name, value in changes.items():
                if getattr(self.state, name) != value:
                    setattr(self.state, name, value)
                    self._pending.add(name)
            changed = self._due()
        self._send(changed)

    def advance(self, *, bytes_done: int = 0, items_done: int = 0) -> None:
        """Add to the byte and item counters; safe from several worker threads at once."""
        with self._lock:
            if bytes_done:
                self.state.bytes_done += bytes_done
                self._pending.add("bytes_done")
            if items_done:
                self.state.items_done += items_done
                self._pending.add("items_done")
            changed = self._due()
        self._send(changed)

    def _due(self) -> frozenset[str]:
        """The changed fields to send now (called with the lock held); empty while coalescing counters."""
        urgent = bool(self._pending & {"phase", "message", "state", "result", "cancellable"})
        now = time.monotonic()
        if not self._pending or (not urgent and now - self._last_sent < _MIN_INTERVAL_SEC):
            return frozenset()
        changed, self._pending = frozenset(self._pending), set()
        self._last_sent = now
        return changed

    def _send(self, changed: frozenset[str]) -> None:
        if changed and self._listener is not None:
            self._listener(self.state, changed)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> bool:
        """Ask the work to stop at its next safe point; False (and nothing asked) once it can no longer stop."""
        with self._lock:
            if not self.state.cancellable:
                return False
            self._cancel.set()
            return True

    def point_of_no_return(self) -> None:
        """From here on the work finishes (or undoes itself) whatever happens; a cancel asked before still counts."""
        with self._lock:
            self.state.cancellable = False
            self._pending.add("cancellable")
        self.check()

    def check(self) -> None:
        """Raise Cancelled if someone asked; call between steps that are safe to stop after."""
        if self._cancel.is_set():
            raise Cancelled(f"{self.state.kind} was cancelled")

    def finish(self, state: RunState, message: str, result: dict[str, Any] | None = None) -> None:
        """The job's end: completed, failed or cancelled, with a one-line message and the result."""
        self.update(state=state, message=message, result=result or {})
