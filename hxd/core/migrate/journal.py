"""The migration journal: what has been done, written durably before and after every irreversible step.

Content addressing makes most state re-derivable (a blob is done when ``bulk/blobs/<name>`` exists and hashes to
its name), so the journal holds what cannot be re-derived: which blobs were verified (so a resume does not re-hash
them), the server's model list before the migration, the service's state, what the switch changed and where the
backups are.

It is a write-ahead log: every name hxd is about to create is in it before the name can exist (``planned_blobs``
and ``planned_manifests`` before the copy starts, each switch step with its backup before the step, ``stopping``
before systemd is asked to stop Ollama), so after a kill at any system call a rollback knows every name to take
back and whether Ollama may be down.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from hxd.core.atomic import replace_file
from hxd.core.errors import Failed
from hxd.core.migrate.plan import Targets
from hxd.core.schedule import iso

JOURNAL_NAME = "migration.json"


class Phase(StrEnum):
    """Where a migration is: copying, verified, stopping, stopped, switching, started, then committed (or
    rolling-back, then rolled-back); later pruned. Committed, rolled-back and pruned are final; any other state
    means interrupted."""

    COPYING = "copying"
    VERIFIED = "verified"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SWITCHING = "switching"
    STARTED = "started"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"
    PRUNED = "pruned"


FINAL = (Phase.COMMITTED, Phase.ROLLED_BACK, Phase.PRUNED)
# From these on Ollama may have been stopped: a rollback starts it again, and hxd rolls back at its start a
# migration interrupted in one of them (docs/migration.md, "Crashes").
AFTER_STOP = (Phase.STOPPING, Phase.STOPPED, Phase.SWITCHING, Phase.STARTED, Phase.COMMITTED)


@dataclass
class Journal:
    id: str
    state: Phase
    targets: Targets  # the source as resolved when the migration began
    unit: str
    same_fs: bool
    started: str
    planned_blobs: list[str] = field(default_factory=list)  # every blob name hxd may create in bulk storage
    planned_manifests: list[str] = field(default_factory=list)  # and every manifest (relative to manifests/)
    verified: dict[str, int] = field(default_factory=dict)
    manifests: dict[str, str] = field(default_factory=dict)
    tags_before: dict[str, str] = field(default_factory=dict)
    tags_from: str = "store"  # "server" when /api/tags answered before the migration: the post-check asks it again
    service_was_active: bool = False
    env_backup: str = ""
    switched: list[list[str]] = field(default_factory=list)  # [step, how], in the order taken
    rollback_from: str = ""  # the state a rollback began in (written ahead, so a killed rollback is finished)
    backups: dict[str, str] = field(default_factory=dict)
    finished: str = ""
    message: str = ""

    @property
    def interrupted(self) -> bool:
        return self.state not in FINAL

    @property
    def stopped_ollama(self) -> bool:
        """Ollama may have been stopped by this migration: a rollback stops it for the undo and starts it again."""
        state = Phase(self.rollback_from) if self.state == Phase.ROLLING_BACK else self.state
        return self.service_was_active and state in AFTER_STOP

    @property
    def needs_recovery(self) -> bool:
        """Interrupted past the stop, or in a rollback: hxd rolls it back at its start (docs/migration.md)."""
        return self.state == Phase.ROLLING_BACK or (self.interrupted and self.state in AFTER_STOP)

    def plan_names(self, blobs: list[str], manifests: list[str], state_dir: Path) -> None:
        """Write ahead the names about to be created (durably, before any of them can exist)."""
        new_blobs = [n for n in blobs if n not in set(self.planned_blobs)]
        new_manifests = [m for m in manifests if m not in set(self.planned_manifests)]
        if new_blobs or new_manifests:
            self.planned_blobs += new_blobs
            self.planned_manifests += new_manifests
            self.save(state_dir)

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        replace_file(state_dir / JOURNAL_NAME, json.dumps(self.to_json(), indent=1, sort_keys=True).encode())

    def to_json(self) -> dict[str, Any]:
        """Plain values; the targets' paths flat beside the rest (as before they were typed)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "targets"}
        return {**data, "state": str(self.state), **{k: str(v) for k, v in asdict(self.targets).items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Journal:
        paths = {name: Path(data.pop(name)) for name in Targets.__dataclass_fields__}
        return cls(**{**data, "state": Phase(data["state"]), "targets": Targets(**paths)})

    def finish(self, state_dir: Path, state: Phase, message: str) -> None:
        self.state, self.message, self.finished = state, message, iso(datetime.now(UTC))
        self.save(state_dir)


def load(state_dir: Path) -> Journal | None:
    path = state_dir / JOURNAL_NAME
    try:
        return Journal.from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise Failed(f"{path}: the migration journal cannot be read ({exc}); move it aside to start over") from None


def archive(state_dir: Path, journal: Journal) -> None:
    """Keep a finished journal under its id, so a new migration starts with a fresh one."""
    os.replace(state_dir / JOURNAL_NAME, state_dir / f"migration-{journal.id}.json")


def new_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
