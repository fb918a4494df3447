"""Runs one migration in a child process, for the kill -9 tests: prints "ready" once imported, then migrates."""

from __future__ import annotations

import sys
from pathlib import Path

from migrate_support import FakeController

from hxd.core.config import load_config
from hxd.core.jobs import JobControl
from hxd.core.migrate.runner import Migration
from hxsandbox.migrate import run_migration


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    print("ready", flush=True)
    run_migration(Migration(config, FakeController(), JobControl("migrate")))
    print("done", flush=True)


if __name__ == "__main__":
    main()
