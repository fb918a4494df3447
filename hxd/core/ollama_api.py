"""The few Ollama HTTP API calls the core needs, with the standard library's HTTP client.

Why no client library: hxd talks to one local server over loopback, with requests it builds itself; http.client
keeps the dependency list (and the .deb) short and lets every error be mapped one by one. That holds for the
streaming ``POST /api/generate`` of the smoke tests too. The official ``ollama`` package sits on httpx (plus anyio),
has no timeout by default, and folds a 404, a 503 and an error line in the middle of a stream into one
``ResponseError``; httpx alone would bring pooling, HTTP/2 and async that hxd does not use. Reading the NDJSON stream
line by line straight from the socket also leaves nothing between the socket and the clock that times the first
token. Calls block, so the daemon runs them in a thread.
"""

from __future__ import annotations

import http.client
import json
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hxd.core.modelref import BadReference, parse_ref

DEFAULT_TIMEOUT_SEC = 10.0
# Failure codes of a Generation, stable for scripts (they appear in nightly-smoke.jsonl).
FAILURES = (
    "unreachable",  # connection refused, or no route to the server
    "timeout",  # no byte within the time left
    "not_found",  # 404: no such model
    "invalid_name",  # 400 invalid model name (or hxd could not parse the name)
    "bad_request",  # any other 400
    "busy",  # 503: too many requests waiting for a model load (OLLAMA_MAX_QUEUE)
    "http_error",  # any other status
    "stream_error",  # an {"error": ...} line in the stream (the status was already 200)
    "disconnected",  # the server closed the connection before the final chunk
    "bad_response",  # not Ollama's JSON
)
# The longest NDJSON line read; a final chunk carries the context array, some kilobytes.
_MAX_LINE = 8 * 1024 * 1024
_NS = 1e9


class OllamaUnavailable(Exception):
    """Ollama did not answer as expected; the message says how (refused, timeout, HTTP status, bad JSON)."""


