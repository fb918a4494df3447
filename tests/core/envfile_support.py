"""What the env-file tests share: systemd 252's own verdict on a batch of files, random files, message checks.

systemd's verdict comes from ``libsystemd-shared-252.so`` (Debian package ``libsystemd-shared``) run in a child
process, see ``systemd252_oracle.py``. The tests that ask for it fail, never skip, when the library is missing:
without it nothing shows the port is exact.
"""

from __future__ import annotations

import glob
import json
import os
import random
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from busctl import as_user

from hxd.core.envfile_parser import EnvFile, parse_envfile

REPO = Path(__file__).resolve().parents[2]
ORACLE = Path(__file__).with_name("systemd252_oracle.py")
LIBRARY_GLOBS = (
    "/usr/lib/*/systemd/libsystemd-shared-252.so",
    "/lib/*/systemd/libsystemd-shared-252.so",
    "/usr/lib64/systemd/libsystemd-shared-252.so",
    "/usr/lib/systemd/libsystemd-shared-252.so",
)
ARG_MAX = os.sysconf("SC_ARG_MAX")


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


# Random files: a few lines over an adversarial alphabet, weighted towards what the parser treats specially.

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
