"""The /metrics page: hxd's own state, then the GPUs' (hxd.metrics.gpus).

Names follow Prometheus' conventions: an ``hxd_`` prefix, base units with plural suffixes, ``_info`` metrics with
value 1 carrying labels. Rendering reads what the engine already knows; a scrape never triggers work.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeGuard

from hxd.core.engine import STATES, Status
from hxd.core.features import FeatureState
from hxd.metrics.exposition import family


def render(status: Status, extra: Sequence[str] = ()) -> str:
    """The whole /metrics page: hxd's own state, then ``extra`` lines (the GPUs' last sample)."""
    features = status.features.items()
    lines = [
        *family("hxd_info", "hxd's version and node name.", [({"version": status.version, "node": status.node}, 1)]),
        *family("hxd_uptime_seconds", "Seconds since hxd started.", [({}, round(status.uptime_sec, 3))]),
        *family(
            "hxd_state",
            "hxd's state: 1 for the current one.",
            [({"state": state}, float(state == status.state)) for state in STATES],
        ),
        *family(
            "hxd_feature_available",
            "1 when the feature works in this hxd, 0 when it is unavailable (see hxctl status).",
            [({"feature": name}, float(state != FeatureState.UNAVAILABLE)) for name, state in features],
        ),
        *family(
            "hxd_feature_state",
            "Each feature's state (hxctl status explains them): 1 for the current one.",
            [
                ({"feature": name, "state": str(each)}, float(each == state))
                for name, state in features
                for each in FeatureState
            ],
        ),
        *family(
            "hxd_timer_next_run_timestamp_seconds",
            "When each timer runs next (Unix time).",
            [({"timer": name}, when.timestamp()) for name, when in status.timers.items()],
        ),
        *family(
            "hxd_path_writable",
            "1 when a configured path exists and hxd can write it; 0 when it is missing or unwritable (hxctl status).",
            [({"path": name}, float(state == "ok")) for name, state in status.paths.items()],
        ),
        *_findings("hxd_validation_findings", "Findings of the last validation, by severity.", status.last_validation),
        *_findings("hxd_audit_findings", "Findings of the last audit, by severity.", status.last_audit),
        *_smoke(status.last_smoke),
        *family(
            "hxd_jobs",
            "Jobs on the bus (running, and finished in the last 5 minutes), by kind and state.",
            [({"kind": kind, "state": state}, float(count)) for (kind, state), count in sorted(_jobs(status).items())],
        ),
    ]
    return "\n".join([*lines, *extra]) + "\n"


def _findings(name: str, help_text: str, last: dict[str, int | str]) -> list[str]:
    if not last:
        return []  # nothing ran yet: no sample rather than a misleading 0
    return family(name, help_text, [({"severity": s}, float(last[f"{s}s"])) for s in ("error", "warning")])


def _smoke(last: dict[str, Any]) -> list[str]:
    """The last smoke run, per model (``LastSmoke``); nothing before the first run. The run may come from the results
    file, which anyone with write access could have edited: values of the wrong type are left out."""
    models: dict[str, dict[str, Any]] = last.get("models", {})
    if not models:
        return []
    return [
        *family(
            "hxd_smoke_ok",
            "1 when the model passed the last smoke run (no failure, no regression).",
            [({"model": m}, float(bool(r.get("ok")) and not r.get("regression"))) for m, r in models.items()],
        ),
        *family(
            "hxd_smoke_first_token_seconds",
            "Time to the first token in the last smoke run.",
            [({"model": m}, float(t)) for m, r in models.items() if _number(t := r.get("first_token_sec"))],
        ),
        *family(
            "hxd_smoke_last_run_timestamp_seconds",
            "When the last smoke run started (Unix time).",
            [({}, started)] if (started := _unix_time(last.get("time"))) is not None else [],
        ),
    ]


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unix_time(text: object) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp() if text else None
    except ValueError:
        return None


def _jobs(status: Status) -> Counter[tuple[str, str]]:
    return Counter((job.kind, job.state) for job in status.jobs.values())
