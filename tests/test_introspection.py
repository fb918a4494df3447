"""dbus/org.hxinfra.hxd1.xml is the documented API: the live daemon must match it exactly."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from busctl import busctl, call_manager
from conftest import StartHxd

from hxd.bus import names
from hxsandbox.world import PrivateBus

SHIPPED = Path(__file__).resolve().parents[1] / "dbus/org.hxinfra.hxd1.xml"


def interfaces(xml: str) -> dict[str, list[tuple[str, ...]]]:
    """hxd's own interfaces as comparable tuples: members with their args, properties with type and access."""
    result: dict[str, list[tuple[str, ...]]] = {}
    for interface in ET.fromstring(xml).iter("interface"):
        name = interface.get("name", "")
        if not name.startswith(names.BUS_NAME):
            continue
        members: list[tuple[str, ...]] = []
        for element in interface:
            args = tuple(
                f"{a.get('direction', 'out')}:{a.get('type')}:{a.get('name', '')}" for a in element.iter("arg")
            )
            annotations = tuple(f"{a.get('name')}={a.get('value')}" for a in element.iter("annotation"))
            members.append(
                (
                    element.tag,
                    element.get("name", ""),
                    element.get("type", ""),
                    element.get("access", ""),
                    *args,
                    *annotations,
                )
            )
        result[name] = sorted(members)
    return result


def strip_doctype(text: str) -> str:
    return text.split(">", 1)[1] if text.startswith("<!DOCTYPE") else text


def introspect(address: str, path: str) -> dict[str, list[tuple[str, ...]]]:
    reply = busctl(
        address, "--json=short", "call", names.BUS_NAME, path, "org.freedesktop.DBus.Introspectable", "Introspect"
    )
    return interfaces(strip_doctype(json.loads(reply.stdout)["data"][0]))


def test_live_introspection_matches_the_shipped_xml(bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd()
    shipped = interfaces(strip_doctype(SHIPPED.read_text()))
    assert set(shipped) == {names.MANAGER_INTERFACE, names.JOB_INTERFACE}
    live = introspect(bus.address, names.MANAGER_PATH)
    assert live == {names.MANAGER_INTERFACE: shipped[names.MANAGER_INTERFACE]}
    # A job to look at: a smoke run with no Ollama to ask fails soon and stays on the bus.
    [job] = call_manager(bus.address, "RunSmoke", "a{sv}", "0")
    assert introspect(bus.address, job) == {names.JOB_INTERFACE: shipped[names.JOB_INTERFACE]}


def test_comparison_notices_a_difference() -> None:
    """Guard against a comparison that always passes."""
    shipped = SHIPPED.read_text()
    changed = shipped.replace('<property name="State" type="s"', '<property name="State" type="u"')
    assert changed != shipped
    assert interfaces(strip_doctype(changed)) != interfaces(strip_doctype(shipped))
