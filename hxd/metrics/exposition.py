"""Lines of the Prometheus text exposition format (version 0.0.4): one metric family with its HELP and TYPE.

Shared by every part of hxd that puts metrics on /metrics, so that escaping and number formatting are done one way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(pairs: dict[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in pairs.items()) + "}"


def family(
    name: str,
    help_text: str,
    samples: Iterable[tuple[dict[str, str], float]],
    kind: Literal["gauge", "counter"] = "gauge",
) -> list[str]:
    """HELP, TYPE and one line per sample; ``repr`` of a float is exact and what the text format expects."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines.extend(f"{name}{labels(pairs)} {value!r}" for pairs, value in samples)
    return lines
