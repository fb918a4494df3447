"""hxd.core.envfile_* against systemd 252: the shipped test vectors, systemd's own parser, and the writer's guarantees.

The differential tests run ``libsystemd-shared-252.so`` (Debian package ``libsystemd-shared``) in a child process,
see ``systemd252_oracle.py``. They fail, never skip, when the library is missing: without it nothing shows the
port is exact.
"""

from __future__ import annotations

import base64
import errno
import glob
import json
import os
import random
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from busctl import as_user

from hxd.core.envfile_parser import READ_LIMIT, EnvFile, parse_envfile
from hxd.core.envfile_reader import read_envfile
from hxd.core.envfile_writer import format_assignment, set_variable, with_variable
from hxd.core.errors import Failed, HxdError, InvalidArgs, Unreadable

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "envfile-systemd252.json"
ORACLE = Path(__file__).with_name("systemd252_oracle.py")
LIBRARY_GLOBS = (
    "/usr/lib/*/systemd/libsystemd-shared-252.so",
    "/lib/*/systemd/libsystemd-shared-252.so",
    "/usr/lib64/systemd/libsystemd-shared-252.so",
    "/usr/lib/systemd/libsystemd-shared-252.so",
)
ARG_MAX = os.sysconf("SC_ARG_MAX")
MiB = 1024 * 1024


# --- helpers ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a service gets from one file: the comparison unit between systemd and the port."""

    loads: bool
    environment: list[tuple[str, str]]
    ignored: list[str]


def libsystemd_shared() -> str:
    """Path of systemd 252's shared library; fails the test (never skips) when it is not installed."""
    found = sorted({os.path.realpath(p) for pattern in LIBRARY_GLOBS for p in glob.glob(pattern)})
    if not found:
        pytest.fail(
            "libsystemd-shared-252.so not found: the differential tests need systemd 252's own parser;"
            " install it with `apt-get install libsystemd-shared` (Debian 12)"
        )
    return found[0]


