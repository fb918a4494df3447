"""The service controller for ``hxctl --offline``: systemctl, which waits for its job as hxd's D-Bus client does.

The daemon uses systemd's D-Bus API directly (hxd.bus.systemd); a process without hxd's bus connection has the
same API behind ``systemctl``, so the offline core gets the same semantics without a bus client of its own.
"""

from __future__ import annotations

import subprocess

from hxd.core.errors import Failed


class SystemctlController:
    def is_active(self, unit: str) -> bool:
        state = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True).stdout.strip()
        return state in ("active", "activating", "reloading")

    def stop(self, unit: str) -> None:
        self._run("stop", unit)

    def start(self, unit: str) -> None:
        self._run("start", unit)

    def _run(self, verb: str, unit: str) -> None:
        try:
            result = subprocess.run(["systemctl", verb, unit], capture_output=True, text=True, timeout=180)
        except FileNotFoundError:
            raise Failed(f"cannot {verb} {unit}: systemctl is not installed") from None
        except subprocess.TimeoutExpired:
            raise Failed(f"systemctl {verb} {unit} did not finish in 180 s") from None
        if result.returncode != 0:
            raise Failed(f"systemctl {verb} {unit} failed: {result.stderr.strip() or result.returncode}")
