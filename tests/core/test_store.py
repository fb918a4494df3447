"""Reading manifests within hxd's limits (docs/ollama.md, "Manifest limits"), on real files: the size read is
bounded whatever the file's size, nesting and object counts are refused before the JSON parser sees them, and
every refusal is a typed error naming the file."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from hxd.core.errors import Unreadable
from hxd.core.store import (
    MANIFEST_MAX_BYTES,
    MANIFEST_MAX_CONTAINERS,
    MANIFEST_MAX_DEPTH,
    Store,
    StoreError,
    read_manifest_file,
)
from hxsandbox.samplestore import make_store, manifest_path, write_hostile_manifest

NAME = "llama3.2:3b"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    make_store(tmp_path, {NAME: [b"weights"]})
    return Store(tmp_path)


@pytest.fixture
def rewrite(store: Store) -> Callable[[bytes], Path]:
    """Write the model's manifest as made, with ``extra`` (``,"key":value`` or white space) before its last brace."""
    path = manifest_path(store.root, NAME)
    made = path.read_bytes().rstrip()

    def write(extra: bytes) -> Path:
        path.write_bytes(made[:-1] + extra + b"}")
        return path

    return write


def bytes_read() -> int:
    """``rchar`` of /proc/self/io: every byte this process has had from read(2) and its kin."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("rchar:"))


def test_a_million_layers_are_refused_after_reading_the_limit(store: Store) -> None:
    path = write_hostile_manifest(store.root, NAME, "million-layers")
    assert path.stat().st_size > 150_000_000
    before = bytes_read()
    with pytest.raises(StoreError) as refused:
        store.read_manifest(path)
    assert bytes_read() - before < MANIFEST_MAX_BYTES + (64 << 10)  # the limit and one byte, plus /proc/self/io
    assert isinstance(refused.value, Unreadable)  # what a D-Bus caller gets where one escapes, never Internal
    assert str(refused.value) == (
        f"{path}: larger than 4194304 bytes ({path.stat().st_size} on disk), hxd's limit for a manifest; "
        "remove the file, and re-pull the model if you need it"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (b',"a":' + b"[" * 100_000 + b"]" * 100_000, "nests deeper than 32 levels"),
        (b',"a":' + b"{" * 100_000, "its brackets do not balance"),
        (b',"a":' + b'"' + b"[" * 100_000, "its brackets do not balance"),  # no string ends: brackets count
        # Each escaped quote starts another try at a string: read once, not once from each (1 MiB, hours if quadratic)
        (b',"a":' + b'"' + b'\\"' * 500_000 + b"[", "its brackets do not balance"),
        (b',"a":[' + b"{}," * MANIFEST_MAX_CONTAINERS + b"{}]", "holds 65542 objects and lists, more than hxd's"),
    ],
    ids=["deep", "unclosed", "unterminated-string", "unterminated-escaped-quotes", "objects"],
)
def test_shapes_past_the_limits_are_refused_without_recursion(
    store: Store, rewrite: Callable[[bytes], Path], extra: bytes, message: str
) -> None:
    path = rewrite(extra)
    with pytest.raises(StoreError, match=rf"^{path}: .*{message}"):
        store.read_manifest(path)


def test_the_limits_themselves_are_allowed(store: Store, rewrite: Callable[[bytes], Path]) -> None:
    depth = MANIFEST_MAX_DEPTH - 1  # the manifest's own object is the first level
    assert len(store.read_manifest(rewrite(b',"a":' + b"[" * depth + b"]" * depth)).layers) == 2
    with pytest.raises(StoreError, match="nests deeper than 32 levels"):
        store.read_manifest(rewrite(b',"a":' + b"[" * (depth + 1) + b"]" * (depth + 1)))
    room = MANIFEST_MAX_BYTES - rewrite(b"").stat().st_size
    path = rewrite(b" " * room)  # white space inside an object is still JSON
    assert path.stat().st_size == MANIFEST_MAX_BYTES and len(store.read_manifest(path).layers) == 2
    with pytest.raises(StoreError, match="larger than 4194304 bytes"):
        store.read_manifest(rewrite(b" " * (room + 1)))


def test_brackets_and_quotes_inside_strings_are_text(store: Store, rewrite: Callable[[bytes], Path]) -> None:
    path = rewrite(b',"a":"' + b"[{" * 5_000 + b'\\"]]\\\\","b":["\\\\"]')
    assert len(store.read_manifest(path).layers) == 2


def test_a_layer_size_must_be_a_number(store: Store) -> None:
    path = manifest_path(store.root, NAME)
    path.write_bytes(path.read_bytes().replace(b'"size":7}', b'"size":true}'))
    with pytest.raises(StoreError, match=r"bad layer size True"):
        store.read_manifest(path)


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail, instead of hanging, if a call blocks for 5 s (a FIFO opened without O_NONBLOCK would)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("blocked for 5 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.usefixtures("alarm")
def test_a_fifo_is_refused_without_blocking(store: Store) -> None:
    path = manifest_path(store.root, NAME)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(StoreError, match=rf"^{path}: is a FIFO, not a manifest file; remove it$"):
        read_manifest_file(path)
