"""The service controller for ``hxctl --offline``: systemctl, which waits for its job as hxd's D-Bus client does.

The daemon uses systemd's D-Bus API directly (hxd.bus.systemd); a process without hxd's bus connection has the
same API behind ``systemctl``, so the offline core gets the same semantics without a bus client of its own.
"""

from __future__ import annotations

import subprocess

from hxd.core.errors import Failed


class SystemctlController:
    def is_active(self, unit: str) -> bool:
        state = self._run("is-active", unit, timeout=30, check=False).stdout.strip()
        return state in ("active", "activating", "reloading")

    def stop(self, unit: str) -> None:
        self._run("stop", unit)

    def start(self, unit: str) -> None:
        self._run("start", unit)

    def _run(self, verb: str, unit: str, timeout: int = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``systemctl VERB UNIT``; Failed when systemctl is missing, hangs, or (with ``check``) exits non-zero."""
        try:
            result = subprocess.run(["systemctl", verb, unit], capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise Failed(
                f"cannot run systemctl {verb} {unit}: systemctl is not installed (apt-get install systemd)"
            ) from None
        except subprocess.TimeoutExpired:
            raise Failed(f"systemctl {verb} {unit} did not finish in {timeout} s") from None
        if check and result.returncode != 0:
            raise Failed(f"systemctl {verb} {unit} failed: {result.stderr.strip() or result.returncode}")
        return result