def systemd_says(files: list[bytes], scratch: Path) -> list[Outcome]:
    """Run every file through load_env_file() + strv_env_clean_with_callback() in a child process."""
    stream = b"".join(struct.pack("<Q", len(f)) + f for f in files)
    child = subprocess.run(
        [sys.executable, str(ORACLE), libsystemd_shared(), str(scratch)],
        input=stream,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, f"oracle crashed (rc={child.returncode}): {child.stderr.decode()[-2000:]}"
    results = json.loads(child.stdout)
    assert len(results) == len(files)
    return [Outcome(rc >= 0, [tuple(e.split("=", 1)) for e in env], ignored) for rc, env, ignored in results]


def differences(files: list[bytes], scratch: Path, mine: list[EnvFile] | None = None) -> list[str]:
    """Every file where the port and systemd disagree on loads, environment (in order) or ignored assignments."""
    theirs = systemd_says(files, scratch)
    parsed = mine if mine is not None else [parse_envfile(f) for f in files]
    port = [Outcome(p.loads, list(p.environment.items()), p.ignored_assignments) for p in parsed]
    return [
        f"{data!r}: systemd {want}, port {got}"
        for data, want, got in zip(files, theirs, port, strict=True)
        if want != got
    ]


def one_line(message: str, path: Path) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert str(path) in message, message


def only_files(directory: Path, *names: str) -> None:
    """The directory holds exactly these files: no temporary file was left behind."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


def as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Python code as nobody: the tests run as root, who ignores file permissions."""
    assert os.geteuid() == 0, "these tests drop to nobody with setpriv and chown files, so they must run as root"
    return subprocess.run(
        [*as_user("nobody"), sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"},
    )


# --- the shipped test vectors -------------------------------------------------------------------------------------

CASES: list[dict[str, Any]] = json.loads(FIXTURE.read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_fixture_case(case: dict[str, Any]) -> None:
    parsed = parse_envfile(base64.b64decode(case["file_base64"]))
    assert parsed.loads is case["loads"]
    assert parsed.environment == case.get("environment", {})
    assert parsed.ignored_assignments == case.get("ignored_assignments", [])
    assert (parsed.error is None) is case["loads"]


# --- differential tests against libsystemd-shared-252 -------------------------------------------------------------

TOKENS: dict[bytes, float] = {
    b'"': 6,
    b"'": 6,
    b"\\": 6,
    b"#": 5,
    b";": 3,
    b"$": 2,
    b"`": 2,
    b"\r": 3,
    b"\n": 6,
    b"\r\n": 2,
    b"\\\n": 2,
    b"\\\r\n": 1,
    b"\t": 3,
    b"\x0b": 1,  # vertical tab and form feed: whitespace to Python, not to systemd
    b"\x0c": 1,
    "\u0085".encode(): 0.5,
    "\u00a0".encode(): 0.5,
    b" ": 6,
    b"export ": 2,
    b"=": 6,
    b"A": 6,
    b"B": 4,
    b"a": 3,
    b"_": 2,
    b"1": 2,
    b"0": 1,
    "é".encode(): 2,
    "😀".encode(): 1,
    "\ufeff".encode(): 1,  # BOM: valid UTF-8, but not part of a valid name
    "\ufffe".encode(): 0.3,  # noncharacter: invalid for systemd, valid for Python
    "\ufdd0".encode(): 0.2,
    b"\xff": 0.3,
    b"\xc3": 0.2,  # truncated sequence
    b"\xed\xa0\x80": 0.2,  # surrogate
    b"\xc0\x80": 0.2,  # overlong NUL
    b"\xf4\x90\x80\x80": 0.2,  # above U+10FFFF
    b"\x00": 0.2,
}
KEYS = [
    b"A",
    b"B",
    b"_x",
    b"a1",
    b"1A",
    b"export A",
    b"A-B",
    b"A.B",
    "\ufeffA".encode(),
    b"=A",
    b"=",
    b" A\t",
    b"\xc3\xa9",
]
LINE_ENDS = [b"\n", b"\n", b"\n", b"\r\n", b"\r", b""]


def random_file(rng: random.Random) -> bytes:
    """A few lines, most of them assignments to a small set of keys, over an adversarial alphabet."""
    tokens, weights = list(TOKENS), list(TOKENS.values())
    parts: list[bytes] = []
    for _ in range(rng.randint(1, 6)):
        if rng.random() < 0.6:
            parts += [rng.choice(KEYS), rng.choice([b"", b" ", b"\t "]), b"=", rng.choice([b"", b" "])]
        parts += rng.choices(tokens, weights, k=rng.randint(0, 10))
        parts.append(rng.choice(LINE_ENDS))
    return b"".join(parts)


def test_port_equals_systemd_on_random_files(tmp_path: Path) -> None:
    rng = random.Random(252)
    files = [random_file(rng) for _ in range(20_000)]
    parsed = [parse_envfile(f) for f in files]
    assert differences(files, tmp_path, parsed)[:5] == []
    # The generator must keep reaching the interesting paths, or zero differences would prove little.
    assert 0.05 < sum(not p.loads for p in parsed) / len(files) < 0.5
    assert sum(bool(p.ignored_assignments) for p in parsed) > 1000
    assert sum(any(a.unterminated_quote for a in p.assignments) for p in parsed) > 1000
    assert sum(bool(p.swallowed_lines) for p in parsed) > 100


def test_port_equals_systemd_on_edge_cases(tmp_path: Path) -> None:
    """Cases the random generator rarely builds: ARG_MAX limits, keys starting with '=', runs of escapes."""
    files = [
        b"A=" + b"v" * (ARG_MAX - 3) + b"\n",  # longest value systemd keeps
        b"A=" + b"v" * (ARG_MAX - 2) + b"\n",  # one byte too long: ignored
        b"AB=" + b"v" * (ARG_MAX - 4) + b"\n",  # total length exactly ARG_MAX - 1
        b"AB=" + b"v" * (ARG_MAX - 3) + b"\n",  # total one too long
        b"=A=1\n=B=2\nC=3\n",  # both keys have the empty name: the second replaces the first
        b"A=1\n=B=2\nA=3\n=C=\n",
        b'A="\\\\\\\\\\\n"\nB="\\\\\\"x"\n',
        b"A=x\\\\\\\nB=y\n",
        b"# c \\\\\nA=1\n# c \\\\\\\nB=2\nC=3",
        b"#\\\r\nA=1\n#\\\rB=2\rC=3",
        b"A=\xef\xbf\xbf\n",  # U+FFFF
        b"A=\xf0\x9f\xbf\xbe\n",  # U+1FFFE
        b"A=\xef\xb7\xaf\n",  # U+FDEF
        b"A=\xef\xb7\xb0\n",  # U+FDF0 is fine
        b"#\xff\nno equals \xff\nA=1\n",  # bad bytes outside assignments are harmless
        b"",
        b"   \n\t\r\n",
        b"A",
        b"A=",
        b"A='",
        b'A="x\\',
        b"A=x\\",
    ]
    assert differences(files, tmp_path) == []


def test_systemd_reads_back_what_format_assignment_writes(tmp_path: Path) -> None:
    rng = random.Random(254)
    values = [random_value(rng) for _ in range(3000)]
    files = [(format_assignment("V", value) + "\n").encode() for value in values]
    theirs = systemd_says(files, tmp_path)
    assert [o.environment for o in theirs] == [[("V", value)] for value in values]


# --- what the port records beyond systemd's result ----------------------------------------------------------------


def test_assignments_keep_lines_and_spans() -> None:
    data = b'# header\nA=1\n\nB="multi\nline"\r\nC=3\rD=4'
    parsed = parse_envfile(data)
    found = [(a.key, a.value, a.line, a.end_line, data[a.start : a.end]) for a in parsed.assignments]
    assert found == [
        ("A", "1", 2, 2, b"A=1"),
        ("B", "multi\nline", 4, 5, b'B="multi\nline"'),
        ("C", "3", 6, 6, b"C=3"),
        ("D", "4", 7, 7, b"D=4"),
    ]


@pytest.mark.parametrize(
    ("data", "flag", "expected"),
    [
        (b'A="x" # c\n', "glued_after_quote", True),
        (b'A="x"y\n', "glued_after_quote", True),
        (b'A="x"   \n', "glued_after_quote", False),
        (b"A=x # c\n", "inline_comment", True),
        (b'A="x"\t# c\n', "inline_comment", True),
        (b"A= # c\n", "inline_comment", True),
        (b"A=x#c\n", "inline_comment", False),
        (b'A="x # c"\n', "inline_comment", False),
        (b"A=x\\ #c\n", "inline_comment", False),
        (b'A="open\nB=2\n', "unterminated_quote", True),
        (b"A='closed'\n", "unterminated_quote", False),
        (b"A=abc\\\ndef\n", "continued", True),
        (b'A="abc\\\ndef"\n', "continued", True),
        (b"A=abc\n", "continued", False),
        (b"'quoted'=1\n", "quoted", False),
        (b"A='x'\n", "quoted", True),
        (b"export A=1\n", "valid_name", False),
        (b"\xef\xbb\xbfA=1\n", "valid_name", False),
        (b"A_1=1\n", "valid_name", True),
    ],
)
def test_assignment_facts(data: bytes, flag: str, expected: bool) -> None:
    assert getattr(parse_envfile(data).assignments[0], flag) is expected


def test_export_prefix_is_an_ignored_key() -> None:
    parsed = parse_envfile(b"export A=1\n")
    assert [(a.key, a.valid_name) for a in parsed.assignments] == [("export A", False)]
    assert parsed.ignored_assignments == ["export A=1"]


def test_lines_without_equals_and_swallowed_lines() -> None:
    data = b"JUSTTEXT\n# note \\\nA=1\n# ok \\\r\nB=2\n# blank next \\\n\nC=3\nTAIL"
    parsed = parse_envfile(data)
    assert parsed.environment == {"B": "2", "C": "3"}
    assert parsed.lines_without_equals == [1, 9]
    assert parsed.swallowed_lines == [3]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"A=1\nB=2\0\n", "line 2: NUL byte at offset 7; systemd rejects the whole file"),
        (b"A=1\nB=\xff\n", "line 2: invalid UTF-8 in the value of 'B'; systemd rejects the whole file"),
        (b"\xff=1\n", "line 1: invalid UTF-8 in the key '\ufffd'; systemd rejects the whole file"),
        (b"A=1\n\nB=\xef\xbf\xbe\n", "line 3: invalid UTF-8 in the value of 'B'; systemd rejects the whole file"),
    ],
)
def test_rejected_files_say_what_and_where(data: bytes, error: str) -> None:
    parsed = parse_envfile(data)
    assert (parsed.loads, parsed.error, parsed.environment, parsed.ignored_assignments) == (False, error, {}, [])


def test_invalid_utf8_still_lists_assignments_for_a_validator() -> None:
    parsed = parse_envfile(b"A=1\nB=\xff\nC=3\n")
    assert [(a.key, a.value) for a in parsed.assignments] == [("A", "1"), ("B", "\ufffd"), ("C", "3")]


def test_over_the_read_limit_is_rejected_unparsed() -> None:
    parsed = parse_envfile(b"#" * (READ_LIMIT + 1))
    assert (parsed.loads, parsed.assignments) == (False, [])
    assert parsed.error == f"the file is {READ_LIMIT + 1} bytes; systemd refuses files over {READ_LIMIT} bytes"


# --- read_envfile ---------------------------------------------------------------------------------------------------


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


# --- writer -------------------------------------------------------------------------------------------------------

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
