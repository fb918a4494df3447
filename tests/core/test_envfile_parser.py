"""hxd.core.envfile_parser against systemd 252: the shipped test vectors, systemd's own parser, what the port records.

The differential tests ask ``libsystemd-shared-252.so`` itself (``envfile_support.systemd_says``); they fail, never
skip, when the library is missing.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest
from envfile_support import ARG_MAX, REPO, differences, random_file

from hxd.core.envfile_parser import READ_LIMIT, parse_envfile

FIXTURE = REPO / "tests" / "fixtures" / "envfile-systemd252.json"


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
