"""Logging setup shared by hxd and hxctl.

Under systemd (``JOURNAL_STREAM`` set) lines are ``key=value`` with no timestamp, because journald stamps them
itself, and each line starts with an sd-daemon ``<N>`` priority prefix so ``journalctl -p err`` works. On a
terminal the output is a readable console format; ``--log-format json`` gives one JSON object a line for shipping.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "console", "journal", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "console", "journal", "json")

# sd-daemon(3) priority prefixes, read by journald from a service's stdout/stderr.
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def _journal_prefix(_: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    event_dict["_priority"] = _PRIORITY.get(method, 6)
    return event_dict


def _render_journal(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    priority = event_dict.pop("_priority", 6)
    event = event_dict.pop("event", "")
    pairs = " ".join(f"{key}={_quote(value)}" for key, value in event_dict.items())
    return f"<{priority}>{_quote(event)} {pairs}".rstrip()


def _quote(value: Any) -> str:
    text = str(value)
    if text and not any(ch in text for ch in ' "=\n\\'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    """Set up structlog once per process; ``auto`` picks journal under systemd, console otherwise."""
    if fmt == "auto":
        fmt = "journal" if os.environ.get("JOURNAL_STREAM") else "console"
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
    ]
    renderer: list[Processor]
    if fmt == "journal":
        renderer = [_journal_prefix, _render_journal]
    elif fmt == "json":
        renderer = [structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.JSONRenderer()]
    else:
        renderer = [
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
