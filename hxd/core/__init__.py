"""The engine: everything hxd knows and does, with no D-Bus in it (usable offline)."""
