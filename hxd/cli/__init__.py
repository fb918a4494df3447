"""``hxctl``: the thin client. Talks to hxd over D-Bus, or runs the core itself with ``--offline``."""

from hxd.cli.main import main

__all__ = ["main"]
