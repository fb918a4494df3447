"""A migration run to its end in the calling thread, without a job runner or the node's lock: for the tests and
benchmarks of the migration itself (hxd and hxctl --offline go through hxd.core.engine's jobs)."""

from __future__ import annotations

from typing import Any

from hxd.core.migrate.runner import Migration


def run_migration(
    migration: Migration, overrides: dict[str, str] | None = None, *, resume: bool = False
) -> dict[str, Any]:
    return migration.run(migration.prepare(overrides or {}, resume=resume))


def roll_back(migration: Migration) -> dict[str, Any]:
    return migration.rollback(migration.rollback_journal())


def prune(migration: Migration) -> dict[str, Any]:
    return migration.prune_source(migration.prune_journal())
