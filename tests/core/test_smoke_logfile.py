"""The smoke logs' append helper (hxd.core.logfile): whole lines, torn-line repair, rotation, concurrent writers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hxd.core.errors import Failed
from hxd.core.logfile import append_lines

MiB = 1024 * 1024


def test_append_creates_the_directory_and_writes_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "perf" / "nightly-smoke.log"
    old_umask = os.umask(0o077)
    try:
        append_lines(log, ["one"], MiB, 8)
    finally:
        os.umask(old_umask)
    append_lines(log, ["two"], MiB, 8)
    append_lines(log, ["three"], MiB, 8)
    assert log.read_text() == "one\ntwo\nthree\n"
    # Group hxd may read the logs whatever the umask (hxd.service has UMask=0077).
    assert (log.stat().st_mode & 0o777, log.parent.stat().st_mode & 0o777) == (0o640, 0o750)


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path: Path) -> None:
    log = tmp_path / "nightly-smoke.jsonl"
    log.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": 3, "trunc')  # a crash in the middle of a write
    append_lines(log, ['{"d": 4}'], MiB, 8)
    assert log.read_text() == '{"a": 1}\n{"b": 2}\n{"d": 4}\n'
    log.write_bytes(b"x" * 200_000)  # a torn line longer than the block the repair reads at a time
    append_lines(log, ["next"], MiB, 8)
    assert log.read_text() == "next\n"


def test_rotation_by_size_keeps_keep_files(tmp_path: Path) -> None:
    log = tmp_path / "nightly-smoke.log"
    for index in range(10):
        append_lines(log, [f"line {index} " + "x" * 40], 100, 2)  # 48 bytes a line: two fit in 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "nightly-smoke.log",
        "nightly-smoke.log.1",
        "nightly-smoke.log.2",
    ]
    assert [line[:6] for line in log.read_text().splitlines()] == ["line 8", "line 9"]
    assert [line[:6] for line in (tmp_path / "nightly-smoke.log.1").read_text().splitlines()] == ["line 6", "line 7"]
    assert [line[:6] for line in (tmp_path / "nightly-smoke.log.2").read_text().splitlines()] == ["line 4", "line 5"]
    append_lines(log, ["y" * 500], 100, 2)  # larger than the limit on its own: rotated first, then written whole
    assert log.read_text() == "y" * 500 + "\n"


def test_concurrent_writers_lose_no_line(tmp_path: Path) -> None:
    log = tmp_path / "nightly-smoke.jsonl"

    def writer(name: str) -> None:
        for index in range(40):
            append_lines(log, [f"{name}-{index:02d} " + "z" * 30], 1000, 100)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [line for path in tmp_path.iterdir() for line in path.read_text().splitlines()]
    assert sorted(lines) == sorted(f"w{n}-{i:02d} " + "z" * 30 for n in range(4) for i in range(40))
    assert all(path.stat().st_size <= 1000 for path in tmp_path.iterdir())


def test_an_unwritable_directory_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "perf"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(Failed, match=r"perf/nightly-smoke.log: cannot append: .*check that hxd may write"):
        append_lines(blocker / "nightly-smoke.log", ["x"], MiB, 8)
