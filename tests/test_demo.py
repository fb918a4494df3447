"""tools/demo.py as a newcomer runs it: ``make demo`` and ``make sandbox`` without root (as ``nobody``), the sandbox
reached through the lines it prints, and Ctrl-C leaving nothing behind."""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from busctl import as_user
from conftest import traversable_by_others
from demo import show

from hxd.bus import names

DEMO = Path(__file__).resolve().parents[1] / "tools" / "demo.py"
MANAGER = (names.BUS_NAME, names.MANAGER_PATH, names.MANAGER_INTERFACE)


@pytest.fixture(scope="module", autouse=True)
def interpreter_reachable() -> Iterator[None]:
    """The demo starts hxd and the Ollama stub with its own interpreter, so ``nobody`` must reach that (setpriv's
    root capabilities reach it only for the first exec); pyenv's, for one, lives under /root (0700)."""
    with traversable_by_others(Path(sys.executable).resolve()):
        yield


def test_demo_runs_without_root() -> None:
    """The whole tour, migration included, passes for an account with no privileges: authorization comes from the
    polkit stand-in, not from being root."""
    result = subprocess.run(
        [*as_user("nobody"), sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "authorization: a stand-in for polkit" in result.stdout


def test_show_keeps_stdout_and_stderr_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    """hxctl writes progress to stderr and results to stdout; the demo must print them in the order they came."""
    code = "import sys; print('progress', file=sys.stderr, flush=True); print('result')"
    show([sys.executable, "-c", code])
    assert capsys.readouterr().out.splitlines()[-2:] == ["progress", "result"]


def read_until(process: subprocess.Popen[bytes], last: str, timeout: float = 60) -> list[str]:
    """The lines ``process`` prints up to one that starts with ``last`` (read from the descriptor: a buffered
    readline would hide lines from select)."""
    assert process.stdout is not None
    fd, text = process.stdout.fileno(), ""
    deadline = time.monotonic() + timeout
    while not re.search(f"^{re.escape(last)}.*\n", text, re.MULTILINE):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(fd, 65536).decode() if ready else ""
        assert chunk, f"no {last!r} line within {timeout} s; got {text!r}"
        text += chunk
    return text.splitlines()


def processes_mentioning(text: str) -> list[str]:
    """The command lines of running processes that name ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").replace("\0", " ")
        except OSError:  # the process ended meanwhile
            continue
        if text in args:
            found.append(args)
    return found


def test_sandbox_is_reachable_and_ctrl_c_removes_it() -> None:
    """``make sandbox`` as nobody: the printed lines, pasted into a shell, reach hxd with hxctl and busctl (a
    mutating call included) and the metrics URL answers; Ctrl-C at the terminal (SIGINT to the whole process group)
    stops every process and removes the directory."""
    process = subprocess.Popen(
        [*as_user("nobody"), sys.executable, str(DEMO), "--keep"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd="/",
        process_group=0,
    )
    try:
        lines = read_until(process, "Ctrl-C")
        ready = lines.index("sandbox ready; in another shell:")
        export, calls, curl = (line.strip() for line in lines[ready + 1 : ready + 4])
        reload = f'busctl --address="$HXD_BUS" call {" ".join(MANAGER)} Reload'
        pasted = subprocess.run(
            [*as_user("nobody"), "bash", "-c", f"{export}\n{calls}\n{reload}"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert pasted.returncode == 0, pasted.stderr
        assert " on sandbox: running" in pasted.stdout and "a{sv} " in pasted.stdout
        address = shlex.split(export)[1].removeprefix("HXD_BUS=")
        root = Path(address.removeprefix("unix:path=").split(",")[0]).parent
        with urllib.request.urlopen(curl.split()[-1], timeout=10) as response:
            assert b'hxd_state{state="running"} 1' in response.read()
        assert processes_mentioning(str(root))
    finally:
        os.killpg(process.pid, signal.SIGINT)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    assert output.endswith("sandbox stopped and removed\n") and "Traceback" not in output, output
    assert not root.exists()
    assert processes_mentioning(str(root)) == []
