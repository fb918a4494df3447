"""The shipped bus policy (dbus/org.hxinfra.hxd1.conf) on a bus running Debian's own system.conf policy (the
``system_bus`` fixture of conftest.py), so default-deny rules and our allowances interact exactly as on a node."""

from __future__ import annotations

import os
import subprocess

from busctl import as_user, busctl, call_manager, dbus_send, hxctl, manager
from conftest import StartHxd

from hxd.bus import names
from hxsandbox.world import PrivateBus


def request_name(address: str, user: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *as_user(user),
            "dbus-send",
            f"--bus={address}",
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            f"string:{names.BUS_NAME}",
            "uint32:4",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_tests_run_as_root() -> None:
    assert os.geteuid() == 0, "the policy tests switch users with setpriv and must run as root (CI does)"


def test_unprivileged_user_cannot_own_the_name(system_bus: PrivateBus) -> None:
    result = request_name(system_bus.address, "nobody")
    assert result.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in result.stderr


def test_hxd_user_can_own_the_name(system_bus: PrivateBus, hxd_user: str) -> None:
    result = request_name(system_bus.address, hxd_user)
    assert result.returncode == 0, result.stderr
    assert "uint32 1" in result.stdout  # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER


def test_unprivileged_user_reads_status_but_cannot_reload_or_validate(
    system_bus: PrivateBus, start_hxd: StartHxd
) -> None:
    """hxd runs as root here (the policy lets root own the name, for hxd started by hand)."""
    start_hxd(address=system_bus.address)
    result = manager(system_bus.address, "Status", user="nobody")
    assert result.stdout.startswith("a{sv}")
    denied = dbus_send(system_bus.address, "Reload", user="nobody")
    assert "org.hxinfra.hxd1.Error.NotAuthorized" in denied.stderr
    assert "only root" in denied.stderr  # no polkit on this bus: root only
    refused = manager(
        system_bus.address,
        "Validate",
        "a{sv}",
        "0",
        user="nobody",
        check=False,
    )
    assert "org.hxinfra.hxd1.validate: polkit is not running and only root may do this" in refused.stderr


def test_job_objects_are_reachable_and_cancel_is_hxds_to_refuse(system_bus: PrivateBus, start_hxd: StartHxd) -> None:
    """The bus lets anyone reach a Job; hxd itself decides who may cancel it (what starting it needed)."""
    start_hxd(address=system_bus.address)
    [job] = call_manager(system_bus.address, "RunSmoke", "a{sv}", "0")  # no Ollama here: it fails soon
    cancel = ["call", names.BUS_NAME, job, names.JOB_INTERFACE, "Cancel"]
    refused = busctl(system_bus.address, *cancel, user="nobody", check=False)
    assert "org.hxinfra.hxd1.smoke: polkit is not running and only root may do this" in refused.stderr
    assert busctl(system_bus.address, *cancel).returncode == 0  # root; the job has ended, so there is nothing to do
    kind = busctl(system_bus.address, "get-property", names.BUS_NAME, job, names.JOB_INTERFACE, "Kind", user="nobody")
    assert kind.stdout.strip() == 's "smoke"'


def test_other_interfaces_are_denied_to_unprivileged_users(system_bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd(address=system_bus.address)
    result = busctl(
        system_bus.address,
        "call",
        names.BUS_NAME,
        names.MANAGER_PATH,
        "org.example.NotOurs",
        "Poke",
        user="nobody",
        check=False,
    )
    assert result.returncode != 0
    assert "Access denied" in result.stderr or "AccessDenied" in result.stderr


def test_unprivileged_audit_fix_is_refused(system_bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd(address=system_bus.address)
    result = hxctl("--bus", system_bus.address, "audit", "--fix", user="nobody")
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip().endswith("only root may do this [NotAuthorized]")
