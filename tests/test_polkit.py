"""Authorization: every mutating method asks polkit about the caller, with a system-bus-name subject."""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import pytest
from busctl import busctl, dbus_send, manager
from conftest import StartHxd

from hxd.bus import names
from hxsandbox.polkit import MockPolkit
from hxsandbox.world import PrivateBus, wait_until


@pytest.fixture
def polkit(bus: PrivateBus) -> MockPolkit:
    with MockPolkit(bus.address) as mock:
        yield mock  # type: ignore[misc]


def unique_name_of_busctl_call(address: str) -> str:
    return json.loads(busctl(address, "--json=short", "status").stdout or "{}").get("UniqueName", "")


def test_allowed_action_goes_through(bus: PrivateBus, polkit: MockPolkit, start_hxd: StartHxd) -> None:
    start_hxd()
    polkit.authority.allowed = {names.ACTION_RELOAD}
    manager(bus.address, "Reload")
    [request] = polkit.authority.requests
    assert request["kind"] == "system-bus-name"
    assert request["name"].startswith(":1.")
    assert request["action"] == names.ACTION_RELOAD
    assert request["flags"] == 1  # busctl allows interactive authorization by default


def test_non_interactive_call_does_not_ask_for_interaction(
    bus: PrivateBus, polkit: MockPolkit, start_hxd: StartHxd
) -> None:
    start_hxd()
    polkit.authority.allowed = {names.ACTION_RELOAD}
    busctl(
        bus.address,
        "--allow-interactive-authorization=no",
        "call",
        names.BUS_NAME,
        names.MANAGER_PATH,
        names.MANAGER_INTERFACE,
        "Reload",
    )
    assert polkit.authority.requests[0]["flags"] == 0


def test_denied_action_is_not_authorized(bus: PrivateBus, polkit: MockPolkit, start_hxd: StartHxd) -> None:
    start_hxd()
    result = dbus_send(bus.address, "Reload")
    assert result.returncode != 0
    assert "org.hxinfra.hxd1.Error.NotAuthorized" in result.stderr
    assert names.ACTION_RELOAD in result.stderr


def test_status_needs_no_authorization(bus: PrivateBus, polkit: MockPolkit, start_hxd: StartHxd) -> None:
    start_hxd()
    manager(bus.address, "Status")
    assert polkit.authority.requests == []


def test_without_polkit_root_is_allowed(bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd()
    result = dbus_send(bus.address, "Reload")
    assert result.returncode == 0, result.stderr


def test_sigterm_lets_an_in_flight_call_finish(bus: PrivateBus, polkit: MockPolkit, start_hxd: StartHxd) -> None:
    """The call is held inside hxd (waiting for polkit) when SIGTERM arrives; it must still be answered."""
    hxd = start_hxd()
    polkit.authority.allowed = {names.ACTION_RELOAD}
    polkit.authority.delay = 1.0
    outcome: dict[str, subprocess.CompletedProcess[str]] = {}
    caller = threading.Thread(target=lambda: outcome.setdefault("reload", dbus_send(bus.address, "Reload")))
    caller.start()
    wait_until(lambda: polkit.authority.requests, 5, "hxd's polkit request")
    hxd.signal(signal.SIGTERM)
    caller.join(10)
    assert outcome["reload"].returncode == 0, outcome["reload"].stderr
    assert hxd.process is not None and hxd.process.wait(10) == 0


def test_validate_asks_for_its_own_action(bus: PrivateBus, polkit: MockPolkit, start_hxd: StartHxd) -> None:
    start_hxd()
    denied = manager(
        bus.address,
        "Validate",
        "a{sv}",
        "0",
        check=False,
    )
    assert denied.stderr.strip() == f"Call failed: {names.ACTION_VALIDATE}: not authorized (ask an administrator)"
    assert [r["action"] for r in polkit.authority.requests] == [names.ACTION_VALIDATE]


def test_audit_fix_needs_both_actions(bus: PrivateBus, polkit: MockPolkit, start_hxd: StartHxd) -> None:
    start_hxd()
    polkit.authority.allowed = {names.ACTION_AUDIT}
    refused = manager(
        bus.address,
        "Audit",
        "a{sv}",
        "1",
        "fix",
        "b",
        "true",
        check=False,
    )
    assert refused.stderr.strip() == f"Call failed: {names.ACTION_AUDIT_FIX}: not authorized (ask an administrator)"
    assert [r["action"] for r in polkit.authority.requests] == [names.ACTION_AUDIT, names.ACTION_AUDIT_FIX]
