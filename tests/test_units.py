"""The shipped units, checked with systemd's own tools: syntax (systemd-analyze verify) and exposure score."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

UNITS = Path(__file__).resolve().parents[1] / "units"
TARGET_EXPOSURE = 2.0


def test_units_verify(tmp_path: Path) -> None:
    """ExecStart points at this checkout's hxd, since /usr/bin/hxd exists only once the package is installed."""
    hxd = shutil.which("hxd", path=str(Path(sys.executable).parent))
    assert hxd, "hxd is not installed in the venv"
    for unit in ("hxd.service", "hxd.socket"):
        (tmp_path / unit).write_text((UNITS / unit).read_text().replace("/usr/bin/hxd", hxd))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "hxd.service"), str(tmp_path / "hxd.socket")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_exposure_is_at_most_the_target() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNITS / "hxd.service")],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for hxd.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= TARGET_EXPOSURE, result.stdout


def test_unit_and_bus_files_agree() -> None:
    service = (UNITS / "hxd.service").read_text()
    activation = (UNITS.parent / "dbus/org.hxinfra.hxd1.service").read_text()
    assert "BusName=org.hxinfra.hxd1" in service
    assert "Alias=dbus-org.hxinfra.hxd1.service" in service
    assert "SystemdService=dbus-org.hxinfra.hxd1.service" in activation
    assert "User=hxd" in service and 'u hxd - "hxd daemon"' in (UNITS / "sysusers.d/hxd.conf").read_text()


def test_every_polkit_action_is_shipped_with_hxd_as_owner() -> None:
    """polkitd answers hxd (a non-root account) only about actions whose owner annotation names it."""
    import xml.etree.ElementTree as ET

    from hxsandbox.polkit import HXD_ACTIONS

    policy = ET.parse(UNITS.parent / "dbus/org.hxinfra.hxd1.policy").getroot()
    actions = {a.get("id"): a for a in policy.iter("action")}
    assert set(actions) >= HXD_ACTIONS, HXD_ACTIONS - set(actions)
    for action_id, action in actions.items():
        owners = [a.text for a in action.iter("annotate") if a.get("key") == "org.freedesktop.policykit.owner"]
        assert owners == ["unix-user:hxd"], action_id
