"""hxd.core.envfile_writer: what it writes systemd reads back as the value, and every other byte stays as it was."""

from __future__ import annotations

import errno
import os
import random
import re
import stat
from collections import Counter
from pathlib import Path

import pytest
from envfile_support import ARG_MAX, as_nobody, one_line, random_file, systemd_says

from hxd.core.envfile_parser import parse_envfile
from hxd.core.envfile_reader import read_envfile
from hxd.core.envfile_writer import format_assignment, set_variable, with_variable
from hxd.core.errors import Failed, InvalidArgs


def only_files(directory: Path, *names: str) -> None:
    """The directory holds exactly these files: no temporary file was left behind."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


VALUE_ALPHABET = [
    *"\"'\\$#;=`*?[]()<>|&!{}~%^@,:/.-+",
    "\n",
    "\r",
    "\t",
    " ",
    "  ",
    "\x01",
    "\x1b",
    "\x7f",
    "a",
    "Z",
    "0",
    "_",
    "é",
    "✓",
    "😀",
    "\u00a0",
    "\u2028",
    "\ufeff",
    "\\\n",
    "$HOME",
    "${USER}",
    " # c",
]


def random_value(rng: random.Random) -> str:
    value = "".join(rng.choices(VALUE_ALPHABET, k=rng.randint(0, 12)))
    return rng.choice(["", " ", "\t"]) + value + rng.choice(["", " ", "  "])


def test_systemd_reads_back_what_format_assignment_writes(tmp_path: Path) -> None:
    rng = random.Random(254)
    values = [random_value(rng) for _ in range(3000)]
    files = [(format_assignment("V", value) + "\n").encode() for value in values]
    theirs = systemd_says(files, tmp_path)
    assert [o.environment for o in theirs] == [[("V", value)] for value in values]


@pytest.mark.parametrize(
    ("value", "line"),
    [
        ("llama3.2:3b", "K=llama3.2:3b"),
        ("", "K="),
        ("#x", "K=#x"),
        ("a b", 'K="a b"'),
        ('say "hi" $USER `x` \\', 'K="say \\"hi\\" \\$USER \\`x\\` \\\\"'),
        ("it's", 'K="it\'s"'),
        ("a\nb", 'K="a\nb"'),
        ("café", "K=café"),
    ],
)
def test_format_assignment(value: str, line: str) -> None:
    assert format_assignment("K", value) == line


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("1A", "x", "'1A' is not a valid environment variable name"),
        ("export A", "x", "'export A' is not a valid environment variable name"),
        ("A", "a\x00b", "contains U+0000"),
        ("A", "\ud800", "contains U+D800"),
        ("A", "x\ufffe", "contains U+FFFE"),
        ("A", "\U0010ffff", "contains U+10FFFF"),
        ("A", "\ufdd0", "contains U+FDD0"),
        ("A", "v" * (ARG_MAX - 2), "too long"),
    ],
)
def test_format_assignment_refuses_what_systemd_cannot_hold(key: str, value: str, message: str) -> None:
    with pytest.raises(InvalidArgs, match=re.escape(message)) as caught:
        format_assignment(key, value)
    assert "\n" not in str(caught.value)


def base_file(rng: random.Random) -> bytes:
    """A random file that loads: the target key may be absent, once or several times."""
    while True:
        data = random_file(rng)
        if rng.random() < 0.5:
            data = data.replace(b"B", b"K", rng.randint(1, 3))
        if parse_envfile(data).loads:
            return data


def check_update(data: bytes, value: str) -> str:
    """Set K in ``data``; check the value, the rest of the environment and every other byte. Returns the case."""
    before = parse_envfile(data)
    try:
        after_bytes = with_variable(data, "K", value)
    except Failed as error:
        assert before.assignments[-1].unterminated_quote and "is never closed" in str(error)
        return "refused"
    after = parse_envfile(after_bytes)
    assert after.environment == {**before.environment, "K": value}
    assert after.ignored_assignments == before.ignored_assignments
    last = next((a for a in reversed(before.assignments) if a.key == "K"), None)
    if last is None:
        assert after_bytes.startswith(data)
        assert after_bytes[len(data) :].lstrip(b"\n") == format_assignment("K", value).encode() + b"\n"
        return "appended"
    assert after_bytes[: last.start] == data[: last.start]
    assert after_bytes[len(after_bytes) - (len(data) - last.end) :] == data[last.end :]
    return "replaced"


def test_with_variable_round_trips_and_keeps_other_bytes() -> None:
    rng = random.Random(2524)
    outcomes = Counter(check_update(base_file(rng), random_value(rng)) for _ in range(4000))
    assert min(outcomes[o] for o in ("appended", "replaced", "refused")) > 100, outcomes


def updated_or_none(data: bytes, value: str) -> bytes | None:
    try:
        return with_variable(data, "K", value)
    except Failed:
        return None


def test_with_variable_result_is_read_by_systemd(tmp_path: Path) -> None:
    rng = random.Random(2525)
    cases = [(base_file(rng), random_value(rng)) for _ in range(2000)]
    updated = [(new, value) for data, value in cases if (new := updated_or_none(data, value)) is not None]
    theirs = systemd_says([new for new, _ in updated], tmp_path)
    assert len(updated) > 1000
    assert [dict(o.environment)["K"] for o in theirs] == [value for _, value in updated]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"A=1\nK=old\nB=2\n", b'A=1\nK="a b"\nB=2\n'),
        (b"K=1\nK=2 # c\r\nB=2", b'K=1\nK="a b"\r\nB=2'),
        (b'K="x\nstill x"\rB=2', b'K="a b"\rB=2'),
        (b"A=1", b'A=1\nK="a b"\n'),
        (b"# comment", b'# comment\nK="a b"\n'),
        (b"# trailing comment \\", b'# trailing comment \\\n\nK="a b"\n'),
        (b"A=x\\", b'A=x\\\n\nK="a b"\n'),
        (b"TEXT", b'TEXT\nK="a b"\n'),
        (b"", b'K="a b"\n'),
    ],
)
def test_with_variable_examples(data: bytes, expected: bytes) -> None:
    assert with_variable(data, "K", "a b") == expected


def test_set_variable_preserves_owner_mode_and_other_bytes(tmp_path: Path) -> None:
    path = tmp_path / "ollama.env"
    original = b'# models\nOLLAMA_MODELS="/mnt/old"\r\nOLLAMA_HOST=0.0.0.0\n'
    path.write_bytes(original)
    os.chown(path, 1234, 5678)
    path.chmod(0o640)
    set_variable(path, "OLLAMA_MODELS", "/mnt/active llm")
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1234, 5678, 0o640)
    assert path.read_bytes() == b'# models\nOLLAMA_MODELS="/mnt/active llm"\r\nOLLAMA_HOST=0.0.0.0\n'
    only_files(tmp_path, path.name)


def test_set_variable_round_trips_through_disk(tmp_path: Path) -> None:
    rng = random.Random(99)
    path = tmp_path / "x.env"
    path.write_bytes(b"A=1\n# c\n")
    for _ in range(50):
        value, before = random_value(rng), path.read_bytes()
        set_variable(path, "K", value)
        assert read_envfile(path).environment["K"] == value
        assert path.read_bytes() == with_variable(before, "K", value)
    only_files(tmp_path, path.name)


def test_set_variable_keeps_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "real.env"
    target.write_bytes(b"A=1\n")
    link = tmp_path / "link.env"
    link.symlink_to(target)
    set_variable(link, "A", "2")
    assert link.is_symlink() and target.read_bytes() == b"A=2\n"


def test_set_variable_refuses_bad_value_without_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_bytes(b"A=1\n")
    with pytest.raises(InvalidArgs, match=re.escape("U+0000")):
        set_variable(path, "A", "x\x00y")
    assert path.read_bytes() == b"A=1\n"
    only_files(tmp_path, path.name)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"A=\xff\n", "systemd rejects this file as it is (line 1: invalid UTF-8"),
        (b"A=1\nB='open\n", "the quote opened on line 2 is never closed"),
    ],
)
def test_set_variable_refuses_a_file_it_cannot_edit_safely(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "x.env"
    path.write_bytes(content)
    with pytest.raises(Failed, match=re.escape(message)) as caught:
        set_variable(path, "K", "v")
    one_line(str(caught.value), path)
    assert path.read_bytes() == content


@pytest.mark.parametrize(("failing", "code"), [("fsync", errno.ENOSPC), ("replace", errno.EIO)])
def test_set_variable_failed_write_leaves_original_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, code: int
) -> None:
    path = tmp_path / "x.env"
    path.write_bytes(b"A=1\n")

    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(Failed, match=f"cannot write: {os.strerror(code)}") as caught:
        set_variable(path, "A", "2")
    one_line(str(caught.value), path)
    assert path.read_bytes() == b"A=1\n"
    only_files(tmp_path, path.name)


def test_set_variable_in_a_read_only_directory(world_tmp: Path) -> None:
    path = world_tmp / "x.env"
    path.write_bytes(b"A=1\n")
    os.chown(path, 65534, 65534)
    world_tmp.chmod(0o555)
    code = (
        "import sys; from pathlib import Path\n"
        "from hxd.core.envfile_writer import set_variable; from hxd.core.errors import Failed\n"
        "try: set_variable(Path(sys.argv[1]), 'A', '2')\n"
        "except Failed as e: print(e)"
    )
    child = as_nobody(code, str(path))
    assert child.returncode == 0, child.stderr
    assert child.stdout == f"{path}: cannot write: permission denied\n"
    assert path.read_bytes() == b"A=1\n"
    only_files(world_tmp, path.name)
