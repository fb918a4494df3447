"""hxctl against a real hxd: status, --json, --offline, and one-line errors with documented exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from busctl import hxctl, hxctl_command, hxctl_merged, status
from conftest import StartHxd

from hxsandbox import fakesmi
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
    for code in ("0", "1", "2", "3", "4", "141"):
        assert f"\n  {code}  " in result.stdout


def test_a_reader_that_stops_early_ends_hxctl_quietly(tmp_path: Path) -> None:
    """``hxctl env big.env | head -1``: head exits after a line while hxctl still writes; hxctl exits as coreutils'
    tools do, 141 (128 + SIGPIPE) and nothing on stderr."""
    big = tmp_path / "big.env"
    big.write_text("".join(f"KEY_{n}=value-{n}\n" for n in range(50_000)))  # far more than a pipe holds
    hxctl_run = subprocess.Popen(hxctl_command("env", str(big)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-1"], stdin=hxctl_run.stdout, capture_output=True, text=True, timeout=30)
    assert hxctl_run.stdout is not None and hxctl_run.stderr is not None
    hxctl_run.stdout.close()  # head holds the only reading end now, and head has exited
    assert head.stdout == "KEY_0=value-0\n"
    assert hxctl_run.wait(30) == 141
    assert hxctl_run.stderr.read() == b""


def test_a_reader_gone_before_the_first_line_ends_hxctl_quietly(bus: PrivateBus, start_hxd: StartHxd) -> None:
    """``hxctl status | head -3`` with head already gone when hxctl writes (status fits in one write)."""
    start_hxd()
    reading, writing = os.pipe()
    os.close(reading)
    try:
        result = subprocess.run(hxctl_command("--bus", bus.address, "status"), stdout=writing, stderr=subprocess.PIPE)
    finally:
        os.close(writing)
    assert (result.returncode, result.stderr) == (141, b"")


def test_global_options_after_the_command(bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path) -> None:
    """As with systemctl and busctl, --bus, --offline and --config may follow the command, and mix with its own."""
    start_hxd()
    online = hxctl("status", "--json", "--bus", bus.address)
    assert online.returncode == 0, online.stderr
    assert json.loads(online.stdout)["state"] == "running"
    config = write_config(tmp_path)
    offline = hxctl("status", "--offline", "--config", str(config), "--json")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["state"] == "offline"
    env = tmp_path / "ollama.env"
    env.write_text("OLLAMA_HOST=127.0.0.1:11434\n")
    validated = hxctl("--offline", "validate", str(env), "--json", "--config", str(config))
    assert validated.returncode in (0, 1), validated.stderr
    assert json.loads(validated.stdout)["file"] == str(env)
    assert "--offline" in hxctl("status", "--help").stdout


def test_an_option_after_the_command_wins_over_the_same_before_it(bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd()
    result = hxctl("--bus", "unix:path=/nonexistent", "status", "--json", "--bus", bus.address)
    assert result.returncode == 0, result.stderr


def test_host_options_follow_fleet_only(tmp_path: Path) -> None:
    missing = tmp_path / "nodes.txt"
    after_fleet = hxctl("fleet", "status", "--hosts-file", str(missing))
    assert after_fleet.returncode == 2 and f"{missing}: cannot read" in after_fleet.stderr
    after_status = hxctl("status", "--host", "llm-01")
    assert after_status.returncode == 2 and "unrecognized arguments: --host" in after_status.stderr


def test_a_malformed_bus_address_is_a_usage_error() -> None:
    for address in ("garbage", "unix:foo=bar"):
        result = hxctl("--bus", address, "status")
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and f"the bus {address!r} is not a D-Bus address (" in result.stderr
        assert "unix:path=" in result.stderr  # what a valid one looks like


@pytest.fixture
def without_nvml(tmp_path: Path) -> dict[str, str]:
    """An environment in which pynvml cannot be imported, so NVML is missing whatever GPU this machine has."""
    shadow = tmp_path / "without-nvml"
    shadow.mkdir()
    (shadow / "pynvml.py").write_text('raise ImportError("no NVIDIA driver on this node")\n')
    return {"PYTHONPATH": str(shadow)}


def test_telemetry_json_without_nvml_is_an_empty_list(
    bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path, without_nvml: dict[str, str]
) -> None:
    """--json prints JSON even when there is no sample: ``[]``, the reason on stderr, exit status 1."""
    start_hxd(extra_env=without_nvml)
    online = hxctl("--bus", bus.address, "telemetry", "--json")
    offline = hxctl("--offline", "--config", str(write_config(tmp_path)), "telemetry", "--json", env=without_nvml)
    for result in (online, offline):
        assert (result.returncode, result.stdout) == (1, "[]\n"), result.stderr
        assert result.stderr.startswith("hxctl: cannot import pynvml (no NVIDIA driver on this node); install ")
        assert result.stderr.count("\n") == 1


def fake_nvml(*options: str) -> tuple[str, ...]:
    """hxd's interpreter arguments to run it on hxsandbox.fakenvml (two captured H100s) with ``options``."""
    return ("-m", "hxsandbox.fakenvml", "--gpus", "2", *options, "--")


