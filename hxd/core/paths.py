"""Whether hxd can write the paths it manages, as seen from inside its own sandbox.

Under the packaged unit (ProtectSystem=strict) only the paths named in ReadWritePaths= are writable; a path an
operator configured elsewhere would fail at the first migration. hxd says so in Status() at start and on reload,
with the drop-in that fixes it, instead of failing later.
"""

from __future__ import annotations

import os
from pathlib import Path

from hxd.core.config import Config

DROP_IN_HINT = "add it to ReadWritePaths= with `systemctl edit hxd` (see hxd(8))"


def managed_paths(config: Config) -> dict[str, Path]:
    """The paths hxd writes: the store paths, the env file's directory, its own log and state directories."""
    paths = config.paths
    return {
        "canonical": paths.canonical,
        "bulk": paths.bulk,
        "legacy": paths.legacy.parent,
        "env_file": paths.env_file.parent,
        "log_dir": paths.log_dir,
        "state_dir": paths.state_dir,
    }


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else its nearest ancestor that does (where hxd would create it)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def path_state(path: Path) -> str:
    """Starts with ``ok`` when hxd can write ``path`` (or create it); otherwise says why not.

    A missing path is checked on its nearest existing ancestor, since that is where hxd would create it.
    """
    existing = nearest_existing(path)
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError as exc:
        return f"cannot check {existing}: {exc.strerror}"
    if read_only:
        return f"read-only here ({existing} is on a read-only mount): {DROP_IN_HINT}"
    if not os.access(existing, os.W_OK, effective_ids=True):  # with hxd's capabilities, as the unit grants them
        return f"not writable by hxd ({existing})"
    return "ok" if existing == path else f"ok (missing; hxd can create it under {existing})"


def check_paths(config: Config) -> dict[str, str]:
    return {name: path_state(path) for name, path in managed_paths(config).items()}
