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
    """``ok`` when ``path`` exists and hxd can write it; ``missing; ...`` when it does not, saying whether hxd could
    create it (a store that is not there yet must not read as ``ok``); otherwise why hxd cannot write it.

    A missing path is checked on its nearest existing ancestor, since that is where hxd would create it.
    """
    existing = nearest_existing(path)
    problem = _write_problem(existing)
    if existing == path:
        return problem or "ok"
    return f"missing; hxd cannot create it: {problem}" if problem else f"missing; hxd can create it under {existing}"


def _write_problem(path: Path) -> str:
    """Why hxd cannot write the existing ``path`` from inside its sandbox; empty when it can."""
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError as exc:
        return f"cannot check {path}: {exc.strerror}"
    if read_only:
        return f"read-only here ({path} is on a read-only mount): {DROP_IN_HINT}"
    if not os.access(path, os.W_OK, effective_ids=True):  # with hxd's capabilities, as the unit grants them
        return f"not writable by hxd ({path})"
    return ""


def check_paths(config: Config) -> dict[str, str]:
    return {name: path_state(path) for name, path in managed_paths(config).items()}
