"""What each feature's state is, as a word a script can compare and a line a person can read.

A feature's state says what was checked: ``unchecked`` until its first run since hxd started, then what that run
found. The detail line carries the when and the counts; nothing parses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FeatureState(StrEnum):
    UNCHECKED = "unchecked"  # not run since hxd started (validate, audit, smoke), or no GPU sample yet
    OK = "ok"  # the last run found nothing wrong; for migrate: no migration needs attention
    PROBLEMS = "problems"  # the last run found errors (validate, audit) or a model failed or regressed (smoke)
    INTERRUPTED = "interrupted"  # migrate: a migration needs `hxctl migrate --resume` or `hxctl rollback`
    DEGRADED = "degraded"  # telemetry: a GPU was lost, or the CSV log cannot be written
    UNAVAILABLE = "unavailable"  # telemetry: no NVML library or driver; retried with back-off
    DISABLED = "disabled"  # turned off in hxd.toml


FEATURES = ("validate", "migrate", "telemetry", "smoke", "audit")


@dataclass(frozen=True)
class Feature:
    state: FeatureState
    detail: str = ""

    def __str__(self) -> str:
        """``ok: 8 GPUs; last sample ...``: the word, then the line (for logs and people)."""
        return f"{self.state}: {self.detail}" if self.detail else str(self.state)
