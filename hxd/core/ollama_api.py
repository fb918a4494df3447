"""The few Ollama HTTP API calls the core needs, with the standard library's HTTP client.

Why no client library: hxd talks to one local server over loopback, with requests it builds itself; http.client
keeps the dependency list (and the .deb) short and lets every error be mapped one by one. Calls block, so the
daemon runs them in a thread.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

from hxd.core.modelref import BadReference, parse_ref

DEFAULT_TIMEOUT_SEC = 10.0


class OllamaUnavailable(Exception):
    """Ollama did not answer as expected; the message says how (refused, timeout, HTTP status, bad JSON)."""


def get_json(base_url: str, path: str, timeout: float = DEFAULT_TIMEOUT_SEC) -> object:
    """GET ``path`` and decode the JSON body; any failure becomes OllamaUnavailable naming the URL."""
    parts = urlsplit(base_url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    url = f"{base_url}{path}"
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    except TimeoutError:
        raise OllamaUnavailable(f"{url}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise OllamaUnavailable(f"{url}: {exc.strerror or exc}; is {parts.netloc} running?") from None
    except http.client.HTTPException as exc:
        raise OllamaUnavailable(f"{url}: broken HTTP response ({type(exc).__name__})") from None
    finally:
        connection.close()
    if response.status != 200:
        raise OllamaUnavailable(f"{url}: HTTP {response.status}: {body[:200].decode(errors='replace')}")
    try:
        return json.loads(body)
    except ValueError:
        raise OllamaUnavailable(f"{url}: the answer is not JSON") from None


def list_models(base_url: str, timeout: float = DEFAULT_TIMEOUT_SEC) -> dict[str, str]:
    """``GET /api/tags`` as model key (``ModelRef.key``) -> manifest digest (hex)."""
    document = get_json(base_url, "/api/tags", timeout)
    try:
        entries = document["models"]  # type: ignore[index]
        return {parse_ref(entry["name"]).key: str(entry["digest"]) for entry in entries}
    except (KeyError, TypeError, BadReference) as exc:
        raise OllamaUnavailable(f"{base_url}/api/tags: unexpected answer ({exc})") from None
