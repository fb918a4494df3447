"""Ollama's environment variables as Ollama reads them (``envconfig/config.go`` at fb30760), not as systemd passes them.

systemd hands the service the value from the env file; Ollama then trims it (``Var``, lines 374-377), so
``OLLAMA_MODELS="/canon "`` names ``/canon``. Wherever hxd reasons about what Ollama will do (validation, the
migration's source, inventory, the API address, how long the smoke test's models stay loaded and how many requests
Ollama serves at once) it uses these readings; validation reports where the two differ.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from pathlib import Path

from hxd.core.config import Config
from hxd.core.envfile_reader import read_envfile
from hxd.core.errors import Unreadable

_PORT = re.compile(r"[+-]?[0-9]+")
# time.ParseDuration's units, in nanoseconds (Go's src/time/format.go: unitMap).
_UNITS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
_UNITS["h"] = 60 * _UNITS["m"]
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_MAX_NS = 2**63 - 1
DEFAULT_KEEP_ALIVE_SEC = 300.0  # envconfig.KeepAlive: 5 * time.Minute


def ollama_var(value: str) -> str:
    """``envconfig.Var``: surrounding white space trimmed, then surrounding quotes (``"`` and ``'``)."""
    return value.strip().strip("\"'")


def _split_host_port(hostport: str) -> tuple[str, str] | None:
    """Go's ``net.SplitHostPort``; None where Go returns an error."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or hostport[end + 1 : end + 2] != ":":
            return None
        return hostport[1:end], hostport[end + 2 :]
    host, colon, port = hostport.rpartition(":")
    return None if not colon or ":" in host else (host, port)


def host_url(value: str | None) -> str:
    """The client URL of ``envconfig.Host`` (lines 20-60) for an ``OLLAMA_HOST`` value (None: unset).

    Scheme (default http), host, port (11434 bare, 80 for ``http://``, 443 for ``https://``, bare ``ollama.com``
    is https on 443) and path as ``Host`` derives them; an unspecified bind address (0.0.0.0, ::) becomes loopback
    as ``ConnectableHost`` (lines 66-80) does, because hxd connects to it.
    """
    text = ollama_var(value or "").strip()
    default_port = "11434"
    scheme, separator, hostport = text.partition("://")
    if not separator:
        scheme, hostport = "http", text
        if text == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    split = _split_host_port(hostport)
    if split is None:
        bare = _ip(hostport.strip("[]"))
        host, port = str(bare) if bare else hostport, default_port
    else:
        host, port = split
    host = host or "127.0.0.1"  # Go dials an empty host (":11434") on the local system
    if not _PORT.fullmatch(port) or not 0 <= int(port) <= 65535:
        port = default_port
    address = _ip(host)
    if address is not None and address.is_unspecified:
        host = "127.0.0.1" if address.version == 4 else "::1"
    if address is not None and address.version == 6:
        host = f"[{host}]"
    return f"{scheme}://{host}:{int(port)}" + (f"/{path}" if path else "")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def api_url(config: Config, environment: Mapping[str, str]) -> str:
    """Where hxd reaches Ollama: ``ollama.url`` when hxd.toml sets it, else what ``OLLAMA_HOST`` makes Ollama bind."""
    if "url" in config.ollama.model_fields_set:
        return config.ollama.url
    return host_url(environment.get("OLLAMA_HOST"))


def env_api_url(config: Config, env_file: Path) -> str:
    """``api_url`` with the environment of ``env_file`` as systemd passes it; where the file cannot be read, Ollama's
    default address (``OLLAMA_HOST`` unset), or ``ollama.url``."""
    try:
        environment = read_envfile(env_file).environment
    except Unreadable:
        environment = {}
    return api_url(config, environment)


def go_duration_ns(text: str) -> int | None:
    """Go's ``time.ParseDuration`` in nanoseconds (``-1.5h``, ``300ms``, ``2h45m``, ``0``); None where Go errs
    (no unit, an unknown unit, out of range). A plain ``"3600"`` is an error there, as it is here."""
    rest, sign = text, 1
    if rest[:1] in ("+", "-"):
        sign, rest = (-1 if rest[0] == "-" else 1), rest[1:]
    if rest == "0":
        return 0
    if not rest:
        return None
    total = 0
    while rest:
        match = _DURATION_PART.match(rest)
        assert match is not None  # every group may be empty
        whole, fraction, unit = match.groups()
        if (not whole and not fraction) or unit not in _UNITS:
            return None
        scale = _UNITS[unit]
        total += int(whole or "0") * scale + (int(fraction) * scale // 10 ** len(fraction) if fraction else 0)
        if total > _MAX_NS + (sign < 0):
            return None
        rest = rest[match.end() :]
    return sign * total


def keep_alive_sec(value: str | None) -> float:
    """``envconfig.KeepAlive`` (lines 126-144) for an ``OLLAMA_KEEP_ALIVE`` value, in seconds: a Go duration, else
    a whole number of seconds, else (unset, or neither) 5 minutes; negative means forever (``math.inf``)."""
    text = ollama_var(value or "")
    seconds = DEFAULT_KEEP_ALIVE_SEC
    if text:
        ns = go_duration_ns(text)
        if ns is not None:
            seconds = ns / 1e9
        elif re.fullmatch(r"[+-]?[0-9]+", text) and -(2**63) <= int(text) < 2**63:  # strconv.ParseInt(s, 10, 64)
            seconds = float(int(text))
    return math.inf if seconds < 0 else seconds


def num_parallel(value: str | None) -> int:
    """Requests one loaded model serves at once: ``envconfig.NumParallel`` (``Uint("OLLAMA_NUM_PARALLEL", 1)``,
    lines 259-275: a decimal unsigned integer, else 1) as the scheduler uses it (``server/sched.go: load``, line 497:
    at least 1). Some architectures are held at 1 whatever the setting (sched.go 505-510); hxd does not know a
    model's architecture, so the smoke test reports what it saw beside this."""
    text = ollama_var(value or "")
    parsed = int(text) if text.isascii() and text.isdigit() and int(text) < 2**64 else 1
    return max(parsed, 1)
