"""busctl, systemd's own D-Bus client, as the independent client in tests (never our own client library), and hxctl
as a subprocess."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from typing import Any

from hxd.bus import names


def as_user(user: str | None) -> list[str]:
    """The setpriv prefix that runs a command as ``user`` with its primary group and no others."""
    if user is None:
        return []
    account = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups"]


def busctl(address: str, *args: str, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``busctl --address=ADDRESS ARGS``; ``user`` runs it as that account via setpriv."""
    command = [*as_user(user), "busctl", f"--address={address}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def manager(
    address: str, member: str, *args: str, json_reply: bool = False, user: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``busctl call`` on hxd's Manager; ``json_reply`` asks busctl for ``--json=short`` instead of its text form."""
    prefix = ["--json=short"] if json_reply else []
    call = ["call", names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE, member, *args]
    return busctl(address, *prefix, *call, user=user, check=check)


def call_manager(address: str, member: str, *args: str, user: str | None = None, check: bool = True) -> Any:
    """Call a Manager method with ``--json=short``; returns the decoded reply data (or the failed process)."""
    result = manager(address, member, *args, json_reply=True, user=user, check=check)
    return json.loads(result.stdout)["data"] if result.returncode == 0 else result


def status(address: str) -> dict[str, Any]:
    """Status() through busctl, flattened from busctl's JSON variant form to plain values."""
    [reply] = call_manager(address, "Status")
    return {key: variant["data"] for key, variant in reply.items()}


def dbus_send(address: str, member: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Call a Manager method with dbus-send, which (unlike busctl) prints the D-Bus error *name* of a failure."""
    command = [
        *as_user(user),
        "dbus-send",
        f"--bus={address}",
        "--print-reply",
        f"--dest={names.BUS_NAME}",
        names.MANAGER_PATH,
        f"{names.MANAGER_INTERFACE}.{member}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def hxctl_command(*args: str, user: str | None = None) -> list[str]:
    """The command line of hxctl (this checkout's, with this interpreter); ``user`` runs it as that account via
    setpriv. Run it from / (readable by every account)."""
    return [*as_user(user), sys.executable, "-c", "from hxd.cli import main; raise SystemExit(main())", *args]


def hxctl(
    *args: str, user: str | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run hxctl and collect its output; ``env`` is added to this process's environment."""
    command = hxctl_command(*args, user=user)
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/", env=environment)


def hxctl_merged(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run hxctl with stderr merged into stdout through one pipe, as ``2>&1`` or a log gets them, and with Python's
    default buffering: PYTHONUNBUFFERED, which would hide a missing flush, is left out."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    command = hxctl_command(*args)
    return subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, cwd="/", env=environment
    )
