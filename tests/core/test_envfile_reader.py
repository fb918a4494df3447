"""hxd.core.envfile_reader: reading a file as PID1 does, and refusing in one line what cannot be read."""

from __future__ import annotations

import os
import random
import signal
import socket
from pathlib import Path
from types import FrameType

import pytest
from envfile_support import as_nobody, differences, one_line

from hxd.core.envfile_parser import READ_LIMIT
from hxd.core.envfile_reader import read_envfile
from hxd.core.errors import HxdError, Unreadable

MiB = 1024 * 1024


def test_read_envfile_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ollama.env"
    path.write_bytes(b'OLLAMA_MODELS="/mnt/active_llm_models"  # comment\n')
    assert read_envfile(path).environment == {"OLLAMA_MODELS": "/mnt/active_llm_models# comment"}


def test_read_envfile_binary_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "binary.env"
    path.write_bytes(b"A=1\n\x7fELF\x02\x01\x01\x00\x00\x00")
    parsed = read_envfile(path)
    assert parsed.loads is False and parsed.error is not None
    one_line(parsed.error, path)
    assert parsed.error == f"{path}: line 2: NUL byte at offset 11; systemd rejects the whole file"


def big_file(rng: random.Random, size: int) -> bytes:
    """At least ``size`` bytes of comments and 24 kB values, quoted and not, continued, with duplicates."""
    value = bytes(rng.choice(b"abcdefghij0123456789 $#;=/._-") for _ in range(24_000))
    parts: list[bytes] = []
    total = i = 0
    while total < size:
        block = b'# block %d\nKEY_%d=%s \\\n  tail\nQ_%d="%s"\n' % (i, i % 500, value, i % 300, value)
        parts.append(block)
        total, i = total + len(block), i + 1
    return b"".join(parts)


def test_read_envfile_50_megabytes_matches_systemd(tmp_path: Path) -> None:
    path = tmp_path / "big.env"
    data = big_file(random.Random(50), 50 * MiB)
    path.write_bytes(data)
    assert 49 * MiB < len(data) < READ_LIMIT
    parsed = read_envfile(path)
    assert parsed.loads and len(parsed.environment) == 800
    assert differences([data], tmp_path, [parsed]) == []


def test_read_envfile_refuses_a_huge_sparse_file_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.env"
    with path.open("wb") as f:
        f.truncate(READ_LIMIT + 1)

    def no_reading(fd: int, size: int) -> bytes:
        raise AssertionError("read_envfile read a file it should have refused from its size")

    monkeypatch.setattr(os, "read", no_reading)
    with pytest.raises(Unreadable) as caught:
        read_envfile(path)
    one_line(str(caught.value), path)
    assert f"is {READ_LIMIT + 1} bytes" in str(caught.value)


def test_read_envfile_directory(tmp_path: Path) -> None:
    with pytest.raises(Unreadable, match="is a directory, not a regular file") as caught:
        read_envfile(tmp_path)
    one_line(str(caught.value), tmp_path)


def test_read_envfile_missing(tmp_path: Path) -> None:
    path = tmp_path / "absent.env"
    with pytest.raises(Unreadable, match="does not exist") as caught:
        read_envfile(path)
    one_line(str(caught.value), path)
    assert isinstance(caught.value, HxdError)


def test_read_envfile_symlink_loop(tmp_path: Path) -> None:
    path = tmp_path / "loop.env"
    path.symlink_to(tmp_path / "other.env")
    (tmp_path / "other.env").symlink_to(path)
    with pytest.raises(Unreadable, match="symlink loop") as caught:
        read_envfile(path)
    one_line(str(caught.value), path)


def test_read_envfile_socket(tmp_path: Path) -> None:
    path = tmp_path / "socket.env"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        with pytest.raises(Unreadable, match="is a socket, not a regular file") as caught:
            read_envfile(path)
    one_line(str(caught.value), path)


def test_read_envfile_fifo_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "fifo.env"
    os.mkfifo(path)

    def hung(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("read_envfile blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.raises(Unreadable, match="is a FIFO, not a regular file") as caught:
            read_envfile(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    one_line(str(caught.value), path)


def test_read_envfile_unreadable(world_tmp: Path) -> None:
    path = world_tmp / "secret.env"
    path.write_bytes(b"A=1\n")
    path.chmod(0)
    code = (
        "import sys; from pathlib import Path\n"
        "from hxd.core.envfile_reader import read_envfile; from hxd.core.errors import Unreadable\n"
        "try: read_envfile(Path(sys.argv[1]))\n"
        "except Unreadable as e: print(e)"
    )
    child = as_nobody(code, str(path))
    assert child.returncode == 0, child.stderr
    assert child.stdout == f"{path}: cannot open: permission denied\n"
