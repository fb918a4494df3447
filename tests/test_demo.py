"""tools/demo.py as a newcomer runs it: ``make demo`` without root (as ``nobody``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from busctl import as_user
from conftest import traversable_by_others
from demo import show

DEMO = Path(__file__).resolve().parents[1] / "tools" / "demo.py"


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
