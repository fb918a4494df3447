"""Telemetry as the daemon drives it: state lines, back-off while NVML is unavailable (logged once, not per
cycle), metrics that parse and never sample, rows for D-Bus, ``hxctl telemetry`` and ``--compare`` (nvidia-smi)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from hxd.cli import telemetry as cli
from hxd.core import engine
from hxd.core.config import TelemetryConfig
from hxd.core.telemetry import compare, recorder, smi
from hxd.core.telemetry.recorder import MAX_BACKOFF_SEC, Telemetry, rows
from hxd.core.telemetry.sampler import Sampler, Unavailable
from hxd.metrics.gpus import metric_lines
from hxsandbox import fakesmi
from hxsandbox.fakenvml import MIB, FakeGpu, FakeNvml, h100

pynvml = importlib.import_module("pynvml")
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, gpus: list[FakeGpu] | None = None, **nvml: Any) -> tuple[Telemetry, FakeNvml, Clock]:
    fake = FakeNvml([h100(0)] if gpus is None else gpus, **nvml)
    clock = Clock()
    telemetry = Telemetry(tmp_path / "gpu" / "telemetry.csv", TelemetryConfig(interval_sec=300), fake, clock=clock)
    return telemetry, fake, clock


def samples(lines: list[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families("\n".join(lines) + "\n")
        for sample in family.samples
    }


def test_states_from_start_to_ok(tmp_path: Path) -> None:
    telemetry, _, _ = make(tmp_path, [h100(index) for index in range(8)])
    assert str(telemetry.feature) == "unchecked: waiting for the first sample" and telemetry.last is None
    assert telemetry.due(0.0)
    sample = telemetry.sample()
    assert sample is not None and telemetry.last is sample
    assert re.fullmatch(rf"ok: 8 GPUs; last sample {ISO}", str(telemetry.feature))


def test_a_lost_gpu_degrades_the_state_and_is_logged_once(tmp_path: Path) -> None:
    gpus = [h100(index) for index in range(8)]
    telemetry, _, _ = make(tmp_path, gpus)
    with structlog.testing.capture_logs() as logs:
        telemetry.sample()
        gpus[3].lost = True
        for _ in range(3):
            telemetry.sample()
        gpus[3].lost = False
        telemetry.sample()
        gpus[3].lost = True
        telemetry.sample()
    assert re.fullmatch(
        rf"degraded: 7 GPUs; lost GPU 3 {gpus[3].uuid}: GPU is lost; last sample {ISO}", str(telemetry.feature)
    )
    events = [entry["event"] for entry in logs]
    assert events == [
        "GPU lost; skipped until it answers again",
        "GPU answers again",
        "GPU lost; skipped until it answers again",
    ]
    lines = (tmp_path / "gpu/telemetry.csv").read_text().splitlines()
    assert len(lines) == 1 + 8 + 3 * 7 + 8 + 7  # header, then only the GPUs that answered


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML: NVML Shared Library Not Found; libnvidia-ml.so.1 was not found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "NVML: Driver Not Loaded; the NVIDIA kernel driver is not loaded"),
    ],
)
def test_unavailable_is_a_state_with_the_reason_and_the_next_try(tmp_path: Path, code: int, reason: str) -> None:
    telemetry, _, _ = make(tmp_path, init_error=code)
    with structlog.testing.capture_logs():
        assert telemetry.sample() is None
    assert str(telemetry.feature).startswith(f"unavailable: {reason}")
    assert re.search(rf"\(next try {ISO}\)$", str(telemetry.feature))
    assert not (tmp_path / "gpu").exists()  # nothing to log


def test_backoff_doubles_from_one_interval_up_to_an_hour(tmp_path: Path) -> None:
    telemetry, fake, clock = make(tmp_path, init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    attempts = []
    with structlog.testing.capture_logs():
        for tick in range(60):  # the daemon's interval timer: every 300 s, give or take a little
            clock.now = 1000.0 + tick * 300 + (0.4 if tick % 2 else -0.4)
            if telemetry.due(clock.now):
                attempts.append(tick)
                telemetry.sample()
    assert attempts == [0, 1, 3, 7, 15, 27, 39, 51]  # waits of 1, 2, 4, 8 intervals, then 12 (3600 s)
    assert MAX_BACKOFF_SEC == 12 * 300
    fake.init_error = None  # the driver is loaded
    with structlog.testing.capture_logs() as logs:
        clock.now += 3600
        assert telemetry.due(clock.now) and telemetry.sample() is not None
    assert [entry["event"] for entry in logs] == ["GPU telemetry available again"]
    assert str(telemetry.feature).startswith("ok: 1 GPU; last sample ")
    clock.now += 300
    assert telemetry.due(clock.now)  # back to every tick


def test_no_log_line_per_cycle_while_unavailable(tmp_path: Path) -> None:
    telemetry, fake, clock = make(tmp_path, init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with structlog.testing.capture_logs() as logs:
        for _ in range(20):
            clock.now += 3600
            telemetry.sample()
        fake.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED  # a new reason is worth one new line
        for _ in range(20):
            clock.now += 3600
            telemetry.sample()
    assert [(entry["event"], entry["log_level"]) for entry in logs] == [
        ("GPU telemetry unavailable; retrying with back-off", "warning"),
        ("GPU telemetry unavailable; retrying with back-off", "warning"),
    ]
    assert "Library Not Found" in logs[0]["reason"] and "Driver Not Loaded" in logs[1]["reason"]


def test_an_unexpected_error_is_a_state_too(tmp_path: Path) -> None:
    telemetry, fake, _ = make(tmp_path)

    def broken() -> int:
        raise RuntimeError("corrupt install")

    fake.nvmlDeviceGetCount = broken  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        assert telemetry.sample() is None
    assert str(telemetry.feature).startswith(
        "unavailable: unexpected RuntimeError while sampling: corrupt install (next"
    )
    assert logs[0]["exc_info"] is not None and fake.refcount == 0


def test_due_is_false_while_an_attempt_hangs(tmp_path: Path) -> None:
    telemetry, fake, _ = make(tmp_path)
    entered, release = threading.Event(), threading.Event()
    count = fake.nvmlDeviceGetCount

    def hanging() -> int:
        entered.set()
        release.wait(10)
        return count()

    fake.nvmlDeviceGetCount = hanging  # type: ignore[method-assign]
    worker = threading.Thread(target=telemetry.sample)
    worker.start()
    assert entered.wait(10)
    assert not telemetry.due(1e9)
    assert str(telemetry.feature) == "unchecked: waiting for the first sample"  # readers never wait for the attempt
    assert len(metric_lines(telemetry.view)) > 0
    release.set()
    worker.join(10)
    assert telemetry.due(1e9) and str(telemetry.feature).startswith("ok: ")


def test_read_now_is_not_logged_and_raises_failed_with_the_reason(tmp_path: Path) -> None:
    telemetry, fake, _ = make(tmp_path)
    assert len(telemetry.read_now().gpus) == 1
    assert not (tmp_path / "gpu").exists()
    assert str(telemetry.feature).startswith("ok: 1 GPU")
    telemetry.close()
    fake.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with structlog.testing.capture_logs() as logs, pytest.raises(Unavailable, match=r"^NVML: Driver Not Loaded; "):
        telemetry.read_now()
    assert str(telemetry.feature).startswith("unavailable: NVML: Driver Not Loaded; ")
    assert logs == []  # the caller has the error; hxctl --offline prints it once, and nothing on stdout


async def test_concurrent_callers_share_one_sample(tmp_path: Path) -> None:
    telemetry, fake, _ = make(tmp_path, hung=True)
    before = threading.active_count()
    readers = [asyncio.ensure_future(telemetry.read()) for _ in range(100)]
    await asyncio.sleep(0.1)
    assert fake.hung_calls == 1 and threading.active_count() <= before + 1
    fake.release()
    samples = await asyncio.gather(*readers)
    assert all(sample is samples[0] for sample in samples)
    assert not (tmp_path / "gpu").exists()  # callers' samples are not logged


async def test_a_hung_nvml_holds_one_thread_and_callers_get_failed_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder, "SAMPLE_TIMEOUT_SEC", 0.5)
    telemetry, fake, _ = make(tmp_path, hung=True)
    before = threading.active_count()
    outcomes = await asyncio.gather(*(telemetry.read() for _ in range(2000)), return_exceptions=True)
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes)
    assert re.fullmatch(
        r"NVML did not answer within 0\.5 s \(the sample in progress was asked for [01] s ago; no other starts "
        r"until it returns\); check `nvidia-smi` and `dmesg` for a hung driver",
        str(outcomes[0]),
    )
    assert threading.active_count() <= before + 1 and fake.hung_calls == 1
    with pytest.raises(Unavailable, match=r"^NVML did not answer within 0\.5 s"):
        telemetry.read_now()  # a blocking caller too, and still no second thread
    assert threading.active_count() <= before + 1 and fake.hung_calls == 1
    fake.release()  # the driver comes back: the hung sample ends, and the next caller gets a fresh one
    assert len((await telemetry.read()).gpus) == 1


async def test_close_answers_waiting_callers_at_once(tmp_path: Path) -> None:
    telemetry, fake, _ = make(tmp_path, hung=True)
    readers = [asyncio.ensure_future(telemetry.read()) for _ in range(10)]
    await asyncio.sleep(0.1)
    telemetry.close()
    async with asyncio.timeout(1):
        outcomes = await asyncio.gather(*readers, return_exceptions=True)
    assert {str(outcome) for outcome in outcomes} == {"hxd is stopping; no sample was taken"}
    assert fake.refcount == 0  # NVML was never initialized: the hung call was nvmlInit
    fake.release()


async def test_the_timer_waits_behind_a_callers_sample_in_the_same_thread(tmp_path: Path) -> None:
    telemetry, fake, _ = make(tmp_path, hung=True)
    before = threading.active_count()
    caller = asyncio.ensure_future(telemetry.read())
    await asyncio.sleep(0.1)
    assert telemetry.due(0.0)  # a caller's sample does not hold up the timer ...
    timer = asyncio.ensure_future(telemetry.read(record=True))
    await asyncio.sleep(0.1)
    assert not telemetry.due(0.0)  # ... but its own queued sample does: ticks are skipped, never queued
    assert threading.active_count() <= before + 1 and fake.hung_calls == 1
    fake.release()
    first, logged = await asyncio.gather(caller, timer)
    assert first is not logged and first.time <= logged.time
    lines = (tmp_path / "gpu/telemetry.csv").read_text().splitlines()
    assert len(lines) == 2  # the header and the timer's sample, not the caller's
    assert telemetry.due(0.0)


def test_metrics_parse_in_base_units_with_gpu_labels(tmp_path: Path) -> None:
    gpus = [h100(index) for index in range(8)]
    gpus[5].mig = True
    telemetry, fake, _ = make(tmp_path, gpus)
    with structlog.testing.capture_logs():
        telemetry.sample()
        gpus[7].lost = True
        telemetry.sample()
    calls = fake.calls
    lines = metric_lines(telemetry.view)
    assert fake.calls == calls  # a scrape serves the last sample; it never calls NVML
    values = samples(lines)
    labels = (("index", "0"), ("name", "NVIDIA H100 80GB HBM3"), ("uuid", gpus[0].uuid))
    assert values[("hxd_gpu_memory_used_bytes", labels)] == 19818 * MIB
    assert values[("hxd_gpu_memory_reserved_bytes", labels)] == 478 * MIB
    assert values[("hxd_gpu_power_draw_watts", labels)] == 631.95
    assert values[("hxd_gpu_enforced_power_limit_watts", labels)] == 700.0
    assert values[("hxd_gpu_sm_clock_hertz", labels)] == 1.98e9
    assert values[("hxd_gpu_utilization_ratio", labels)] == 1.0
    assert values[("hxd_gpu_memory_utilization_ratio", labels)] == 0.11
    assert values[("hxd_gpu_temperature_celsius", labels)] == 59
    assert values[("hxd_gpu_ecc_corrected_errors_total", labels)] == 0
    assert values[("hxd_gpu_mig_enabled", labels)] == 0
    assert values[("hxd_telemetry_up", ())] == 1 and values[("hxd_telemetry_log_writable", ())] == 1
    lost = (("index", "7"), ("name", "NVIDIA H100 80GB HBM3"), ("uuid", gpus[7].uuid))
    assert values[("hxd_gpu_up", lost)] == 0 and values[("hxd_gpu_up", labels)] == 1
    assert ("hxd_gpu_temperature_celsius", lost) not in values
    assert not any(name == "hxd_gpu_fan_speed_ratio" for name, _ in values)  # [N/A] on every H100: no series
    mig = (("index", "5"), ("name", "NVIDIA H100 80GB HBM3"), ("uuid", gpus[5].uuid))
    assert values[("hxd_gpu_mig_enabled", mig)] == 1 and ("hxd_gpu_utilization_ratio", mig) not in values
    families = {family.name: family.type for family in text_string_to_metric_families("\n".join(lines) + "\n")}
    assert families["hxd_gpu_ecc_corrected_errors"] == "counter" and families["hxd_gpu_memory_used_bytes"] == "gauge"


def test_metrics_while_unavailable_have_no_gpu_series(tmp_path: Path) -> None:
    telemetry, fake, clock = make(tmp_path)
    telemetry.sample()
    telemetry.close()
    fake.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with structlog.testing.capture_logs():
        clock.now += 300
        telemetry.sample()
    values = samples(metric_lines(telemetry.view))
    assert values[("hxd_telemetry_up", ())] == 0
    assert ("hxd_telemetry_last_sample_timestamp_seconds", ()) in values
    assert not any(name.startswith("hxd_gpu_") for name, _ in values)
    assert telemetry.last is not None  # the last good sample is still there for D-Bus, with its time


def test_rows_are_the_csv_cells_by_field_name(tmp_path: Path) -> None:
    gpus = [h100(0), h100(1)]
    telemetry, _, _ = make(tmp_path, gpus)
    with structlog.testing.capture_logs():
        telemetry.sample()
        gpus[1].lost = True
        sample = telemetry.sample()
    assert sample is not None
    ok, lost = rows(sample)
    assert list(ok) == [*smi.NAMES, "state"] and ok["state"] == "ok" and ok["memory.used"] == "19818 MiB"
    assert smi.csv_row(ok) == (tmp_path / "gpu/telemetry.csv").read_text().splitlines()[-1]
    assert lost == {
        "timestamp": ok["timestamp"],
        "index": "1",
        "uuid": gpus[1].uuid,
        "name": gpus[1].name,
        "driver_version": "590.48.01",
        "state": "lost: GPU is lost",
    }
    assert all(isinstance(value, str) for row in (ok, lost) for value in row.values())


def hxctl_telemetry(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--offline", action="store_true")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--bus")
    cli.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


def test_hxctl_telemetry_offline_table_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "hxd.toml"
    config.write_text(f'[paths]\nlog_dir = "{tmp_path}/log"\n')
    gpus = [h100(0), h100(1)]
    gpus[1].fan_pct = 45
    monkeypatch.setattr(engine, "Telemetry", lambda path, settings: Telemetry(path, settings, FakeNvml(gpus)))
    args = hxctl_telemetry(["--offline", "--config", str(config), "telemetry"])
    assert args.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"driver 590\.48\.01, sampled {ISO}", out[0])
    headings = "GPU NAME PSTATE TEMP C UTIL MEM USED MEM TOTAL POWER LIMIT SM CLOCK FAN MIG STATE"
    assert out[1].split() == headings.split()
    assert "19818 MiB" in out[2] and out[3].split()[-3:] == ["%", "Disabled", "ok"]
    assert not (tmp_path / "log").exists()  # a look is not a sample for the log
    args = hxctl_telemetry(["--offline", "--config", str(config), "telemetry", "--json"])
    gpus[0].lost = True
    with structlog.testing.capture_logs() as logs:
        assert args.run(args) == 1  # a lost GPU is a problem found
    assert logs == []
    shown = json.loads(capsys.readouterr().out)
    assert [gpu["state"] for gpu in shown] == ["ok", "lost: GPU is lost"]


def compare_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], nvml: FakeNvml, *smi_args: str
) -> tuple[int, str, str]:
    """``hxctl --offline telemetry --compare`` in this process on ``nvml``, against hxsandbox.fakesmi with
    ``smi_args``: exit status, stdout, stderr."""
    config = tmp_path / "hxd.toml"
    config.write_text(f'[paths]\nlog_dir = "{tmp_path}/log"\n')
    monkeypatch.setattr(engine, "Telemetry", lambda path, settings: Telemetry(path, settings, nvml))
    smi_path = str(tmp_path / "none") if smi_args == ("missing",) else str(fakesmi.install(tmp_path, *smi_args))
    args = hxctl_telemetry(["--offline", "--config", str(config), "telemetry", "--compare", "--nvidia-smi", smi_path])
    code = args.run(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fakesmi_prints_the_captured_h100_row() -> None:
    """The fake nvidia-smi against the real capture in docs/gpu-telemetry.md, "CSV format": its columns, in its
    order, print the same cells for the same GPU (but the timestamp, and the uuid the docs shorten)."""
    page = (ROOT / "docs/gpu-telemetry.md").read_text()
    header, row = re.search(r"```\n  (timestamp, .*)\n  (.*)\n  ```", page).groups()  # type: ignore[union-attr]
    names = [cell.split(" [")[0] for cell in header.split(", ")]
    printed = fakesmi.render([h100(0)], ",".join(names)).splitlines()
    assert printed[0] == header
    expected, ours = row.split(", "), printed[1].split(", ")
    assert [c for n, c in zip(names, ours, strict=True) if n not in ("timestamp", "uuid")] == [
        c for n, c in zip(names, expected, strict=True) if n not in ("timestamp", "uuid")
    ]
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}", ours[0])


def test_compare_agrees_within_the_tolerances(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nvml = FakeNvml([h100(0), h100(1)])
    changes = ["--set", "power_mw=625000", "--set", "temperature_c=60", "--set", "pstate=2"]
    code, out, _ = compare_offline(tmp_path, monkeypatch, capsys, nvml, "--gpus", "2", *changes)
    assert code == 0, out
    assert out.endswith("2 GPU(s): hxd agrees with nvidia-smi\n") and "(not compared)" in out
    assert re.search(r"\n  pstate +P2 +P0 +\(not compared\)\n", out)


def test_compare_reports_each_difference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu = h100(0)
    gpu.errors["nvmlDeviceGetFanSpeed"] = pynvml.NVML_ERROR_NO_PERMISSION  # refused inside: nvidia-smi prints [N/A]
    changes = ["--set", "temperature_c=62", "--set", "power_limit_mw=650000", "--set", "clocks_event_reasons=4"]
    code, out, _ = compare_offline(tmp_path, monkeypatch, capsys, FakeNvml([gpu]), *changes)
    assert code == 1
    marked = {line.split("  ")[1].strip(): line.split("<- ")[1] for line in out.splitlines() if "<-" in line}
    assert marked == {
        "temperature.gpu": "differs by 3, more than 2",
        "power.limit [W]": "differs",
        "fan.speed [%]": "differs",  # a token against a token: [N/A] outside, [Insufficient Permissions] inside
    }
    assert re.search(r"power\.limit \[W\] +650\.00 W +700\.00 W +<- differs\n", out)
    assert out.endswith("1 GPU(s): 3 difference(s)\n")


def test_a_field_refused_inside_is_flagged_as_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gpu = h100(0)
    gpu.errors["nvmlDeviceGetPowerUsage"] = pynvml.NVML_ERROR_UNKNOWN  # a system call refused under the filter
    code, out, _ = compare_offline(tmp_path, monkeypatch, capsys, FakeNvml([gpu]))
    assert code == 1
    assert re.search(r"power\.draw \[W\] +631\.95 W +\[Unknown Error\] +<- differs: hxd's NVML call was refused", out)


def test_compare_with_a_gpu_missing_or_lost_on_one_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gpus = [h100(0), h100(1), h100(2)]
    gpus[1].lost = True
    code, out, _ = compare_offline(tmp_path, monkeypatch, capsys, FakeNvml(gpus), "--gpus", "2")
    assert code == 1
    lost = "GPU 1 GPU-00000001-5f2c-4a1e-9b7d-0123456789ab (NVIDIA H100 80GB HBM3)\n  lost: GPU is lost in hxd's sample"
    assert f"\n{lost}\n" in out  # lost before hxd read its uuid: matched by index
    assert "\nGPU 2 GPU-00000002-5f2c-4a1e-9b7d-0123456789ab: in hxd's sample, not in nvidia-smi's\n" in out
    assert out.endswith("2 GPU(s): 2 difference(s)\n")


def test_compare_without_nvidia_smi_or_nvml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = compare_offline(tmp_path, monkeypatch, capsys, FakeNvml([h100(0)]), "missing")
    assert (code, out) == (7, "")
    assert err.startswith(f"hxctl: nothing to compare with: {tmp_path}/none: not found; ")
    missing = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    code, out, err = compare_offline(tmp_path, monkeypatch, capsys, missing, "--no-driver")
    assert code == 7 and err.splitlines()[1] == (
        "hxctl: this process cannot sample either: NVML: NVML Shared Library Not Found; "
        "libnvidia-ml.so.1 was not found; install the NVIDIA driver"
    )
    code, out, err = compare_offline(tmp_path, monkeypatch, capsys, missing)
    assert (code, err) == (6, "")
    assert out == (  # no hxd.service to suspect: this process has no sandbox
        "this process cannot sample the GPUs, but nvidia-smi can (1 GPU): NVML: NVML Shared Library Not Found; "
        "libnvidia-ml.so.1 was not found; install the NVIDIA driver\n"
    )


@pytest.mark.parametrize(
    ("error", "first"),
    [
        (pynvml.NVML_ERROR_UNKNOWN, compare.DEVICES),
        (pynvml.NVML_ERROR_NO_PERMISSION, compare.PERMISSIONS),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, compare.PRIVATE_DEVICES),
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, compare.MDWE),
        (pynvml.NVML_ERROR_TIMEOUT, compare.DEVICES),  # no rule: every suspect, the device rules first
    ],
)
def test_diagnosis_from_the_reason_hxd_gives(error: int, first: compare.Suspect) -> None:
    """The reason as the sampler words it for each NVML error nvmlInit can raise, to the setting suspected first."""
    with pytest.raises(Unavailable) as caught:
        Sampler(FakeNvml(init_error=error)).sample()
    diagnosis = compare.diagnose(str(caught.value))
    assert diagnosis.suspects[0] == first
    lines = compare.explain(diagnosis)
    assert lines[1] == f"likely at fault: {first.setting} in hxd.service: {first.why}"
    assert lines[2] == f"  confirm: {first.confirm}"


def test_reasons_no_setting_explains(tmp_path: Path) -> None:
    hung = recorder._hung(recorder._Flight(record=False))
    for reason, advice in [
        ("cannot import pynvml (No module named 'pynvml'); install nvidia-ml-py", "reinstall the hxd package"),
        (f"NVML: {pynvml.NVMLError(pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)}", "`systemctl restart hxd`"),
        (str(hung), "`systemctl restart hxd`"),
    ]:
        diagnosis = compare.diagnose(reason)
        assert diagnosis.suspects == () and diagnosis.meaning.startswith("not a sandbox setting: ")
        assert diagnosis.meaning.endswith(advice)
