"""The CSV log on real file systems: header once, mode 0640, torn lines, rotation by size and age with retention,
and a full or read-only disk (a 64 KiB tmpfs) as a state of Telemetry, never an exception."""

from __future__ import annotations

import csv
import errno
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from hxd.core.config import TelemetryConfig
from hxd.core.logfile import AppendLog
from hxd.core.telemetry import smi
from hxd.core.telemetry.recorder import Telemetry
from hxd.metrics.gpus import metric_lines
from hxsandbox.fakenvml import FakeNvml, h100

T0 = datetime(2026, 7, 14, 8, 0, tzinfo=UTC)
HEADER = "time, value"


def row(moment: datetime, value: int = 0) -> str:
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%SZ')}, {value}"


def make_log(tmp_path: Path, max_bytes: int = 1 << 20, days: int = 7, keep: int = 3) -> AppendLog:
    return AppendLog(tmp_path / "gpu" / "telemetry.csv", max_bytes, keep, header=HEADER, max_age=timedelta(days=days))


def test_header_once_per_file(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.append([row(T0, 1), row(T0, 2)], T0)
    log.append([row(T0, 3)], T0)
    assert log.path.read_text() == f"{HEADER}\n{row(T0, 1)}\n{row(T0, 2)}\n{row(T0, 3)}\n"


def test_file_mode_0640_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        make_log(tmp_path).append([row(T0)], T0)
    finally:
        os.umask(old)
    assert (tmp_path / "gpu/telemetry.csv").stat().st_mode & 0o7777 == 0o640
    assert (tmp_path / "gpu").stat().st_mode & 0o7777 == 0o750


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.append([row(T0, 1)], T0)
    with log.path.open("a") as file:
        file.write("2026-07-14T08:05:00Z, 4")  # the crash: no newline
    with structlog.testing.capture_logs() as logs:
        log.append([row(T0, 2)], T0)
    assert log.path.read_text() == f"{HEADER}\n{row(T0, 1)}\n{row(T0, 2)}\n"
    assert [entry["event"] for entry in logs] == ["cut a torn last line from the log"]
    assert logs[0]["bytes"] == len("2026-07-14T08:05:00Z, 4")


def test_a_file_that_is_all_torn_line_starts_over(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.path.parent.mkdir()
    log.path.write_text("time, va")  # the header itself was torn
    with structlog.testing.capture_logs():
        log.append([row(T0)], T0)
    assert log.path.read_text() == f"{HEADER}\n{row(T0)}\n"


def test_rotation_by_size_keeps_the_newest_files(tmp_path: Path) -> None:
    log = make_log(tmp_path, max_bytes=200, keep=2)
    with structlog.testing.capture_logs():
        for value in range(40):
            log.append([row(T0, value)], T0)
    files = sorted(path.name for path in log.path.parent.iterdir())
    assert files == ["telemetry.csv", "telemetry.csv.1", "telemetry.csv.2"]
    values = []
    for name in ("telemetry.csv.2", "telemetry.csv.1", "telemetry.csv"):
        text = (log.path.parent / name).read_text()
        assert len(text) <= 200 and text.startswith(f"{HEADER}\n")
        values += [int(line.split(", ")[1]) for line in text.splitlines()[1:]]
    assert values == list(range(40 - len(values), 40))  # contiguous, newest last: nothing lost between files


def test_rotation_by_age_of_the_first_row(tmp_path: Path) -> None:
    log = make_log(tmp_path, days=7)
    log.append([row(T0)], T0)
    almost = T0 + timedelta(days=7) - timedelta(seconds=1)
    log.append([row(almost)], almost)
    assert not (log.path.parent / "telemetry.csv.1").exists()
    week = T0 + timedelta(days=7)
    with structlog.testing.capture_logs():
        log.append([row(week)], week)
    assert (log.path.parent / "telemetry.csv.1").read_text() == f"{HEADER}\n{row(T0)}\n{row(almost)}\n"
    assert log.path.read_text() == f"{HEADER}\n{row(week)}\n"


def test_a_file_with_other_columns_is_rotated_away(tmp_path: Path) -> None:
    log = make_log(tmp_path)
    log.path.parent.mkdir()
    log.path.write_text("time, old_value\n2026-07-01T00:00:00Z, 1\n")
    with structlog.testing.capture_logs():
        log.append([row(T0)], T0)
    assert (log.path.parent / "telemetry.csv.1").read_text().startswith("time, old_value\n")
    assert log.path.read_text() == f"{HEADER}\n{row(T0)}\n"


def test_a_smaller_keep_removes_the_extra_files(tmp_path: Path) -> None:
    log = make_log(tmp_path, max_bytes=60, keep=5)
    with structlog.testing.capture_logs():
        for value in range(12):
            log.append([row(T0, value)], T0)
        assert len(list(log.path.parent.iterdir())) == 6
        make_log(tmp_path, max_bytes=60, keep=2).append([row(T0, 99)], T0)
    assert sorted(path.name for path in log.path.parent.iterdir()) == [
        "telemetry.csv",
        "telemetry.csv.1",
        "telemetry.csv.2",
    ]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: small enough to fill in a moment."""
    assert os.geteuid() == 0, "mounting a tmpfs needs root (run the tests as root, as README.md and CI do)"
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def telemetry_on(directory: Path, gpus: int = 8) -> tuple[Telemetry, Path]:
    path = directory / "gpu" / "telemetry.csv"
    return Telemetry(path, TelemetryConfig(), FakeNvml([h100(index) for index in range(gpus)])), path


def rows_of(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == smi.HEADER
    parsed = list(csv.reader(lines[1:], skipinitialspace=True))
    assert all(len(cells) == len(smi.NAMES) for cells in parsed)
    return parsed


def test_disk_full_is_a_state_and_the_log_recovers_whole(tmpfs: Path) -> None:
    telemetry, path = telemetry_on(tmpfs)
    with structlog.testing.capture_logs() as logs:
        assert telemetry.sample() is not None
        filler = fill(tmpfs)
        for _ in range(3):
            assert telemetry.sample() is not None  # NVML still works; only the log does not
        assert str(telemetry.feature).startswith(f"degraded: disk full: {path}: No space left on device (since ")
        assert "3 samples not written; 8 GPUs; last sample " in str(telemetry.feature)
        assert "hxd_telemetry_log_writable 0.0" in metric_lines(telemetry.view)
        assert path.read_bytes().endswith(b"\n") and len(rows_of(path)) == 8  # the failed appends were cut back
        filler.unlink()
        telemetry.sample()
    assert str(telemetry.feature).startswith("ok: 8 GPUs; last sample ")
    assert len(rows_of(path)) == 16
    events = [entry["event"] for entry in logs]
    assert events == ["cannot append to the GPU log; retrying at every sample", "the GPU log is writable again"]
    assert logs[1]["samples_not_written"] == 3


def test_a_read_only_log_directory_is_a_state(tmpfs: Path) -> None:
    telemetry, path = telemetry_on(tmpfs, gpus=1)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with structlog.testing.capture_logs():
        assert telemetry.sample() is not None
    assert str(telemetry.feature).startswith(
        f"degraded: cannot write the log: {path.parent}: Read-only file system (since "
    )