def test_telemetry_compare_agrees(bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path) -> None:
    """hxd on the fake NVML against a fake nvidia-smi printing the same two GPUs under load: every field agrees
    within the tolerances (power 625.00 W against hxd's 631.95 W; temperature 60 against 59; pstate not compared)."""
    start_hxd(program=fake_nvml())
    smi = fakesmi.install(tmp_path / "bin", "--gpus", "2", "--set", "power_mw=625000", "--set", "temperature_c=60")
    result = hxctl("--bus", bus.address, "telemetry", "--compare", "--nvidia-smi", str(smi))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("2 GPU(s): hxd agrees with nvidia-smi")
    assert re.search(r"power\.draw \[W\] +625\.00 W +631\.95 W\n", result.stdout)
    assert re.search(r"timestamp +\d{4}/\d\d/\d\d [\d:.]+ +\d{4}-\d\d-\d\dT[\d:]+Z +\(not compared\)", result.stdout)


def test_telemetry_compare_names_the_field_and_both_values(
    bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path
) -> None:
    start_hxd(program=fake_nvml())
    smi = fakesmi.install(tmp_path / "bin", "--gpus", "2", "--set", "power_mw=520000")
    result = hxctl("--bus", bus.address, "telemetry", "--compare", "--nvidia-smi", str(smi))
    assert result.returncode == 1, result.stdout + result.stderr
    marked = [line for line in result.stdout.splitlines() if "<-" in line]
    assert len(marked) == 2  # power.draw of each GPU, nothing else
    assert all(
        re.fullmatch(r" +power\.draw \[W\] +520\.00 W +631\.95 W +<- differs by 111\.95, more than 63\.195", m)
        for m in marked
    )
    assert result.stdout.rstrip().endswith("2 GPU(s): 2 difference(s)")


def test_telemetry_compare_names_the_setting_when_nvml_is_denied_inside(
    bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path
) -> None:
    """NVML refused inside hxd (nvmlInit: Unknown Error, what a device cgroup's EPERM gives) while nvidia-smi works
    outside: exit 6, the device rules named first, with how to confirm them."""
    start_hxd(program=fake_nvml("--init-error", "999"))
    smi = fakesmi.install(tmp_path / "bin", "--gpus", "2")
    result = hxctl("--bus", bus.address, "telemetry", "--compare", "--nvidia-smi", str(smi))
    assert result.returncode == 6, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "hxd cannot sample the GPUs, but nvidia-smi can (2 GPUs): NVML: Unknown Error"
    assert lines[1] == "meaning: NVML could not open or use a device node"
    assert lines[2].startswith("likely at fault: DevicePolicy=closed with DeviceAllow= in hxd.service: ")
    assert "grep nvidia /proc/devices" in lines[3] and "DevicePolicy=auto" in lines[3]
    assert [line.split(":")[1].strip() for line in lines[4::2]] == [
        "SystemCallFilter= in hxd.service",
        "MemoryDenyWriteExecute=yes in hxd.service",
        "ProcSubset=pid / ProtectProc=invisible in hxd.service",
    ]


def test_telemetry_compare_without_nvidia_smi(bus: PrivateBus, start_hxd: StartHxd, tmp_path: Path) -> None:
    start_hxd(program=fake_nvml())
    missing = hxctl("--bus", bus.address, "telemetry", "--compare", "--nvidia-smi", str(tmp_path / "none"))
    no_driver = hxctl(
        "--bus", bus.address, "telemetry", "--compare", "--nvidia-smi", str(fakesmi.install(tmp_path, "--no-driver"))
    )
    assert (missing.returncode, missing.stdout) == (7, "")
    assert (
        missing.stderr == f"hxctl: nothing to compare with: {tmp_path}/none: not found; install the NVIDIA "
        "driver's utilities or pass --nvidia-smi\n"
    )
    assert (no_driver.returncode, no_driver.stdout) == (7, "")
    assert no_driver.stderr.startswith("hxctl: nothing to compare with: ") and fakesmi.NO_DRIVER in no_driver.stderr
    assert "failed with exit status 9" in no_driver.stderr


def test_telemetry_compare_and_json_are_exclusive() -> None:
    result = hxctl("telemetry", "--compare", "--json")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


def test_stdout_and_stderr_in_one_pipe_keep_their_order(tmp_path: Path) -> None:
    """fleet diff prints a line per node on stdout, then its verdict on stderr: merged (2>&1), in that order."""
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host *\n  Port 1\n")  # nothing listens on port 1: refused at once
    merged = hxctl_merged("--host", "127.0.0.1", "fleet", "diff", "--ssh-config", str(ssh_config), "--timeout", "5")
    assert merged.returncode == 1
    node, verdict = merged.stdout.splitlines()
    assert node.startswith("127.0.0.1: unreachable: ") and verdict.startswith("fleet: 0 differences, not aligned")


def test_no_jobs(bus: PrivateBus, start_hxd: StartHxd) -> None:
    start_hxd()
    assert hxctl("--bus", bus.address, "jobs").stdout == "no jobs\n"
    assert hxctl("--bus", bus.address, "jobs", "--json").stdout == "[]\n"
