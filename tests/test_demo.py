"""tools/demo.py as a newcomer runs it (``make demo``)."""

from __future__ import annotations

import sys

import pytest
from demo import show


def test_show_keeps_stdout_and_stderr_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    """hxctl writes progress to stderr and results to stdout; the demo must print them in the order they came."""
    code = "import sys; print('progress', file=sys.stderr, flush=True); print('result')"
    show([sys.executable, "-c", code])
    assert capsys.readouterr().out.splitlines()[-2:] == ["progress", "result"]
