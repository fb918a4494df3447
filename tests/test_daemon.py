"""hxd as a real process on a private bus: Status, properties, sd_notify, signals, reload, clean exit."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from busctl import busctl, call_manager, dbus_send, status
from conftest import StartHxd
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from hxd import __version__
from hxd.bus import names
from hxsandbox.world import PrivateBus, wait_until


def test_status_over_busctl(bus: PrivateBus, start_hxd: StartHxd) -> None:
    hxd = start_hxd()
    reply = status(bus.address)
    assert reply["version"] == __version__
    assert reply["node"] == "sandbox"
    assert reply["state"] == "running"
    assert reply["state_message"] == ""
    assert reply["config_path"] == str(hxd.config)
    assert 0 < reply["uptime_sec"] < 60
    assert set(reply["features"]) == {"validate", "migrate", "telemetry", "smoke", "audit"}
    # Nothing ran yet, so nothing is called ok: the checks say unchecked, a fresh node's migrate ok.
    assert reply["features"] | {"telemetry": "-"} == {
        "validate": "unchecked",
        "migrate": "ok",
        "telemetry": "-",
        "smoke": "unchecked",
        "audit": "unchecked",
    }
    assert reply["feature_details"]["validate"] == "not run since hxd started"
    assert set(reply["timers"]) == {"telemetry", "smoke", "audit"}
    assert reply["timers"]["smoke"].endswith("Z")


def test_properties_carry_the_same_facts(bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd()
    # The first GPU sample runs at start and changes the telemetry feature's state: wait for it to settle.
    wait_until(lambda: status(bus.address)["features"]["telemetry"] != "unchecked")
    reply = status(bus.address)
    for prop, key in [
        ("Version", "version"),
        ("Node", "node"),
        ("State", "state"),
        ("ConfigPath", "config_path"),
        ("StartTime", "start_time"),
        ("Features", "features"),
        ("FeatureDetails", "feature_details"),
        ("Timers", "timers"),
    ]:
        result = busctl(
            bus.address,
            "--json=short",
            "get-property",
            names.BUS_NAME,
            names.MANAGER_PATH,
            names.MANAGER_INTERFACE,
            prop,
        )
        assert json.loads(result.stdout)["data"] == reply[key], prop


def test_disabled_features_have_no_timer(bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd("[smoke]\nenabled = false\n[telemetry]\nenabled = false\n[audit]\nenabled = false\n")
    assert status(bus.address)["timers"] == {}


def test_interval_timer_fires_at_start_then_every_interval(bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd("[telemetry]\ninterval_sec = 1\n")
    first = status(bus.address)["timers"]["telemetry"]
    wait_until(lambda: status(bus.address)["timers"]["telemetry"] != first, timeout=5)


def test_sd_notify_ready_watchdog_stopping(start_hxd: StartHxd) -> None:
    hxd = start_hxd(watchdog_usec=200_000)
    hxd.notify.wait_for("WATCHDOG=1", timeout=2)
    hxd.notify.wait_for("WATCHDOG=1", timeout=2)
    assert hxd.stop() == 0
    hxd.notify.wait_for("STOPPING=1", timeout=2)
    ready = [m for m in hxd.notify.messages if "READY=1" in m.split("\n")]
    assert ready and "STATUS=hxd" in ready[0]


def test_no_watchdog_pings_without_watchdog_usec(start_hxd: StartHxd) -> None:
    hxd = start_hxd()
    time.sleep(0.5)
    assert hxd.stop() == 0
    hxd.notify.wait_for("STOPPING=1", timeout=2)
    assert not any("WATCHDOG=1" in m for m in hxd.notify.messages)


def test_sighup_with_broken_config_keeps_serving(bus: PrivateBus, start_hxd: StartHxd) -> None:
    hxd = start_hxd()
    good = hxd.config.read_text()
    hxd.config.write_text(good + "\n[paths]\nbogus = 1\n")
    hxd.signal(signal.SIGHUP)
    wait_until(lambda: status(bus.address)["state"] == "degraded")
    reply = status(bus.address)
    assert "not valid TOML" in reply["state_message"] or "bogus" in reply["state_message"]
    assert reply["node"] == "sandbox"  # the old config is still in force
    hxd.config.write_text(good.replace('node = "sandbox"', 'node = "renamed"'))
    hxd.signal(signal.SIGHUP)
    wait_until(lambda: status(bus.address)["state"] == "running")
    assert status(bus.address)["node"] == "renamed"
    assert hxd.stop() == 0


def test_reload_with_broken_config_fails_with_typed_error(bus: PrivateBus, start_hxd: StartHxd) -> None:
    hxd = start_hxd()
    hxd.config.write_text(hxd.config.read_text() + "\n[telemetry]\ninterval_sec = 0\n")
    result = dbus_send(bus.address, "Reload")
    assert result.returncode != 0
    assert "org.hxinfra.hxd1.Error.InvalidConfig" in result.stderr
    assert "telemetry.interval_sec" in result.stderr
    assert "Traceback" not in result.stderr
    assert status(bus.address)["state"] == "degraded"


def test_properties_changed_is_emitted(bus: PrivateBus, start_hxd: StartHxd) -> None:
    hxd = start_hxd()

    async def watch() -> dict[str, Any]:
        client = await MessageBus(bus_address=bus.address).connect()
        changes: dict[str, Any] = {}
        got = asyncio.Event()

        def on_message(msg: Message) -> None:
            if msg.message_type == MessageType.SIGNAL and msg.member == "PropertiesChanged":
                changes.update({key: variant.value for key, variant in msg.body[1].items()})
                if "State" in changes:
                    got.set()

        client.add_message_handler(on_message)
        await client.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[f"type='signal',sender='{names.BUS_NAME}',interface='org.freedesktop.DBus.Properties'"],
            )
        )
        hxd.config.write_text("this is not toml")
        hxd.signal(signal.SIGHUP)
        await asyncio.wait_for(got.wait(), 10)
        client.disconnect()
        return changes

    changes = asyncio.run(watch())
    assert changes["State"] == "degraded"
    assert "not valid TOML" in changes["StateMessage"]


def test_sigterm_releases_the_name_and_exits_zero(bus: PrivateBus, start_hxd: StartHxd) -> None:
    hxd = start_hxd()
    assert hxd.stop() == 0
    result = call_manager(bus.address, "Status", check=False)
    assert result.returncode != 0


def test_second_instance_refuses_to_start(bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd()
    second = start_hxd(wait=False)
    assert second.process is not None
    assert second.process.wait(15) == 1
    assert "another process owns the name" in second.log()


def test_broken_config_at_start_exits_1_with_the_key(tmp_path: Path) -> None:
    config = tmp_path / "hxd.toml"
    config.write_text('[ollama]\nurl = "ftp://x"\n')
    result = subprocess.run([sys.executable, "-m", "hxd", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"hxd: {config}: ollama.url: must be an http:// or https:// URL")
    assert "Traceback" not in result.stderr


def test_a_smoke_run_missed_while_down_is_caught_up_once(bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path) -> None:
    """Like Persistent=true: the stamp says the last run was 3 days ago, so one run starts now, not three."""
    state = tmp_path / "hxd0/var/lib/hxd"
    state.mkdir(parents=True)
    (state / "smoke.last").write_text("2026-01-01T00:03:00Z\n")
    start_hxd("[telemetry]\nenabled = false\n[audit]\nenabled = false\n[smoke]\nrandomized_delay_sec = 0\n")
    wait_until(lambda: any(v.startswith("smoke ") for v in status(bus.address)["jobs"].values()))
    wait_until(lambda: (state / "smoke.last").read_text() != "2026-01-01T00:03:00Z\n")
    jobs = [v for v in status(bus.address)["jobs"].values() if v.startswith("smoke ")]
    assert len(jobs) == 1, jobs
    assert status(bus.address)["timers"]["smoke"].endswith("T00:03:00Z")  # then the calendar again
