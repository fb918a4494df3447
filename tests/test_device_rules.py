"""The unit's device rules against the /proc/devices listings of real NVIDIA drivers (tests/fixtures/proc-devices).

With ``DevicePolicy=closed`` only what ``DeviceAllow=`` names reaches hxd. ``char-NAME`` is resolved when the unit
starts: systemd reads the "Character devices:" part of /proc/devices and allows every major whose name matches NAME
as a glob (``fnmatch(NAME, name, 0)`` in ``bpf_devices_allow_list_major``, src/core/bpf-devices.c; see
systemd.resource-control(5)). A rule naming a group the driver does not register matches nothing, silently: that is
how ``char-nvidia-frontend`` alone left NVML without its devices on current drivers.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "units" / "hxd.service"
LISTINGS = Path(__file__).resolve().parent / "fixtures" / "proc-devices"


def device_rules(unit: str) -> list[tuple[str, str]]:
    """``(pattern, access)`` of every ``DeviceAllow=char-...`` line."""
    rules = []
    for line in unit.splitlines():
        if line.startswith("DeviceAllow=char-"):
            pattern, _, access = line.removeprefix("DeviceAllow=char-").partition(" ")
            rules.append((pattern, access.strip() or "rwm"))
    return rules


def allowed_majors(listing: str, rules: list[tuple[str, str]]) -> dict[int, set[str]]:
    """What systemd would allow: character major -> access letters, from the listing's names."""
    allowed: dict[int, set[str]] = {}
    character = False
    for line in listing.splitlines():
        if line.endswith("devices:"):
            character = line == "Character devices:"
            continue
        if not character or not line.strip():
            continue
        major, name = line.split(None, 1)
        for pattern, access in rules:
            if fnmatchcase(name, pattern):
                allowed.setdefault(int(major), set()).update(access)
    return allowed


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        # nvidia0 and nvidiactl are 195 (both names), the MIG capabilities 241; never nvidia-uvm (238) and the rest.
        ("nvidia-580.159.04.txt", {195: {"r", "w"}, 241: {"r"}}),
        ("nvidia-frontend.txt", {195: {"r", "w"}}),
    ],
)
def test_the_rules_resolve_to_nvml_s_devices(listing: str, expected: dict[int, set[str]]) -> None:
    rules = device_rules(UNIT.read_text())
    assert allowed_majors((LISTINGS / listing).read_text(), rules) == expected


def test_the_resolution_would_have_caught_the_old_rule() -> None:
    """The one rule hxd shipped before matches nothing on the current driver: the check can fail."""
    current = (LISTINGS / "nvidia-580.159.04.txt").read_text()
    assert allowed_majors(current, [("nvidia-frontend", "rw")]) == {}


def test_the_policy_stays_closed() -> None:
    """Everything else stays denied: closed allows only /dev/null, zero, full, random, urandom, tty, ptmx."""
    assert "DevicePolicy=closed" in UNIT.read_text().splitlines()
