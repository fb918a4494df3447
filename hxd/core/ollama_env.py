"""Ollama's environment variables as Ollama reads them (``envconfig/config.go`` at fb30760), not as systemd passes them.

systemd hands the service the value from the env file; Ollama then trims it (``Var``, lines 374-377), so
``OLLAMA_MODELS="/canon "`` names ``/canon``. Wherever hxd reasons about what Ollama will do (validation, the
migration's source, inventory, the API address) it uses these readings; validation reports where the two differ.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from hxd.core.config import Config

_PORT = re.compile(r"[+-]?[0-9]+")


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
