"""One migration step in its own process, for the kill and hostile-owner tests: ``migrate``, ``resume``,
``rollback`` or ``prune`` of the node whose hxd.toml is given, with Ollama's unit standing in as a flag file beside
it (it outlives the process, as systemd's state does); a rollback with nothing to roll back exits 3. One copy
worker, so that the order of system calls is the same in every run."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from migrate_support import FlagController

from hxd.core.config import load_config
from hxd.core.errors import Refused
from hxd.core.jobs import JobControl
from hxd.core.migrate.plan import AlreadyAligned
from hxd.core.migrate.runner import Migration
from hxsandbox.migrate import prune, roll_back, run_migration


def main() -> None:
    toml, action = Path(sys.argv[1]), sys.argv[2]
    config = load_config(toml)
    migration = Migration(config, FlagController(toml.with_name("ollama.active")), JobControl(action), workers=1)
    if action == "rollback":
        try:
            roll_back(migration)
        except Refused:
            sys.exit(3)  # nothing to roll back
    elif action == "prune":
        prune(migration)
    else:
        with contextlib.suppress(AlreadyAligned):  # nothing to do: a success, as hxd and hxctl report it
            run_migration(migration, resume=action == "resume")


if __name__ == "__main__":
    main()
