"""hxctl against a real hxd: status, --json, --offline, and one-line errors with documented exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from busctl import hxctl, status
from conftest import StartHxd

from hxsandbox.world import PrivateBus, write_config


def test_status_json_agrees_with_busctl(bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd()
    result = hxctl("--bus", bus.address, "status", "--json")
    assert result.returncode == 0, result.stderr
    mine, theirs = json.loads(result.stdout), status(bus.address)
    mine.pop("uptime_sec"), theirs.pop("uptime_sec")
    assert mine == theirs


def test_status_human(bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd()
    result = hxctl("--bus", bus.address, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("hxd ") and lines[0].endswith(" on sandbox: running")
    assert any(line.split()[:1] == ["smoke"] for line in lines)


def test_hxd_not_running_is_one_line_with_advice(bus: PrivateBus) -> None:
    result = hxctl("--bus", bus.address, "status")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "hxd is not running" in result.stderr and "systemctl start hxd" in result.stderr


def test_no_bus_is_one_line_with_advice(tmp_path: Path) -> None:
    result = hxctl("--bus", f"unix:path={tmp_path}/nothing", "status")
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "cannot connect" in result.stderr and "--offline" in result.stderr


def test_offline_status_needs_no_bus(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = hxctl("--offline", "--config", str(config), "status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "offline"
    assert json.loads(result.stdout)["node"] == "sandbox"


def test_offline_with_a_broken_config_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "hxd.toml"
    config.write_text("[paths]\nnope = 1\n")
    result = hxctl("--offline", "--config", str(config), "status")
    assert result.returncode == 2
    assert (
        result.stderr
        == f"hxctl: {config}: paths.nope: unknown key; see `hxd dump-config` for the valid keys [InvalidConfig]\n"
    )


def test_help_documents_exit_codes() -> None:
    result = hxctl("--help")
    assert result.returncode == 0
    for code in ("0", "1", "2", "3", "4"):
        assert f"\n  {code}  " in result.stdout