def _connection(base_url: str, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(base_url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)


def _target(base_url: str, path: str) -> str:
    """The request target: the URL's own path (a proxy's prefix, or what OLLAMA_HOST carries) before the route."""
    return urlsplit(base_url).path.rstrip("/") + path


def get_json(base_url: str, path: str, timeout: float = DEFAULT_TIMEOUT_SEC) -> object:
    """GET ``path`` and decode the JSON body; any failure becomes OllamaUnavailable naming the URL."""
    connection = _connection(base_url, timeout)
    url = f"{base_url}{path}"
    try:
        connection.request("GET", _target(base_url, path))
        response = connection.getresponse()
        body = response.read()
    except TimeoutError:
        raise OllamaUnavailable(f"{url}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise OllamaUnavailable(f"{url}: {exc.strerror or exc}; is {urlsplit(base_url).netloc} running?") from None
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
        return {parse_ref(entry["name"], stored=True).key: str(entry["digest"]) for entry in entries}
    except (KeyError, TypeError, BadReference) as exc:
        raise OllamaUnavailable(f"{base_url}/api/tags: unexpected answer ({exc})") from None


def version(base_url: str, timeout: float = DEFAULT_TIMEOUT_SEC) -> str:
    """``GET /api/version``: the server's version string (``{"version": "0.33.0-rc2"}``, server/routes.go line 1880)."""
    document = get_json(base_url, "/api/version", timeout)
    found = document.get("version") if isinstance(document, dict) else None
    if not isinstance(found, str) or not found:
        raise OllamaUnavailable(f"{base_url}/api/version: unexpected answer (no version string)")
    return found


def keep_alive_value(seconds: float) -> int | float:
    """``keep_alive`` on the wire: a number of seconds (``api.Duration.UnmarshalJSON``, api/types.go 1243-1269: a
    number is seconds, a negative one forever); -1 for ``math.inf``. A number, not a string: ``"3600"`` is a 400."""
    if math.isinf(seconds):
        return -1
    return int(seconds) if seconds == int(seconds) else seconds


@dataclass(frozen=True)
class Generation:
    """One ``POST /api/generate``: when its first token came and what the final chunk said, or why it failed.

    ``failure`` is empty on success, else one of FAILURES, and ``reason`` a one-line message saying what happened
    and what to do (the model is in ``model``). ``first_token_sec`` is measured here: from sending the request (on
    an open connection) to the first chunk whose ``response`` or ``thinking`` is non-empty (None for a load
    request, which has no text).
    ``total_sec``, ``load_sec`` and ``eval_sec`` are Ollama's own ``total_duration``, ``load_duration`` and
    ``eval_duration`` (nanoseconds on the wire), None when the final chunk left them out (Go omits zero values).
    ``wall_sec`` runs from the request to its end.
    """

    model: str
    failure: str = ""
    reason: str = ""
    first_token_sec: float | None = None
    total_sec: float | None = None
    load_sec: float | None = None
    eval_count: int = 0
    eval_sec: float | None = None
    done_reason: str = ""
    wall_sec: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failure

    @property
    def tokens_per_sec(self) -> float | None:
        """``eval_count / eval_duration``, as Ollama defines it (docs/ollama.md, "POST /api/generate")."""
        return self.eval_count / self.eval_sec if self.eval_count and self.eval_sec else None


def generate(
    base_url: str,
    model: str,
    prompt: str = "",
    options: dict[str, Any] | None = None,
    timeout: float = DEFAULT_TIMEOUT_SEC,
    keep_alive: float | None = None,
) -> Generation:
    """Stream ``POST /api/generate`` for ``model`` (the name exactly as sent: never a pinned one) and time it.

    Without ``prompt`` this is Ollama's load request: the model is loaded and a single ``done_reason: "load"``
    object comes back. ``keep_alive`` (seconds, ``math.inf`` for ever; None leaves it to OLLAMA_KEEP_ALIVE) is how
    long Ollama keeps the model loaded after this request; a load request with 0 would unload it instead, so it is
    refused here. ``timeout`` bounds the whole exchange. Every failure is returned, never raised.
    """
    body: dict[str, Any] = {"model": model}
    if prompt:
        body["prompt"] = prompt
    if options:
        body["options"] = options
    if keep_alive is not None:
        if not prompt and keep_alive == 0:
            raise ValueError("a load request with keep_alive 0 is Ollama's unload request")
        body["keep_alive"] = keep_alive_value(keep_alive)
    exchange = _Exchange(base_url, model, timeout)
    connection = _connection(base_url, timeout)
    try:
        connection.connect()
        exchange.start = time.perf_counter()  # the clock times Ollama, not the TCP handshake
        connection.request(
            "POST",
            _target(base_url, "/api/generate"),
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        sock = connection.sock  # getresponse() hands it to the response (and forgets it) when the server will close
        assert sock is not None
        response = connection.getresponse()
        if response.status != 200:
            return exchange.http_failure(response.status, response.read(_MAX_LINE))
        while True:
            sock.settimeout(max(exchange.deadline - time.perf_counter(), 0.001))
            line = response.readline(_MAX_LINE)
            arrived = time.perf_counter()
            if not line:
                return exchange.closed()
            result = exchange.chunk(line, arrived)
            if result is not None:
                return result
    except TimeoutError:
        where = exchange.where()
        return exchange.fail("timeout", f"no complete answer from {exchange.netloc} within {timeout:g} s ({where})")
    except ConnectionRefusedError:
        return exchange.fail("unreachable", f"connection refused by {exchange.netloc}; is Ollama running?")
    except (ConnectionResetError, http.client.IncompleteRead):  # RemoteDisconnected is a ConnectionResetError
        return exchange.closed()
    except OSError as exc:
        return exchange.fail("unreachable", f"cannot reach {exchange.netloc}: {exc.strerror or exc}")
    except http.client.HTTPException as exc:
        return exchange.fail("bad_response", f"broken HTTP response from {exchange.netloc} ({type(exc).__name__})")
    finally:
        connection.close()


class _Exchange:
    """The state of one streamed request: the clock, the chunks so far, and how each outcome is worded."""

    def __init__(self, base_url: str, model: str, timeout: float) -> None:
        self.netloc = urlsplit(base_url).netloc
        self.model = model
        self.start = time.perf_counter()
        self.deadline = self.start + timeout
        self.chunks = 0
        self.first_token_sec: float | None = None

    def where(self) -> str:
        if not self.chunks:
            return "before the first chunk"
        return f"after {self.chunks} chunk{'s' if self.chunks > 1 else ''}"

    def fail(self, failure: str, reason: str) -> Generation:
        return Generation(
            self.model,
            failure,
            reason,
            first_token_sec=self.first_token_sec,
            wall_sec=time.perf_counter() - self.start,
        )

    def closed(self) -> Generation:
        where = self.where()
        return self.fail("disconnected", f"{self.netloc} closed the connection {where}; see Ollama's log (a crash?)")

    def http_failure(self, status: int, body: bytes) -> Generation:
        try:
            error = str(json.loads(body)["error"])
        except (ValueError, TypeError, KeyError):
            error = body[:200].decode(errors="replace").strip()
        said = f"HTTP {status}: {error}"
        if status == 404:
            return self.fail("not_found", f"{said}; pull the model or correct its name")
        if status == 400 and error == "invalid model name":
            return self.fail("invalid_name", f"{said}; write the name as [host/][namespace/]model:tag")
        if status == 400:
            return self.fail("bad_request", f"Ollama rejected the request ({said})")
        if status == 503:
            return self.fail("busy", f"{said}; the queue for model loads is full (OLLAMA_MAX_QUEUE)")
        return self.fail("http_error", f"{said}; see Ollama's log")

    def chunk(self, line: bytes, arrived: float) -> Generation | None:
        """Take one NDJSON line; returns the outcome once the stream is over, else None."""
        try:
            data = json.loads(line)
        except ValueError:
            return self.fail("bad_response", f"line {self.chunks + 1} of the stream is not JSON")
        if not isinstance(data, dict):
            return self.fail("bad_response", f"line {self.chunks + 1} of the stream is not a JSON object")
        if "error" in data:
            return self.fail(
                "stream_error", f"Ollama reported an error {self.where()}: {data['error']}; see Ollama's log"
            )
        self.chunks += 1
        text = data.get("response") or data.get("thinking")
        if self.first_token_sec is None and isinstance(text, str) and text:
            self.first_token_sec = arrived - self.start
        if data.get("done") is not True:
            return None
        eval_count = data.get("eval_count", 0)
        return Generation(
            self.model,
            first_token_sec=self.first_token_sec,
            total_sec=_seconds(data, "total_duration"),
            load_sec=_seconds(data, "load_duration"),
            eval_count=eval_count if isinstance(eval_count, int) else 0,
            eval_sec=_seconds(data, "eval_duration"),
            done_reason=str(data.get("done_reason", "")),
            wall_sec=arrived - self.start,
        )


def _seconds(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    return value / _NS if isinstance(value, int) and value > 0 else None
