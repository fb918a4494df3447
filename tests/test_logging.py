"""Log formats: journal (no timestamp, priority prefix), console, JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = (
    "import structlog, hxd.log as l; l.configure({fmt!r}); "
    "log = structlog.get_logger('t'); log.info('hxd ready', version='0.1.0', path='/a b'); log.error('boom', code=3)"
)


def run(fmt: str, journal: bool = False) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal:
        env["JOURNAL_STREAM"] = "8:12345"
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(fmt=fmt)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_journal_format_under_systemd() -> None:
    info, error = run("auto", journal=True)
    assert info == '<6>"hxd ready" version=0.1.0 path="/a b" level=info'
    assert error == "<3>boom code=3 level=error"


def test_console_format_on_a_terminal_has_time() -> None:
    info, _ = run("auto")
    assert info[:4].isdigit() and "hxd ready" in info and "version=0.1.0" in info


def test_json_format() -> None:
    info, error = (json.loads(line) for line in run("json"))
    assert info["event"] == "hxd ready" and info["version"] == "0.1.0" and info["timestamp"].endswith("Z")
    assert error["level"] == "error"
