#!/usr/bin/env python3
"""A faithful stand-in for ``ollama serve``: real model store, real HTTP framing, fake inference.

Why this exists: hxd migrates Ollama model stores and smoke-tests first-token latency, and its tests, ``make demo``
and the Debian 12 end-to-end containers need an ``ollama.service`` that behaves like the real server at its edges
(disk layout, name resolution, status codes, error bodies, NDJSON streaming, startup pruning) without GPUs or
gigabytes of weights. Real Ollama cannot be installed here, so this file is the "true edge" fake.

Why one file of this size, and only the standard library: ``tools/e2e`` copies this file alone into a bare Debian 12
container (``/usr/local/lib/ollama-stub/ollama_stub.py``) and runs it as ``ollama.service`` with
``ExecStart=/usr/bin/python3``, Debian's Python 3.11, with no checkout, venv or hxd on its path. A module split off
from it would not travel with it, so it stays one file.

Every behaviour follows ``docs/ollama.md``, which describes ``github.com/ollama/ollama`` at commit
``fb30760996871fa9460115c753afd2c60d4ab0f7``. Where that page is silent, the code was read at that same commit;
those places name the Go function they copy.

What the stub does like the real server:

* Model store: it reads ``$OLLAMA_MODELS`` (manifests exactly 4 levels deep, blobs named ``sha256-<hex>``) on every
  request, with the same glob rules. Dot-files at depth 4 count. A dangling symlink breaks listing. The
  manifest digest is the sha256 of the manifest bytes.
* ``/api/tags`` keeps a cache keyed by manifest digest, as ``server/model_list_cache.go`` does: each call
  re-globs the manifests, but an entry whose manifest bytes did not change keeps its earlier ``modified_at`` and
  details. Models whose config or template blob cannot be read are left out.
* Startup: ``fixBlobs`` renames ``sha256:`` blobs to ``sha256-``. Then, unless ``OLLAMA_NOPRUNE`` is set, the
  ``PruneLayers`` + ``PruneDirectory`` pass runs: it deletes non-digest names and unreferenced blobs whose mtime
  is older than the v0.21+ one-hour grace period, skips the whole prune when a manifest is corrupt, and removes
  empty manifest directories. hxd's migration design relies on this pruning being real, so the stub really
  deletes files.
* Names: ``host/namespace/model:tag`` with the defaults ``registry.ollama.ai``, ``library`` and ``latest``.
  Lookups are case-insensitive against the manifests on disk. ``:local``/``:cloud`` source suffixes are
  handled. ``name@sha256:...`` gives 400 ``invalid model name``.
* HTTP: the status line, ``Content-Type`` values, Go's compact HTML-escaping JSON, ``created_at`` in RFC 3339
  with nanoseconds, and durations in nanoseconds all match the real server. Streaming sends one NDJSON line per
  HTTP/1.1 chunk and sends no bytes before the first chunk. An error before the first chunk gets its real
  status; an error after it is a final ``{"error": ...}`` line under status 200.
* Scheduling: models are loaded on demand (``load_delay``) and kept for ``keep_alive``. A loaded model admits
  ``max_parallel`` (``OLLAMA_NUM_PARALLEL``) requests at once; the rest wait, first come first served. A request
  without ``keep_alive`` leaves a loaded model's duration as it was. Requests that need a load queue
  up to ``max_queue`` (``OLLAMA_MAX_QUEUE``); beyond that they get 503
  ``server busy, please try again.  maximum pending requests exceeded``.
* ``OLLAMA_HOST`` and ``OLLAMA_MODELS`` are parsed as ``envconfig`` does: spaces and quotes are trimmed, the
  scheme sets the default port, and a relative path is used verbatim. When the stub is bound to loopback it
  checks the ``Host`` header the way ``allowedHostsMiddleware`` does. SIGINT and SIGTERM close every
  connection and exit with status 0.

What the stub does differently from the real server (deliberately):

* No GGUF parsing or inference. A model counts as a "completion" model when its weights blob exists (or when
  its config lists the capability), and its text, timing and failures come from the behaviour file.
  ``/api/show`` fills ``model_info`` from the config blob instead of GGUF metadata, and leaves out
  ``tensors``. ``/api/tags`` does not derive capabilities from GGUF headers or Go templates.
* The list cache is built lazily on the first ``/api/tags`` call, not hydrated in the background at startup.
  Nothing observable changes, because the real ``List`` waits for hydration and then re-globs anyway.
* Models are keyed by their weights digest, the equivalent of ``schedulerModelKey``. There is no VRAM
  fitting, no ``OLLAMA_MAX_LOADED_MODELS`` and no ``needsReload``. ``max_parallel`` is read live from the
  behaviour file, whereas the real server fixes ``OLLAMA_NUM_PARALLEL`` when a runner starts.
* ``:cloud`` models and remote (``remote_host``) models get 502, since there is no network. Pull, push,
  create, copy, embed and the OpenAI/Anthropic routes answer 501 ``not implemented by ollama_stub``. CORS
  headers are not sent, and the ``Host`` check leaves out ``isLocalIP`` (addresses of local interfaces).
* The digest hashes the whole manifest file. The real server hashes only the bytes its JSON decoder read,
  which is the same thing for any manifest under a few kilobytes.
* For request-body JSON syntax errors, the stub's message only approximates Go's ``encoding/json`` text.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import email.utils
import errno
import hashlib
import http
import ipaddress
import json
import math
import os
import re
import select
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

DEFAULT_VERSION: Final = "0.33.0-rc2"  # newest tag at the commit docs/ollama.md describes
DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
DEFAULT_TAG: Final = "latest"
MISSING_PART: Final = "!MISSING!"  # types/model/name.go: a "promised" but empty part; never valid
FOREVER_NS: Final = 2**63 - 1  # time.Duration(math.MaxInt64): what a negative keep_alive becomes
PRUNE_GRACE_S: Final = 3600.0  # server/images.go: layerPruneGracePeriod (v0.21.0+)

ERR_MAX_QUEUE: Final = "server busy, please try again.  maximum pending requests exceeded"
ERR_INVALID_NAME: Final = "invalid model name"
ERR_RUNNING: Final = "an error was encountered while running the model"  # docs/api/errors.mdx
ERR_NOT_IMPLEMENTED: Final = "not implemented by ollama_stub"

JSON_CT: Final = "application/json; charset=utf-8"  # gin's c.JSON
NDJSON_CT: Final = "application/x-ndjson"  # streamResponse
TEXT_CT: Final = "text/plain; charset=utf-8"  # gin's c.String
PLAIN_CT: Final = "text/plain"  # gin's 404/405 bodies

DEFAULT_TEXT: Final = (
    "The sky is blue because molecules in the air scatter the short blue wavelengths of sunlight "
    "far more than the long red ones, so blue light reaches our eyes from every direction."
)

DIGEST_RE: Final = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")  # manifest/paths.go: BlobsPath
_HOST_PART: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
_NS_PART: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_MODEL_PART: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


# ---------------------------------------------------------------------------------------------------------------
# Go-compatible formatting: clients and hxd compare bytes and parse timestamps, so they must look like Go's.
# ---------------------------------------------------------------------------------------------------------------


def go_json(value: Any) -> bytes:
    """Encode like Go's ``json.Marshal``: compact, UTF-8, with ``<``, ``>``, ``&``, U+2028/9 escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text.encode("utf-8")


def go_time(ns: int, *, utc: bool) -> str:
    """Format a Unix time in nanoseconds as Go's ``time.Time`` JSON (RFC 3339, trailing zeros trimmed).

    ``created_at`` uses ``time.Now().UTC()`` (hence ``Z``). ``modified_at`` and ``expires_at`` use local time
    with a numeric offset, printed as ``Z`` when the offset is zero, as Go does.
    """
    sec, frac = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(sec, tz=UTC)
    if not utc:
        moment = moment.astimezone()
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += ("." + f"{frac:09d}").rstrip("0")
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds()) // 60 if offset is not None else 0
    if minutes == 0:
        return text + "Z"
    sign = "+" if minutes > 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{mins:02d}"


def go_quote(text: str) -> str:
    """Go's ``%q`` for the plain strings that appear in error messages."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def go_duration_string(ns: int) -> str:
    """Go's ``time.Duration.String`` (used in the GIN request log line), e.g. ``1.5ms`` or ``2m3.5s``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)

    def frac(value: int, digits: int) -> str:
        whole, rest = divmod(value, 10**digits)
        tail = f"{rest:0{digits}d}".rstrip("0")
        return f"{whole}.{tail}" if tail else str(whole)

    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{frac(u, 3)}µs"
    if u < 1_000_000_000:
        return f"{sign}{frac(u, 6)}ms"
    hours, rem = divmod(u, 3_600_000_000_000)
    minutes, rem = divmod(rem, 60_000_000_000)
    out = f"{frac(rem, 9)}s"
    if hours or minutes:
        out = f"{minutes}m{out}"
    if hours:
        out = f"{hours}h{out}"
    return sign + out


_DURATION_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def parse_go_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` in nanoseconds; raises ValueError carrying Go's error text.

    ``keep_alive`` strings go through this, and a unit-less ``"3600"`` must fail with Go's
    ``time: missing unit in duration "3600"``, which the server returns as a 400.
    """
    quoted = go_quote(text)
    rest = text
    negative = False
    if rest[:1] in ("+", "-"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if rest == "":
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0
    while rest:
        match = re.match(r"(\d*)(?:\.(\d*))?", rest)
        assert match is not None  # the pattern accepts the empty string
        whole, fraction = match.group(1), match.group(2)
        if whole == "" and not fraction:
            raise ValueError(f"time: invalid duration {quoted}")
        rest = rest[match.end() :]
        unit_match = re.match(r"[^\d.]*", rest)
        unit = unit_match.group(0) if unit_match else ""
        if unit == "":
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise ValueError(f"time: unknown unit {go_quote(unit)} in duration {quoted}")
        rest = rest[len(unit) :]
        scale = _DURATION_UNITS[unit]
        total += int(whole or "0") * scale
        if fraction:
            total += int(fraction) * scale // 10 ** len(fraction)
    if total > FOREVER_NS:
        raise ValueError(f"time: invalid duration {quoted}")
    return -total if negative else total


def env_var(key: str) -> str:
    """``envconfig.Var``: the environment value with surrounding spaces and quotes trimmed."""
    return os.environ.get(key, "").strip().strip("\"'")


def go_parse_bool(text: str) -> bool | None:
    """``strconv.ParseBool``; None where Go would return an error."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def env_bool(key: str) -> bool:
    """``envconfig.Bool``: unset or empty means false; a value that does not parse (e.g. ``yes``) means true."""
    value = env_var(key)
    if not value:
        return False
    parsed = go_parse_bool(value)
    return True if parsed is None else parsed


def env_uint(key: str, default: int) -> int:
    """``envconfig.Uint``: a decimal unsigned integer, else the default."""
    value = env_var(key)
    if value.isdigit() and value.isascii():
        return int(value)
    return default


def env_keep_alive_ns() -> int:
    """``envconfig.KeepAlive``: Go duration or integer seconds; default 5m; negative means forever."""
    value = env_var("OLLAMA_KEEP_ALIVE")
    keep = 5 * 60 * 1_000_000_000
    if value:
        try:
            keep = parse_go_duration(value)
        except ValueError:
            if re.fullmatch(r"[+-]?\d+", value):
                keep = int(value) * 1_000_000_000
    return FOREVER_NS if keep < 0 else keep


def _split_host_port(hostport: str) -> tuple[str, str]:
    """Go's ``net.SplitHostPort`` (ValueError where Go returns an error)."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not hostport[end + 1 : end + 2] == ":":
            raise ValueError("missing port in address")
        return hostport[1:end], hostport[end + 2 :]
    index = hostport.rfind(":")
    if index < 0:
        raise ValueError("missing port in address")
    host, port = hostport[:index], hostport[index + 1 :]
    if ":" in host:
        raise ValueError("too many colons in address")
    return host, port


def parse_ollama_host(raw: str) -> tuple[str, int]:
    """``envconfig.Host``: what ``ollama serve`` binds to.

    The default is ``127.0.0.1:11434``. A bare ``host:port`` means http. ``http://`` without a port means 80
    and ``https://`` without a port means 443. A bare host keeps port 11434, except bare ``ollama.com``, which
    means ``ollama.com:443``. An invalid port falls back to the scheme's default. The scheme never turns on
    TLS: ``ollama serve`` always speaks plain HTTP.
    """
    text = raw.strip()
    default_port = "11434"
    scheme, sep, hostport = text.partition("://")
    if not sep:
        hostport = text
        if text == "ollama.com":
            hostport = "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport = hostport.partition("/")[0]
    try:
        host, port = _split_host_port(hostport)
    except ValueError:
        host, port = "127.0.0.1", default_port
        try:
            host = str(ipaddress.ip_address(hostport.strip("[]")))
        except ValueError:
            if hostport:
                host = hostport
    if not re.fullmatch(r"[+-]?\d+", port) or not 0 <= int(port) <= 65535:
        port = default_port
    return host, int(port)


def default_models_dir() -> str:
    """``envconfig.Models``: ``$OLLAMA_MODELS`` used verbatim, else ``$HOME/.ollama/models``."""
    value = env_var("OLLAMA_MODELS")
    if value:
        return value
    home = os.environ.get("HOME") or str(Path.home())
    return os.path.join(home, ".ollama", "models")


_log_lock = threading.Lock()


def log(message: str, level: str = "INFO") -> None:
    """Write one slog-style line to stderr, as ``ollama serve`` does, so journal readers see familiar text."""
    stamp = go_time(time.time_ns(), utc=False)
    line = f"time={stamp} level={level} source=ollama_stub msg={json.dumps(message, ensure_ascii=False)}\n"
    with _log_lock:
        sys.stderr.write(line)
        sys.stderr.flush()


def _strerror(exc: OSError) -> str:
    """Go prints errno text in lower case (``no such file or directory``)."""
    return (exc.strerror or str(exc)).lower()


# ---------------------------------------------------------------------------------------------------------------
# Model names (types/model/name.go, internal/modelref/modelref.go)
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Name:
    """A model name. Its parts keep their case, because the case is preserved on disk."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> Name:
        """``ParseName``: ``ParseNameBare`` merged with the defaults.

        The tag is split off first, but only when the last ``:`` comes after the last ``/``. Then the model,
        the namespace and the host (with any ``scheme://`` removed) are split at ``/``.
        """
        host = namespace = tag = ""
        rest = text
        if rest.rfind(":") > rest.rfind("/"):
            rest, tag = _cut_promised(rest, ":")
        model = ""
        index = rest.rfind("/")
        if index < 0:
            model = rest
        else:
            rest, model = rest[:index] or MISSING_PART, rest[index + 1 :] or MISSING_PART
            index = rest.rfind("/")
            if index < 0:
                namespace = rest
            else:
                rest, namespace = rest[:index] or MISSING_PART, rest[index + 1 :] or MISSING_PART
                scheme_sep = rest.find("://")
                host = rest[scheme_sep + 3 :] if scheme_sep >= 0 else rest
        return cls(host or DEFAULT_HOST, namespace or DEFAULT_NAMESPACE, model, tag or DEFAULT_TAG)

    @classmethod
    def from_filepath(cls, rel: str) -> Name | None:
        """``ParseNameFromFilepath``: exactly four path parts, all valid."""
        parts = rel.split(os.sep)
        if len(parts) != 4:
            return None
        name = cls(*parts)
        return name if name.is_valid() else None

    def is_valid(self) -> bool:
        """``IsFullyQualified``: the byte-length limits and character classes of each part."""
        return (
            _valid_part(_HOST_PART, self.host, 350)
            and _valid_part(_NS_PART, self.namespace, 80)
            and _valid_part(_MODEL_PART, self.model, 80)
            and _valid_part(_MODEL_PART, self.tag, 80)
        )

    def filepath(self) -> str:
        """The manifest path relative to ``manifests/``."""
        return os.path.join(self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def display_shortest(self) -> str:
        """``DisplayShortest``: drop the host and namespace while they are the defaults (case-insensitive)."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def folded(self) -> str:
        """A key for ``strings.EqualFold`` comparisons."""
        return str(self).lower()


def _cut_promised(text: str, sep: str) -> tuple[str, str]:
    index = text.rfind(sep)
    return text[:index] or MISSING_PART, text[index + len(sep) :] or MISSING_PART


def _valid_part(pattern: re.Pattern[str], part: str, max_len: int) -> bool:
    return 1 <= len(part.encode("utf-8")) <= max_len and pattern.fullmatch(part) is not None


class RefError(Exception):
    """A model reference the server rejects before looking at the store; ``kind`` picks the response."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "required" | "conflict" | "unqualified"
        self.message = message


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """``parsedModelRef``: the request's model string after source-suffix handling."""

    original: str
    base: str
    source: str  # "" | "local" | "cloud"
    name: Name


def _parse_source_suffix(raw: str) -> tuple[str, str, bool]:
    index = raw.rfind(":")
    if index >= 0:
        suffix_raw = raw[index + 1 :].strip()
        suffix = suffix_raw.lower()
        if suffix in ("cloud", "local"):
            return raw[:index], suffix, True
        if "/" not in suffix_raw and suffix.endswith("-cloud"):
            return raw[: index + 1] + suffix_raw[: -len("-cloud")], "cloud", True
    return raw, "", False


def parse_model_ref(raw: str, *, for_pull: bool = False) -> ModelRef:
    """``parseAndValidateModelRef`` (or ``parseNormalizePullModelRef`` when ``for_pull``)."""
    text = raw.strip()
    if not text:
        raise RefError("required", "model is required")
    base, source, explicit = _parse_source_suffix(text)
    if explicit and _parse_source_suffix(base)[2]:
        raise RefError("conflict", f"use either :local or :cloud, not both: {go_quote(text)}")
    if for_pull and source == "cloud":
        explicit_tag = base.rfind(":") > base.rfind("/")
        base = base + ("-cloud" if explicit_tag else ":cloud")
    name = Name.parse(base)
    if not name.is_valid():
        raise RefError("unqualified", f"unqualified name: {name}")
    return ModelRef(text, base, source, name)


# ---------------------------------------------------------------------------------------------------------------
# JSON decoding with Go's leniency and Go's error texts
# ---------------------------------------------------------------------------------------------------------------


class GoError(Exception):
    """An error whose text is what the Go server would print; ``not_exist`` marks ``fs.ErrNotExist``."""

    def __init__(self, message: str, *, not_exist: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.not_exist = not_exist


_GO_KINDS: Final = {bool: "bool", int: "number", float: "number", str: "string", list: "array", dict: "object"}
_PY_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "bool": (bool,),
    "int": (int, float),
    "int64": (int, float),
    "float64": (int, float),
    "map[string]interface {}": (dict,),
    "[]string": (list,),
    "[]int": (list,),
    "[]api.Message": (list,),
    "[]api.ImageData": (list,),
    "json.RawMessage": (bool, int, float, str, list, dict),
}


def _go_kind(value: Any) -> str:
    return _GO_KINDS.get(type(value), "value")


def go_decode_value(text: str) -> Any:
    """``json.Decoder.Decode`` of the first JSON value; trailing bytes are ignored as Go's decoder does.

    Raises GoError with ``EOF`` for empty input (the server turns that into ``missing request body``).
    """
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise GoError("EOF")
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped)
    except json.JSONDecodeError as exc:
        raise GoError(_go_syntax_message(exc, stripped)) from None
    return value


def _go_syntax_message(exc: json.JSONDecodeError, doc: str) -> str:
    if exc.pos >= len(doc.rstrip()) or exc.msg.startswith("Unterminated"):
        return "unexpected EOF"
    char = doc[exc.pos]
    shown = "'\\''" if char == "'" else f"'{char}'"
    if exc.msg.startswith("Expecting ':'"):
        return f"invalid character {shown} after object key"
    if exc.msg.startswith("Expecting ',' delimiter"):
        return f"invalid character {shown} after object key:value pair"
    if exc.msg.startswith("Expecting property name"):
        return f"invalid character {shown} looking for beginning of object key string"
    if exc.msg.startswith("Invalid control character"):
        return f"invalid character {shown} in string literal"
    return f"invalid character {shown} looking for beginning of value"


def go_field(obj: dict[str, Any], key: str) -> Any:
    """Look up a struct field the way ``encoding/json`` does: case-insensitively, the last match wins."""
    found: Any = None
    folded = key.lower()
    for name, value in obj.items():
        if name == key or name.lower() == folded:
            found = value
    return found


def go_typed(struct: str, obj: dict[str, Any], key: str, go_type: str) -> Any:
    """Read ``obj[key]`` as Go type ``go_type``; raise GoError with Go's UnmarshalTypeError text on a mismatch."""
    value = go_field(obj, key)
    if value is None:
        return None
    allowed = _PY_TYPES[go_type]
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if ok and go_type in ("int", "int64") and isinstance(value, float):
        if not value.is_integer():
            raise GoError(
                f"json: cannot unmarshal number {value!r} into Go struct field {struct}.{key} of type {go_type}"
            )
        value = int(value)
    if not ok:
        raise GoError(f"json: cannot unmarshal {_go_kind(value)} into Go struct field {struct}.{key} of type {go_type}")
    return value


def bind_request(body: bytes, struct: str, fields: dict[str, str]) -> dict[str, Any]:
    """gin's ``ShouldBindJSON`` into ``api.<struct>``; raise ApiError(400) with the handler's texts."""
    try:
        value = go_decode_value(body.decode("utf-8", errors="replace"))
    except GoError as exc:
        if exc.message == "EOF":
            raise ApiError(400, "missing request body") from None
        raise ApiError(400, exc.message) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"json: cannot unmarshal {_go_kind(value)} into Go value of type api.{struct}")
    out: dict[str, Any] = {}
    try:
        for key, go_type in fields.items():
            if go_type == "keep_alive":
                out[key] = _keep_alive_field(go_field(value, key))
            elif go_type == "think":
                out[key] = _think_field(go_field(value, key))
            else:
                out[key] = go_typed(struct, value, key, go_type)
    except GoError as exc:
        raise ApiError(400, exc.message) from None
    return out


def _keep_alive_field(value: Any) -> int | None:
    """``api.Duration.UnmarshalJSON``: seconds as a number, or a Go duration string; negative means forever."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        go_type = {bool: "bool", list: "[]interface {}", dict: "map[string]interface {}"}[type(value)]
        raise GoError(f"Unsupported type: '{go_type}'")
    if isinstance(value, str):
        try:
            duration = parse_go_duration(value)
        except ValueError as exc:
            raise GoError(str(exc)) from None
        return FOREVER_NS if duration < 0 else duration
    if value < 0:
        return FOREVER_NS
    return min(int(value * 1_000_000_000), FOREVER_NS)


def _think_field(value: Any) -> bool | str | None:
    """``api.ThinkValue.UnmarshalJSON``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value not in ("high", "medium", "low", "max"):
            raise GoError(
                f'invalid think value: {go_quote(value)} (must be "high", "medium", "low", "max", true, or false)'
            )
        return value
    raise GoError('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


# ---------------------------------------------------------------------------------------------------------------
# The model store (manifest/, server/images.go, server/fixblobs.go)
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layer:
    """``manifest.Layer``."""

    media_type: str
    digest: str
    size: int
    from_: str
    name: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """``manifest.Manifest`` plus what ``ParseNamedManifest`` records: path, mtime and digest."""

    config: Layer
    layers: tuple[Layer, ...]
    path: str
    mtime_ns: int
    digest: str

    @property
    def size(self) -> int:
        """``Manifest.Size``: the declared sizes of all layers plus the config."""
        return sum(layer.size for layer in self.layers) + self.config.size


def _decode_layer(value: Any, where: str) -> Layer:
    if value is None:
        return Layer("", "", 0, "", "")
    if not isinstance(value, dict):
        raise GoError(f"json: cannot unmarshal {_go_kind(value)} into Go struct field {where} of type manifest.Layer")
    return Layer(
        go_typed("Layer", value, "mediaType", "string") or "",
        go_typed("Layer", value, "digest", "string") or "",
        go_typed("Layer", value, "size", "int64") or 0,
        go_typed("Layer", value, "from", "string") or "",
        go_typed("Layer", value, "name", "string") or "",
    )


@dataclasses.dataclass
class ModelInfo:
    """What ``GetModel`` reads from a manifest and its small blobs."""

    name: Name
    manifest: Manifest
    config: dict[str, Any]
    model_path: str | None
    parent_model: str
    projectors: int
    template: str
    system: str
    params: dict[str, Any] | None
    messages: list[Any]
    licenses: list[str]

    @property
    def remote(self) -> bool:
        return bool(self.config.get("remote_host") and self.config.get("remote_model"))

    def capabilities(self) -> list[str]:
        """The config's capabilities, plus ``completion`` when the weights blob exists (the stub's GGUF stand-in).

        The real server opens the GGUF. If the file is missing, no capability comes from it, and
        ``/api/generate`` answers 400 ``"<m>" does not support generate``. The stub copies that outcome.
        """
        caps: list[str] = []
        for cap in self.config.get("capabilities") or []:
            if cap not in caps:
                caps.append(cap)
        if (
            self.model_path is not None
            and os.path.isfile(self.model_path)
            and "embedding" not in caps
            and "completion" not in caps
        ):
            caps.insert(0, "completion")
        if self.projectors and "vision" not in caps:
            caps.append("vision")
        return caps

    def details(self) -> dict[str, Any]:
        """``api.ModelDetails`` as ``/api/show`` and ``/api/ps`` fill it."""
        return {
            "parent_model": self.parent_model,
            "format": self.config.get("model_format") or "",
            "family": self.config.get("model_family") or "",
            "families": self.config.get("model_families"),
            "parameter_size": self.config.get("model_type") or "",
            "quantization_level": self.config.get("file_type") or "",
        }


_CONFIG_FIELDS: Final = {
    "model_format": "string",
    "model_family": "string",
    "model_families": "[]string",
    "model_type": "string",
    "file_type": "string",
    "renderer": "string",
    "parser": "string",
    "requires": "string",
    "remote_host": "string",
    "remote_model": "string",
    "capabilities": "[]string",
    "context_length": "int",
    "embedding_length": "int",
    "base_name": "string",
    "architecture": "string",
    "os": "string",
}


class StoreError(Exception):
    """An error that breaks ``manifest.Manifests`` itself (the 500 of ``/api/tags``)."""


class Store:
    """``$OLLAMA_MODELS``, read on every request like the real server does."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.manifests_dir = os.path.join(root, "manifests")
        self.blobs_dir = os.path.join(root, "blobs")

    def ensure_dirs(self) -> None:
        """``manifest.Path`` / ``BlobsPath("")``: both directories are created (0755) on first use."""
        os.makedirs(self.blobs_dir, mode=0o755, exist_ok=True)
        os.makedirs(self.manifests_dir, mode=0o755, exist_ok=True)

    def blob_path(self, digest: str) -> str:
        """``BlobsPath``: only ``sha256[:-]<64 hex>`` is accepted; ``:`` becomes ``-``."""
        if not DIGEST_RE.match(digest):
            raise GoError("invalid digest format")
        return os.path.join(self.blobs_dir, digest.replace(":", "-"))

    def glob_manifests(self) -> list[str]:
        """``filepath.Glob(manifests/*/*/*/*)``.

        Dot-files match, as Go's ``*`` does. Directory levels that cannot be read, or are not directories,
        are skipped silently. Symlinked directories are followed. Names are sorted within each level.
        """
        os.makedirs(self.manifests_dir, mode=0o755, exist_ok=True)
        level = [self.manifests_dir]
        for _ in range(4):
            following: list[str] = []
            for directory in level:
                if not os.path.isdir(directory):
                    continue
                try:
                    names = sorted(os.listdir(directory))
                except OSError:
                    continue
                following.extend(os.path.join(directory, name) for name in names)
            level = following
        return level

    def manifests(self, continue_on_error: bool) -> dict[Name, Manifest]:
        """``manifest.Manifests``.

        With ``continue_on_error`` false, a bad name or an unparseable manifest is an error; this is how
        startup decides to skip pruning. A path that cannot be stat'ed (a dangling symlink) is an error
        even with ``continue_on_error`` true.
        """
        found: dict[Name, Manifest] = {}
        for match in self.glob_manifests():
            try:
                mode = os.stat(match).st_mode
            except OSError as exc:
                raise StoreError(f"stat {match}: {_strerror(exc)}") from None
            if stat.S_ISDIR(mode):
                continue
            rel = os.path.relpath(match, self.manifests_dir)
            name = Name.from_filepath(rel)
            if name is None:
                if not continue_on_error:
                    raise StoreError(f"{rel} %!w(<nil>)")
                log(f"bad manifest name path={rel}", "WARN")
                continue
            try:
                found[name] = self.parse_named_manifest(name)
            except GoError as exc:
                if not continue_on_error:
                    raise StoreError(f"{name} {exc.message}") from None
                log(f"bad manifest name={name} error={exc.message}", "WARN")
        return found

    def parse_named_manifest(self, name: Name) -> Manifest:
        """``ParseNamedManifest``: open, stat, decode; the digest is the sha256 of the bytes."""
        path = os.path.join(self.manifests_dir, name.filepath())
        try:
            with open(path, "rb") as handle:
                mtime_ns = os.fstat(handle.fileno()).st_mtime_ns
                data = handle.read()
        except OSError as exc:
            raise GoError(f"open {path}: {_strerror(exc)}", not_exist=exc.errno == errno.ENOENT) from None
        value = go_decode_value(data.decode("utf-8", errors="replace"))
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise GoError(f"json: cannot unmarshal {_go_kind(value)} into Go value of type manifest.Manifest")
        go_typed("Manifest", value, "schemaVersion", "int")
        go_typed("Manifest", value, "mediaType", "string")
        layers_raw = go_field(value, "layers")
        if layers_raw is not None and not isinstance(layers_raw, list):
            raise GoError(
                f"json: cannot unmarshal {_go_kind(layers_raw)} into Go struct field Manifest.layers "
                "of type []manifest.Layer"
            )
        return Manifest(
            config=_decode_layer(go_field(value, "config"), "Manifest.config"),
            layers=tuple(_decode_layer(item, "Manifest.layers") for item in layers_raw or []),
            path=path,
            mtime_ns=mtime_ns,
            digest=hashlib.sha256(data).hexdigest(),
        )

    def existing_name(self, name: Name) -> Name:
        """``getExistingName``: adopt the on-disk case of each part that matches some manifest."""
        host, namespace, model, tag = name.host, name.namespace, name.model, name.tag
        for existing in self.manifests(True):
            if existing.host.lower() == host.lower():
                host = existing.host
            if existing.namespace.lower() == namespace.lower():
                namespace = existing.namespace
            if existing.model.lower() == model.lower():
                model = existing.model
            if existing.tag.lower() == tag.lower():
                tag = existing.tag
        return Name(host, namespace, model, tag)

    def read_json_blob(self, digest: str) -> Any:
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise GoError(f"open {path}: {_strerror(exc)}", not_exist=exc.errno == errno.ENOENT) from None
        return go_decode_value(data.decode("utf-8", errors="replace"))

    def read_text_blob(self, digest: str) -> str:
        path = self.blob_path(digest)
        try:
            with open(path, "rb") as handle:
                return handle.read().decode("utf-8", errors="replace")
        except OSError as exc:
            raise GoError(f"open {path}: {_strerror(exc)}", not_exist=exc.errno == errno.ENOENT) from None

    def read_config(self, manifest: Manifest) -> dict[str, Any]:
        """Decode the config blob into ``model.ConfigV2``; a manifest without a config digest has none."""
        if not manifest.config.digest:
            return {}
        value = self.read_json_blob(manifest.config.digest)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise GoError(f"json: cannot unmarshal {_go_kind(value)} into Go value of type model.ConfigV2")
        return {key: go_typed("ConfigV2", value, key, kind) for key, kind in _CONFIG_FIELDS.items()}

    def get_model(self, name: Name) -> ModelInfo:
        """``GetModel``: the manifest, the config and the small blobs (template, system, params, ...)."""
        manifest = self.parse_named_manifest(name)
        config = self.read_config(manifest)
        info = ModelInfo(name, manifest, config, None, "", 0, "{{ .Prompt }}", "", None, [], [])
        for layer in manifest.layers:
            path = self.blob_path(layer.digest)
            kind = layer.media_type
            if kind == "application/vnd.ollama.image.model":
                info.model_path = path
                info.parent_model = layer.from_
            elif kind == "application/vnd.ollama.image.projector":
                info.projectors += 1
            elif kind in ("application/vnd.ollama.image.prompt", "application/vnd.ollama.image.template"):
                info.template = self.read_text_blob(layer.digest)
            elif kind == "application/vnd.ollama.image.system":
                info.system = self.read_text_blob(layer.digest)
            elif kind == "application/vnd.ollama.image.params":
                params = self.read_json_blob(layer.digest)
                if params is not None and not isinstance(params, dict):
                    raise GoError(
                        f"json: cannot unmarshal {_go_kind(params)} into Go value of type map[string]interface {{}}"
                    )
                info.params = params
            elif kind == "application/vnd.ollama.image.messages":
                messages = self.read_json_blob(layer.digest)
                if messages is not None and not isinstance(messages, list):
                    raise GoError(f"json: cannot unmarshal {_go_kind(messages)} into Go value of type []api.Message")
                info.messages = messages or []
            elif kind == "application/vnd.ollama.image.license":
                info.licenses.append(self.read_text_blob(layer.digest))
        return info

    # -- startup housekeeping -------------------------------------------------------------------------------------

    def fix_blobs(self) -> int:
        """``fixBlobs``: rename pre-0.1.30 ``sha256:<hex>`` files to ``sha256-<hex>`` anywhere under blobs/."""
        renamed = 0
        for directory, _dirs, files in os.walk(self.blobs_dir):
            for file_name in files:
                prefix, sep, rest = file_name.partition(":")
                if sep and prefix == "sha256":
                    os.rename(os.path.join(directory, file_name), os.path.join(directory, f"sha256-{rest}"))
                    renamed += 1
        return renamed

    def prune_layers(self, grace_s: float) -> tuple[int, int, int]:
        """``PruneLayers``; returns (invalid names removed, digest-named blobs considered, unused removed).

        Directories are skipped, and so are entries whose (lstat) mtime is younger than ``grace_s``. A name
        that is not a digest once ``-`` is read as ``:`` is deleted; this catches ``-partial``,
        ``-partial-N``, ``.tmp`` and ``CreateTemp`` leftovers. A digest-named blob that no parseable
        manifest references is deleted.
        """
        invalid_removed = 0
        candidates: set[str] = set()
        now = time.time()
        with os.scandir(self.blobs_dir) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except OSError as exc:
                    log(f"couldn't stat blob blob={entry.name} error={_strerror(exc)}", "ERROR")
                    continue
                if now - mtime < grace_s:
                    continue
                digest = entry.name.replace("-", ":")
                if not DIGEST_RE.match(digest):
                    try:
                        os.remove(entry.path)
                        invalid_removed += 1
                    except OSError as exc:
                        log(f"couldn't remove blob blob={entry.name} error={_strerror(exc)}", "ERROR")
                    continue
                candidates.add(digest)
        considered = len(candidates)
        log(f"total blobs: {considered}")
        try:
            manifests = self.manifests(True)
        except StoreError as exc:
            log(f"couldn't remove unused layers: {exc}", "ERROR")
            return invalid_removed, considered, 0
        for manifest in manifests.values():
            for layer in manifest.layers:
                candidates.discard(layer.digest)
            candidates.discard(manifest.config.digest)
        for digest in candidates:
            try:
                os.remove(self.blob_path(digest))
            except OSError as exc:
                log(f"couldn't remove file '{self.blob_path(digest)}': {_strerror(exc)}")
        log(f"total unused blobs removed: {len(candidates)}")
        return invalid_removed, considered, len(candidates)

    def prune_directory(self, path: str) -> None:
        """``manifest.PruneDirectory``: remove empty directories bottom-up, never descending into symlinks.

        The starting directory itself goes too when it ends up empty, as in Go.
        """
        if os.path.isdir(path) and not os.path.islink(path):
            for entry_name in os.listdir(path):
                self.prune_directory(os.path.join(path, entry_name))
            if not os.listdir(path):
                os.rmdir(path)

    def startup(self, *, prune: bool, grace_s: float) -> None:
        """What ``Serve`` does to the store before accepting requests."""
        self.ensure_dirs()
        renamed = self.fix_blobs()
        if renamed:
            log(f"renamed {renamed} blob(s) from sha256: to sha256-")
        if not prune:
            return
        try:
            self.manifests(False)
        except StoreError as exc:
            log(
                f"corrupt manifests detected, skipping prune operation.  Re-pull or delete to clear error={exc}",
                "WARN",
            )
            return
        self.prune_layers(grace_s)
        self.prune_directory(self.manifests_dir)

    def remove_model(self, manifest: Manifest) -> None:
        """``Manifest.Remove`` + ``RemoveLayers`` (``DELETE /api/delete``, which ignores ``OLLAMA_NOPRUNE``)."""
        os.remove(manifest.path)
        self.prune_directory(self.manifests_dir)
        in_use: set[str] = set()
        for other in self.manifests(True).values():
            for layer in (*other.layers, other.config):
                if layer.digest:
                    in_use.add(layer.digest)
        for layer in (*manifest.layers, manifest.config):
            if not layer.digest or layer.digest in in_use:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.blob_path(layer.digest))


class ListCache:
    """``modelListCache``: /api/tags summaries cached per name and manifest digest, re-globbed on every call.

    A summary is rebuilt only when a manifest's bytes change. So a manifest that is replaced by identical bytes
    with a new mtime keeps its old ``modified_at``, and a blob deleted under an unchanged manifest is not
    noticed by ``/api/tags`` until the server restarts. The real server behaves the same way.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, int, dict[str, Any]]] = {}

    def list(self) -> list[dict[str, Any]]:
        manifests = self.store.manifests(True)
        with self._lock:
            seen: set[str] = set()
            for name, manifest in manifests.items():
                key = str(name)
                seen.add(key)
                current = self._entries.get(key)
                if current is not None and current[0] == manifest.digest:
                    continue
                try:
                    summary = self._build(name, manifest)
                except GoError as exc:
                    log(f"failed to refresh model list cache model={key} error={exc.message}", "WARN")
                    self._entries.pop(key, None)
                    continue
                self._entries[key] = (manifest.digest, manifest.mtime_ns, summary)
            for key in list(self._entries):
                if key not in seen:
                    del self._entries[key]
            rows = sorted(self._entries.values(), key=lambda row: str(row[2]["name"]))
        # sortListModelResponses: stable, newest first, compared at whole seconds.
        rows.sort(key=lambda row: row[1] // 1_000_000_000, reverse=True)
        return [summary for _digest, _mtime, summary in rows]

    def forget(self, name: Name) -> None:
        with self._lock:
            self._entries.pop(str(name), None)

    def _build(self, name: Name, manifest: Manifest) -> dict[str, Any]:
        """``buildModelListSummary``: config blob and template/prompt blobs must be readable."""
        config = self.store.read_config(manifest)
        parent_model = ""
        projectors = 0
        for layer in manifest.layers:
            if layer.media_type == "application/vnd.ollama.image.model":
                self.store.blob_path(layer.digest)
                parent_model = layer.from_
            elif layer.media_type == "application/vnd.ollama.image.projector":
                projectors += 1
            elif layer.media_type in ("application/vnd.ollama.image.prompt", "application/vnd.ollama.image.template"):
                self.store.read_text_blob(layer.digest)
        details: dict[str, Any] = {
            "parent_model": parent_model,
            "format": config.get("model_format") or "",
            "family": config.get("model_family") or "",
            "families": config.get("model_families"),
            "parameter_size": config.get("model_type") or "",
            "quantization_level": config.get("file_type") or "",
        }
        if config.get("context_length"):
            details["context_length"] = config["context_length"]
        if config.get("embedding_length"):
            details["embedding_length"] = config["embedding_length"]
        capabilities: list[str] = []
        for cap in config.get("capabilities") or []:
            if cap not in capabilities:
                capabilities.append(cap)
        if projectors and "vision" not in capabilities:
            capabilities.append("vision")
        summary: dict[str, Any] = {"name": name.display_shortest(), "model": name.display_shortest()}
        if config.get("remote_model"):
            summary["remote_model"] = config["remote_model"]
        if config.get("remote_host"):
            summary["remote_host"] = config["remote_host"]
        summary["modified_at"] = go_time(manifest.mtime_ns, utc=False)
        summary["size"] = manifest.size
        summary["digest"] = manifest.digest
        summary["details"] = details
        if capabilities:
            summary["capabilities"] = capabilities
        return summary


# ---------------------------------------------------------------------------------------------------------------
# Behaviour injection
# ---------------------------------------------------------------------------------------------------------------

FAIL_MODES: Final = ("busy", "stream_error", "not_found", "close", "hang")


@dataclasses.dataclass(frozen=True)
class ModelBehaviour:
    """How one model "runs"; the fields of a ``models`` entry in the behaviour file."""

    load_delay: float = 0.0  # seconds to "load" when the model is not resident (first use, after keep_alive)
    first_token_delay: float = 0.0  # seconds of "prompt evaluation" before the first token
    token_rate: float = 0.0  # tokens per second after the first; 0 means as fast as possible
    tokens: int = 12  # response tokens, capped by options.num_predict
    thinking_tokens: int = 0  # "thinking" tokens before the response, for models with the thinking capability
    text: str = DEFAULT_TEXT  # words to emit, cycled
    fail: str | None = None  # one of FAIL_MODES
    fail_after: int | None = None  # tokens sent before stream_error/close/hang strike (default: half)
    error: str = ERR_RUNNING  # the message of a stream_error
    context_length: int = 4096  # what /api/ps reports

    def failure_point(self, total: int) -> int:
        """Tokens sent before an injected failure: ``fail_after``, else half the stream (0 for ``hang``)."""
        if self.fail_after is not None:
            return self.fail_after
        if self.fail == "hang":
            return 0
        return min(total, max(1, total // 2))


_BEHAVIOUR_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "load_delay": (int, float),
    "first_token_delay": (int, float),
    "token_rate": (int, float),
    "tokens": (int,),
    "thinking_tokens": (int,),
    "text": (str,),
    "fail": (str, type(None)),
    "fail_after": (int, type(None)),
    "error": (str,),
    "context_length": (int,),
}


class BehaviourError(ValueError):
    """The behaviour file is not valid; the stub keeps the previous one."""


def _model_overrides(key: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BehaviourError(f"models[{key!r}] must be an object")
    for field, value in raw.items():
        types = _BEHAVIOUR_TYPES.get(field)
        if types is None:
            raise BehaviourError(f"models[{key!r}]: unknown field {field!r} (known: {sorted(_BEHAVIOUR_TYPES)})")
        if isinstance(value, bool) or not isinstance(value, types):
            raise BehaviourError(f"models[{key!r}].{field}: wrong type {type(value).__name__}")
        if isinstance(value, int | float) and value < 0:
            raise BehaviourError(f"models[{key!r}].{field}: must not be negative")
    if raw.get("fail") is not None and raw["fail"] not in FAIL_MODES:
        raise BehaviourError(f"models[{key!r}].fail: must be one of {FAIL_MODES} or null")
    return dict(raw)


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """The whole behaviour file: server-wide knobs plus per-model overrides (``"*"`` applies to every model)."""

    version: str = DEFAULT_VERSION
    max_parallel: int = 1
    max_queue: int = 512
    models: tuple[tuple[str, dict[str, Any]], ...] = ()

    @classmethod
    def from_json(cls, data: Any, defaults: Behaviour) -> Behaviour:
        if not isinstance(data, dict):
            raise BehaviourError("the behaviour file must hold a JSON object")
        unknown = set(data) - {"version", "max_parallel", "max_queue", "models"}
        if unknown:
            raise BehaviourError(f"unknown top-level field(s): {sorted(unknown)}")
        version = data.get("version", defaults.version)
        max_parallel = data.get("max_parallel", defaults.max_parallel)
        max_queue = data.get("max_queue", defaults.max_queue)
        if not isinstance(version, str):
            raise BehaviourError("version must be a string")
        for key, value in (("max_parallel", max_parallel), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "max_parallel" else 0):
                raise BehaviourError(f"{key} must be an integer >= {1 if key == 'max_parallel' else 0}")
        models_raw = data.get("models", {})
        if not isinstance(models_raw, dict):
            raise BehaviourError("models must be an object of model name -> behaviour")
        models: list[tuple[str, dict[str, Any]]] = []
        for key, raw in models_raw.items():
            overrides = _model_overrides(key, raw)
            if key == "*":
                models.append(("*", overrides))
                continue
            name = Name.parse(key)
            if not name.is_valid():
                raise BehaviourError(f"models: {key!r} is not a valid model name")
            models.append((name.folded(), overrides))
        return cls(version, max_parallel, max_queue, tuple(models))

    def for_model(self, name: Name) -> ModelBehaviour:
        merged: dict[str, Any] = {}
        for key, overrides in self.models:
            if key == "*":
                merged.update(overrides)
        for key, overrides in self.models:
            if key == name.folded():
                merged.update(overrides)
        return ModelBehaviour(**merged)


class BehaviourSource:
    """The ``--behaviour`` file, re-read whenever its (mtime, size, inode) changes, so tests can reconfigure."""

    def __init__(self, path: str | None, defaults: Behaviour) -> None:
        self.path = path
        self.defaults = defaults
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._current = defaults

    def load_initial(self) -> None:
        """Read the file at startup; an invalid file is fatal here (a typo should not pass silently)."""
        if self.path is None:
            return
        if not os.path.exists(self.path):
            log(f"behaviour file {self.path} does not exist yet; using defaults until it appears", "WARN")
            return
        self.get(strict=True)

    def get(self, *, strict: bool = False) -> Behaviour:
        if self.path is None:
            return self._current
        with self._lock:
            try:
                info = os.stat(self.path)
            except OSError:
                return self._current
            signature = (info.st_mtime_ns, info.st_size, info.st_ino)
            if signature == self._signature:
                return self._current
            try:
                with open(self.path, encoding="utf-8") as handle:
                    data = json.load(handle)
                self._current = Behaviour.from_json(data, self.defaults)
            except (OSError, ValueError) as exc:
                if strict:
                    raise BehaviourError(f"{self.path}: {exc}") from None
                log(f"ignoring invalid behaviour file {self.path}: {exc}", "ERROR")
            else:
                log(f"behaviour loaded from {self.path}")
            self._signature = signature
            return self._current


# ---------------------------------------------------------------------------------------------------------------
# Scheduler: resident models, parallel slots, the pending-load queue (server/sched.go, llm/server.go)
# ---------------------------------------------------------------------------------------------------------------


class Aborted(Exception):
    """The server is stopping or the client went away; the request ends without a response."""


@dataclasses.dataclass
class Runner:
    """A "loaded" model, keyed like ``schedulerModelKey`` (by its weights blob)."""

    key: str
    short_name: str
    digest: str
    size: int
    details: dict[str, Any]
    context_length: int
    busy: int = 0
    waiting: collections.deque[object] = dataclasses.field(default_factory=collections.deque)
    refs: int = 0
    keep_alive_ns: int = 5 * 60 * 1_000_000_000
    expires_mono: float = math.inf
    expires_wall_ns: int = 0

    def touch(self, keep_alive_ns: int) -> None:
        self.keep_alive_ns = keep_alive_ns
        self.expires_mono = math.inf if keep_alive_ns >= FOREVER_NS else time.monotonic() + keep_alive_ns / 1e9
        self.expires_wall_ns = time.time_ns() + keep_alive_ns


class Scheduler:
    """One condition variable guards everything; loads are serialised like ``processPending``.

    * A model that is resident serves at once. Its requests wait only for one of ``max_parallel`` slots
      (the runner's semaphore, ``llm/llama_server.go: Completion``, line 1536), first come first served as
      ``golang.org/x/sync/semaphore`` serves its waiters, and there is never a 503.
    * ``keep_alive``: a request that names none leaves a resident runner's duration as it was
      (``sched.go: useLoadedRunner``, 483-485) and loads a model for ``OLLAMA_KEEP_ALIVE`` (``load``, 512-515);
      when the last request ends, a duration of 0 unloads the runner at once (``processCompleted``, 386-392).
    * A model that must be loaded waits for the loader. At most ``max_queue`` requests may wait; the next one
      gets 503 (``pendingReqCh`` is full).
    """

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self._cond = threading.Condition()
        self._runners: dict[str, Runner] = {}
        self._waiting = 0
        self._loading = False

    def _reap(self) -> None:
        now = time.monotonic()
        for key in [k for k, r in self._runners.items() if r.refs == 0 and r.expires_mono <= now]:
            del self._runners[key]

    def _wait(self) -> None:
        if self.stopping.is_set():
            raise Aborted
        self._cond.wait(0.2)

    def acquire_runner(
        self,
        info: ModelInfo,
        behaviour: ModelBehaviour,
        max_queue: int,
        keep_alive_ns: int | None,
        default_keep_alive_ns: int,
        sleep: Callable[[float], None],
    ) -> Runner:
        key = info.model_path or info.manifest.digest
        with self._cond:
            self._reap()
            runner = self._runners.get(key)
            if runner is not None:
                runner.refs += 1
                runner.touch(runner.keep_alive_ns if keep_alive_ns is None else keep_alive_ns)
                return runner
            if self._waiting >= max_queue:
                raise ApiError(503, ERR_MAX_QUEUE)
            self._waiting += 1
            try:
                while self._loading:
                    self._wait()
            finally:
                self._waiting -= 1
            runner = self._runners.get(key)
            if runner is not None:
                runner.refs += 1
                runner.touch(runner.keep_alive_ns if keep_alive_ns is None else keep_alive_ns)
                return runner
            self._loading = True
        try:
            sleep(behaviour.load_delay)
        finally:
            with self._cond:
                self._loading = False
                self._cond.notify_all()
        with self._cond:
            runner = Runner(
                key=key,
                short_name=info.name.display_shortest(),
                digest=info.manifest.digest,
                size=info.manifest.size,
                details=info.details(),
                context_length=behaviour.context_length,
            )
            runner.refs = 1
            runner.touch(default_keep_alive_ns if keep_alive_ns is None else keep_alive_ns)
            self._runners[key] = runner
            return runner

    def acquire_slot(self, runner: Runner, max_parallel: Callable[[], int]) -> None:
        """One of the runner's ``max_parallel`` slots, in the order the requests asked for one."""
        ticket = object()
        with self._cond:
            runner.waiting.append(ticket)
            try:
                while runner.waiting[0] is not ticket or runner.busy >= max_parallel():
                    self._wait()
            except BaseException:
                runner.waiting.remove(ticket)
                self._cond.notify_all()
                raise
            runner.waiting.popleft()
            runner.busy += 1
            self._cond.notify_all()  # the next in line may fit too

    def release_slot(self, runner: Runner) -> None:
        with self._cond:
            runner.busy -= 1
            self._cond.notify_all()

    def release_runner(self, runner: Runner) -> None:
        """Drop a reference and start the keep-alive clock.

        The duration is the runner's ``sessionDuration``: the one set by the latest request, or 0 if an unload
        (``expireRunner``) came in meanwhile. A ``keep_alive`` of 0 unloads the runner at once.
        """
        with self._cond:
            runner.refs -= 1
            runner.touch(runner.keep_alive_ns)
            if runner.refs == 0 and runner.keep_alive_ns == 0 and self._runners.get(runner.key) is runner:
                del self._runners[runner.key]
            self._cond.notify_all()

    def expire(self, info: ModelInfo) -> None:
        """``expireRunner``: unload now, or as soon as in-flight requests finish."""
        key = info.model_path or info.manifest.digest
        with self._cond:
            runner = self._runners.get(key)
            if runner is None:
                return
            runner.touch(0)
            if runner.refs == 0:
                del self._runners[key]

    def loaded(self) -> list[Runner]:
        with self._cond:
            self._reap()
            return list(self._runners.values())


# ---------------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A JSON error response ``{"error": message}`` with this status."""

    def __init__(self, status: int, message: str, content_type: str = JSON_CT) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.content_type = content_type


class _StreamEnded(Exception):
    """The stream was finished by an error line; nothing more to write."""


class DropConnection(Exception):
    """Close the socket without (finishing) a response: the ``close`` failure mode."""


_GO_PRIVATE: Final = tuple(
    ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def host_header_allowed(host_header: str) -> bool:
    """``allowedHostsMiddleware`` + ``allowedHost`` for a loopback-bound server (minus ``isLocalIP``)."""
    try:
        host, _port = _split_host_port(host_header)
    except ValueError:
        host = host_header
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr.is_loopback or addr.is_unspecified or any(addr in net for net in _GO_PRIVATE):
            return True
    host = host.lower()
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return any(host.endswith(tld) for tld in (".localhost", ".local", ".internal"))


class StubServer(ThreadingHTTPServer):
    """The listening server plus the state every request shares."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        store: Store,
        behaviour: BehaviourSource,
        family: socket.AddressFamily,
    ) -> None:
        self.address_family = family
        super().__init__(address, Handler)
        self.store = store
        self.cache = ListCache(store)
        self.behaviour = behaviour
        self.stopping = threading.Event()
        self.scheduler = Scheduler(self.stopping)
        self.keep_alive_default_ns = env_keep_alive_ns()
        bound = ipaddress.ip_address(str(self.server_address[0]).split("%")[0])
        self.check_host = bound.is_loopback

    def server_bind(self) -> None:
        """Bind without ``HTTPServer.server_bind``'s ``getfqdn`` (a reverse DNS lookup that can stall)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


_NOT_IMPLEMENTED_PATHS: Final = frozenset(
    {
        "/api/pull",
        "/api/push",
        "/api/create",
        "/api/copy",
        "/api/embed",
        "/api/embeddings",
        "/api/status",
        "/api/me",
        "/api/signout",
        "/api/experimental/web_search",
        "/api/experimental/web_fetch",
        "/api/experimental/model-recommendations",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/responses",
        "/v1/audio/transcriptions",
        "/v1/messages",
    }
)

_ROUTES: Final[dict[str, dict[str, str]]] = {
    "/": {"GET": "root", "HEAD": "root"},
    "/api/version": {"GET": "version", "HEAD": "version"},
    "/api/tags": {"GET": "tags", "HEAD": "tags"},
    "/api/ps": {"GET": "ps"},
    "/api/show": {"POST": "show"},
    "/api/generate": {"POST": "generate"},
    "/api/chat": {"POST": "chat"},
    "/api/delete": {"DELETE": "delete"},
}

_GENERATE_FIELDS: Final = {
    "model": "string",
    "prompt": "string",
    "suffix": "string",
    "system": "string",
    "template": "string",
    "context": "[]int",
    "stream": "bool",
    "raw": "bool",
    "format": "json.RawMessage",
    "keep_alive": "keep_alive",
    "images": "[]api.ImageData",
    "options": "map[string]interface {}",
    "think": "think",
    "top_logprobs": "int",
}
_CHAT_FIELDS: Final = {
    "model": "string",
    "messages": "[]api.Message",
    "stream": "bool",
    "format": "json.RawMessage",
    "keep_alive": "keep_alive",
    "options": "map[string]interface {}",
    "think": "think",
    "top_logprobs": "int",
}
_SHOW_FIELDS: Final = {
    "model": "string",
    "system": "string",
    "template": "string",
    "verbose": "bool",
    "options": "map[string]interface {}",
    "name": "string",
}
_DELETE_FIELDS: Final = {"model": "string", "name": "string"}


@dataclasses.dataclass
class Inference:
    """One generate/chat request on its way through the scheduler."""

    kind: str  # "generate" | "chat"
    model_field: str  # req.Model exactly as sent; echoed in every chunk
    info: ModelInfo
    behaviour: ModelBehaviour
    stream: bool
    prompt_words: int
    thinking: bool
    num_predict: int | None
    raw: bool
    t_start: int


def _words(text: str) -> list[str]:
    return text.split()


def _fake_token_id(word: str) -> int:
    return zlib.crc32(word.encode("utf-8")) % 32000 + 1


class Handler(BaseHTTPRequestHandler):
    """Routes and writes responses byte-compatible with gin/net/http, logging a GIN line per request."""

    protocol_version = "HTTP/1.1"

    # -- plumbing ---------------------------------------------------------------------------------------------

    @property
    def stub(self) -> StubServer:
        return cast(StubServer, self.server)

    def setup(self) -> None:
        super().setup()
        # Go sets TCP_NODELAY; without it, Nagle + delayed ACK would hold small NDJSON chunks for ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silence the base class; one GIN-style line is written per request in ``_dispatch``."""

    def log_message(self, format: str, *args: Any) -> None:
        log(f"{self.address_string()} {format % args}", "WARN")

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self._t0 = time.monotonic_ns()
        self._status: int | str = 0
        self._headers_sent = False
        path = urlsplit(self.path).path
        try:
            body = self._read_body()
            if self.stub.check_host and not host_header_allowed(self.headers.get("Host", "")):
                self._send(403, b"", None)
                return
            route = _ROUTES.get(path)
            if route is None and path.startswith("/api/blobs/"):
                digest = path[len("/api/blobs/") :]
                if digest and "/" not in digest:
                    route = {"HEAD": "head_blob", "POST": "not_implemented"}
            if route is None and path in _NOT_IMPLEMENTED_PATHS:
                route = {self.command: "not_implemented"}
            if route is None:
                self._send(404, b"404 page not found", PLAIN_CT)
                return
            method = route.get(self.command)
            if method is None:
                self._send(405, b"405 method not allowed", PLAIN_CT)
                return
            getattr(self, f"_h_{method}")(path, body)
        except ApiError as exc:
            if self._headers_sent:  # cannot change the status any more; end the stream with an error line
                self._stream_error_line(exc.message)
            else:
                self._send(exc.status, go_json({"error": exc.message}), exc.content_type)
        except _StreamEnded:
            pass
        except (DropConnection, Aborted):
            self._drop()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
            self._status = f"{self._status} (client went away)"
        finally:
            self._log_line(path)

    def _log_line(self, path: str) -> None:
        """gin's default logger format: ``[GIN] date | status | latency | client | METHOD "path"``."""
        latency = time.monotonic_ns() - self._t0
        if latency > 60_000_000_000:
            latency -= latency % 1_000_000_000
        stamp = time.strftime("%Y/%m/%d - %H:%M:%S")
        status = self._status if isinstance(self._status, str) else f"{self._status:3d}"
        line = (
            f"[GIN] {stamp} | {status} | {go_duration_string(latency):>13} | "
            f"{self.client_address[0]:>15} | {self.command:<7}  {json.dumps(path)}\n"
        )
        with _log_lock:
            sys.stderr.write(line)
            sys.stderr.flush()

    def _read_body(self) -> bytes:
        """Read the whole request body (Content-Length or chunked) so keep-alive connections stay in sync."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = self.headers.get("Content-Length")
        if length and length.strip().isdigit():
            return self.rfile.read(int(length))
        return b""

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = f"status code {status}"
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _base_headers(self, content_type: str | None) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        if content_type:
            headers.append(("Content-Type", content_type))
        headers.append(("Date", email.utils.formatdate(usegmt=True)))
        return headers

    def _send(self, status: int, body: bytes, content_type: str | None) -> None:
        """A complete response with Content-Length (HEAD gets the headers only, like net/http)."""
        headers = self._base_headers(content_type)
        headers.append(("Content-Length", str(len(body))))
        if self.close_connection:
            headers.append(("Connection", "close"))
        payload = self._head(status, headers)
        if self.command != "HEAD":
            payload += body
        self._status = status
        self._headers_sent = True
        self.wfile.write(payload)

    def _send_json(self, value: Any, status: int = 200) -> None:
        self._send(status, go_json(value), JSON_CT)

    def _stream_line(self, value: Any) -> None:
        """Write one NDJSON line as one HTTP chunk; the first line carries the headers in the same packet."""
        data = go_json(value) + b"\n"
        chunked = self.request_version == "HTTP/1.1"
        frame = f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n" if chunked else data
        if not self._headers_sent:
            headers = self._base_headers(NDJSON_CT)
            if chunked:
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                self.close_connection = True
                headers.append(("Connection", "close"))
            frame = self._head(200, headers) + frame
            self._status = 200
            self._headers_sent = True
        self.wfile.write(frame)

    def _stream_end(self) -> None:
        if self.request_version == "HTTP/1.1":
            self.wfile.write(b"0\r\n\r\n")

    def _stream_error_line(self, message: str) -> None:
        """``streamResponse`` after the first chunk: ``json.NewEncoder(w).Encode(gin.H{"error": e})``, status 200."""
        self._stream_line({"error": message})
        self._stream_end()
        self._status = "200 (stream error)"

    def _drop(self) -> None:
        self.close_connection = True
        self._status = f"{self._status or '---'} (connection dropped)"
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _sleep_until(self, deadline: float) -> None:
        """Sleep to a ``time.monotonic()`` deadline precisely, waking early for shutdown."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if remaining > 0.05:
                if self.stub.stopping.wait(min(remaining - 0.02, 0.5)):
                    raise Aborted
                continue
            time.sleep(remaining)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._sleep_until(time.monotonic() + seconds)

    def _hang(self) -> None:
        """Never answer: wait until the client disconnects or the server stops."""
        while not self.stub.stopping.wait(0.05):
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        raise Aborted
                except OSError:
                    raise Aborted from None
        raise Aborted

    # -- simple endpoints ---------------------------------------------------------------------------------------

    def _h_root(self, _path: str, _body: bytes) -> None:
        self._send(200, b"Ollama is running", TEXT_CT)

    def _h_version(self, _path: str, _body: bytes) -> None:
        self._send_json({"version": self.stub.behaviour.get().version})

    def _h_not_implemented(self, _path: str, _body: bytes) -> None:
        raise ApiError(501, ERR_NOT_IMPLEMENTED)

    def _h_tags(self, _path: str, _body: bytes) -> None:
        try:
            models = self.stub.cache.list()
        except StoreError as exc:
            raise ApiError(500, str(exc)) from None
        self._send_json({"models": models})

    def _h_ps(self, _path: str, _body: bytes) -> None:
        runners = sorted(self.stub.scheduler.loaded(), key=lambda r: r.short_name)
        runners.sort(key=lambda r: r.expires_wall_ns // 1_000_000_000, reverse=True)
        models = [
            {
                "name": r.short_name,
                "model": r.short_name,
                "size": r.size,
                "digest": r.digest,
                "details": r.details,
                "expires_at": go_time(r.expires_wall_ns, utc=False),
                "size_vram": r.size,
                "context_length": r.context_length,
            }
            for r in runners
        ]
        self._send_json({"models": models})

    def _h_head_blob(self, path: str, _body: bytes) -> None:
        """``HeadBlobHandler``: existence only (``os.Stat``), never hashing."""
        digest = path[len("/api/blobs/") :]
        try:
            blob = self.stub.store.blob_path(digest)
        except GoError as exc:
            raise ApiError(400, exc.message) from None
        if not os.path.exists(blob):
            raise ApiError(404, f"blob {go_quote(digest)} not found")
        self._send(200, b"", None)

    def _h_delete(self, _path: str, body: bytes) -> None:
        """``DeleteHandler``: remove the manifest and, at once, the layers no other manifest uses."""
        req = bind_request(body, "DeleteRequest", _DELETE_FIELDS)
        raw = req["model"] or req["name"] or ""
        try:
            ref = parse_model_ref(raw, for_pull=True)
        except RefError as exc:
            if exc.kind == "unqualified":
                raise ApiError(400, f"name {go_quote(raw)} is invalid") from None
            raise ApiError(400, exc.message) from None
        store = self.stub.store
        try:
            name = store.existing_name(ref.name)
        except StoreError:
            raise ApiError(404, f"model '{raw}' not found") from None
        try:
            manifest = store.parse_named_manifest(name)
        except GoError as exc:
            if exc.not_exist:
                raise ApiError(404, f"model '{raw}' not found") from None
            raise ApiError(500, exc.message) from None
        try:
            store.remove_model(manifest)
        except OSError as exc:
            raise ApiError(500, f"remove {manifest.path}: {_strerror(exc)}") from None
        except GoError as exc:
            raise ApiError(500, exc.message) from None
        self.stub.cache.forget(name)
        self._send(200, b"", None)

    def _h_show(self, _path: str, body: bytes) -> None:
        """``ShowHandler`` + ``GetModelInfo`` (``model_info`` comes from the config, not GGUF metadata)."""
        req = bind_request(body, "ShowRequest", _SHOW_FIELDS)
        raw = req["model"] or req["name"] or ""
        if not raw:
            raise ApiError(400, "model is required")
        try:
            ref = parse_model_ref(raw)
        except RefError as exc:
            raise ApiError(400, ERR_INVALID_NAME if exc.kind == "unqualified" else exc.message) from None
        if ref.source == "cloud":
            raise ApiError(502, "ollama_stub: no access to ollama.com for cloud models")
        store = self.stub.store
        try:
            name = store.existing_name(ref.name)
        except StoreError as exc:
            raise ApiError(400, str(exc)) from None
        shortest = name.display_shortest()
        try:
            info = store.get_model(name)
        except GoError as exc:
            if exc.not_exist:
                raise ApiError(404, f"model '{shortest}' not found") from None
            raise ApiError(500, exc.message) from None
        if ref.source == "local" and info.config.get("remote_host"):
            raise ApiError(404, f"model '{ref.original}' not found")
        system = req["system"] or info.system
        details = info.details()
        family = details["family"]
        model_info: dict[str, Any] = {}
        if family:
            model_info["general.architecture"] = family
            if info.config.get("context_length"):
                model_info[f"{family}.context_length"] = info.config["context_length"]
            if info.config.get("embedding_length"):
                model_info[f"{family}.embedding_length"] = info.config["embedding_length"]
        params: list[str] = []
        for key, value in (info.params or {}).items():
            for item in value if isinstance(value, list) else [value]:
                params.append(f"{key:<30} {_go_gostring(item)}")
        resp: dict[str, Any] = {}
        if info.licenses:
            resp["license"] = "\n".join(info.licenses)
        resp["modelfile"] = _modelfile(info, system, params)
        if params:
            resp["parameters"] = "\n".join(params)
        if info.template:
            resp["template"] = info.template
        if system:
            resp["system"] = system
        for key in ("renderer", "parser"):
            if info.config.get(key):
                resp[key] = info.config[key]
        resp["details"] = details
        if info.messages:
            resp["messages"] = [
                {"role": m.get("role", ""), "content": m.get("content", "")}
                for m in info.messages
                if isinstance(m, dict)
            ]
        if info.config.get("remote_host"):
            resp["remote_model"] = info.config.get("remote_model") or ""
            resp["remote_host"] = info.config["remote_host"]
        resp["model_info"] = model_info
        capabilities = info.capabilities()
        if capabilities:
            resp["capabilities"] = capabilities
        resp["modified_at"] = go_time(info.manifest.mtime_ns, utc=False)
        if info.config.get("requires"):
            resp["requires"] = info.config["requires"]
        self._send_json(resp)

    # -- inference ----------------------------------------------------------------------------------------------

    def _h_generate(self, _path: str, body: bytes) -> None:
        self._inference("generate", body)

    def _h_chat(self, _path: str, body: bytes) -> None:
        self._inference("chat", body)

    def _inference(self, kind: str, body: bytes) -> None:
        """``GenerateHandler`` / ``ChatHandler`` up to the runner: the checks and their order, then scheduling."""
        t_start = time.monotonic_ns()
        chat = kind == "chat"
        req = bind_request(
            body, "ChatRequest" if chat else "GenerateRequest", _CHAT_FIELDS if chat else _GENERATE_FIELDS
        )
        raw_model: str = req["model"] or ""
        top_logprobs = req["top_logprobs"] or 0
        if not 0 <= top_logprobs <= 20:
            raise ApiError(400, "top_logprobs must be between 0 and 20")
        try:
            ref = parse_model_ref(raw_model)
        except RefError as exc:
            if exc.kind == "unqualified":
                raise ApiError(400, ERR_INVALID_NAME) from None
            if exc.kind == "conflict":
                raise ApiError(400, exc.message) from None
            raise (
                ApiError(400, "model is required") if chat else ApiError(404, f"model '{raw_model}' not found")
            ) from None
        if ref.source == "cloud":
            raise ApiError(502, "ollama_stub: no access to ollama.com for cloud models")
        store = self.stub.store
        try:
            name = store.existing_name(ref.name)
        except StoreError:
            raise (
                ApiError(400, "model is required") if chat else ApiError(404, f"model '{raw_model}' not found")
            ) from None
        try:
            info = store.get_model(name)
        except GoError as exc:
            if exc.not_exist:
                raise ApiError(404, f"model '{raw_model}' not found") from None
            raise ApiError(500, exc.message) from None
        if ref.source == "local" and info.remote:
            raise ApiError(404, f"model '{raw_model}' not found")
        keep_alive_ns: int | None = req["keep_alive"]
        empty = not req["messages"] if chat else not req["prompt"]
        if empty and keep_alive_ns == 0:
            self.stub.scheduler.expire(info)
            self._send_json(self._done_object(kind, raw_model, "unload"))
            return
        if info.remote:
            raise ApiError(502, "ollama_stub: remote models are not supported")
        if not chat and req["raw"] and (req["template"] or req["system"] or req["context"]):
            raise ApiError(400, "raw mode does not support template, system, or context")
        behaviour_file = self.stub.behaviour.get()
        behaviour = behaviour_file.for_model(name)
        capabilities = info.capabilities()
        think = req["think"]
        if "thinking" in capabilities:
            thinking = think is None or think is not False
        else:
            if think is True or isinstance(think, str):
                raise ApiError(400, f"{go_quote(raw_model)} does not support thinking")
            thinking = False
        if "completion" not in capabilities:
            raise ApiError(400, f"{go_quote(raw_model)} does not support {kind}")
        if behaviour.fail == "not_found":
            raise ApiError(404, f"model '{raw_model}' not found")
        if behaviour.fail == "busy":
            raise ApiError(503, ERR_MAX_QUEUE)
        scheduler = self.stub.scheduler
        default_keep = self.stub.keep_alive_default_ns
        runner = scheduler.acquire_runner(
            info, behaviour, behaviour_file.max_queue, keep_alive_ns, default_keep, self._sleep
        )
        streamed = False
        try:
            if empty:
                final = self._done_object(kind, raw_model, "load")
            else:
                final, streamed = self._generate(kind, req, info, behaviour, thinking, t_start, runner)
        finally:
            scheduler.release_runner(runner)
        # The runner is released before the last bytes go out, so a client that reacts to "done" (for example
        # by asking to unload) finds the scheduler settled.
        if streamed:
            self._stream_line(final)
            self._stream_end()
        else:
            self._send_json(final)

    def _generate(
        self,
        kind: str,
        req: dict[str, Any],
        info: ModelInfo,
        behaviour: ModelBehaviour,
        thinking: bool,
        t_start: int,
        runner: Runner,
    ) -> tuple[dict[str, Any], bool]:
        """Take a parallel slot and emit the tokens; returns the final object and whether it is streamed."""
        chat = kind == "chat"
        scheduler = self.stub.scheduler
        options = req["options"] or {}
        num_predict = options.get("num_predict")
        if chat:
            prompt_words = sum(len(_words(str(m.get("content") or ""))) for m in req["messages"] if isinstance(m, dict))
        else:
            prompt_words = len(_words(req["prompt"] + " " + (req["system"] or info.system)))
        job = Inference(
            kind=kind,
            model_field=req["model"] or "",
            info=info,
            behaviour=behaviour,
            stream=req["stream"] is not False,
            prompt_words=max(1, prompt_words),
            thinking=thinking,
            num_predict=int(num_predict) if isinstance(num_predict, int | float) and num_predict > 0 else None,
            raw=bool(req.get("raw")),
            t_start=t_start,
        )
        t_loaded = time.monotonic_ns()
        scheduler.acquire_slot(runner, lambda: self.stub.behaviour.get().max_parallel)
        try:
            return self._run(job, t_loaded), job.stream
        finally:
            scheduler.release_slot(runner)

    def _done_object(self, kind: str, model: str, reason: str) -> dict[str, Any]:
        """The load/unload answers: ``done: true`` with ``done_reason`` "load" or "unload", sent with c.JSON."""
        created = go_time(time.time_ns(), utc=True)
        if kind == "chat":
            return {
                "model": model,
                "created_at": created,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
            }
        return {"model": model, "created_at": created, "response": "", "done": True, "done_reason": reason}

    def _chunk(self, job: Inference, piece_kind: str, text: str) -> dict[str, Any]:
        created = go_time(time.time_ns(), utc=True)
        if job.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text if piece_kind == "response" else ""}
            if piece_kind == "thinking":
                message["thinking"] = text
            return {"model": job.model_field, "created_at": created, "message": message, "done": False}
        chunk: dict[str, Any] = {
            "model": job.model_field,
            "created_at": created,
            "response": text if piece_kind == "response" else "",
        }
        if piece_kind == "thinking":
            chunk["thinking"] = text
        chunk["done"] = False
        return chunk

    def _plan(self, job: Inference) -> tuple[list[tuple[str, str]], str]:
        """The tokens to emit and the done_reason (``length`` when ``num_predict`` cut the output)."""
        words = _words(job.behaviour.text) or ["token"]
        pieces: list[tuple[str, str]] = []
        thinking_count = job.behaviour.thinking_tokens if job.thinking else 0
        for i in range(thinking_count):
            word = words[i % len(words)]
            pieces.append(("thinking", word if i == 0 else " " + word))
        for i in range(job.behaviour.tokens):
            word = words[i % len(words)]
            pieces.append(("response", word if i == 0 else " " + word))
        if job.num_predict is not None and len(pieces) > job.num_predict:
            return pieces[: job.num_predict], "length"
        return pieces, "stop"

    def _run(self, job: Inference, t_loaded: int) -> dict[str, Any]:
        """Emit the tokens on schedule: the first at ``first_token_delay``, then one every ``1/token_rate`` s."""
        behaviour = job.behaviour
        pieces, done_reason = self._plan(job)
        fail = behaviour.fail
        fail_at = behaviour.failure_point(len(pieces)) if fail in ("stream_error", "close", "hang") else None
        t_slot = time.monotonic()
        t_first = t_slot + behaviour.first_token_delay
        interval = 1.0 / behaviour.token_rate if behaviour.token_rate > 0 else 0.0
        accumulated = {"thinking": "", "response": ""}
        t_first_actual: float | None = None
        for index in range(len(pieces) + 1):
            # Later tokens are timed from the first token's real emission, so eval_count / eval_duration
            # never exceeds token_rate because of sleep overshoot.
            self._sleep_until(t_first if t_first_actual is None else t_first_actual + index * interval)
            if t_first_actual is None:
                t_first_actual = time.monotonic()
            if index == fail_at:
                self._fail(job, fail)
            if index == len(pieces):
                break
            piece_kind, text = pieces[index]
            accumulated[piece_kind] += text
            if job.stream:
                self._stream_line(self._chunk(job, piece_kind, text))
        t_end = time.monotonic()
        assert t_first_actual is not None
        metrics = {
            "total_duration": time.monotonic_ns() - job.t_start,
            "load_duration": t_loaded - job.t_start,
            "prompt_eval_count": job.prompt_words,
            "prompt_eval_duration": int((t_first_actual - t_slot) * 1e9),
            "eval_count": len(pieces),
            "eval_duration": int((t_end - t_first_actual) * 1e9),
        }
        return self._final(job, done_reason, metrics, accumulated, pieces)

    def _fail(self, job: Inference, fail: str | None) -> None:
        if fail == "hang":
            self._hang()
        if fail == "close":
            raise DropConnection
        message = job.behaviour.error
        if not job.stream:
            raise ApiError(500, message)
        if not self._headers_sent:
            # streamResponse before any content: real status, Content-Type set to plain "application/json".
            raise ApiError(500, message, "application/json")
        self._stream_error_line(message)
        raise _StreamEnded

    def _final(
        self,
        job: Inference,
        done_reason: str,
        metrics: dict[str, int],
        accumulated: dict[str, str],
        pieces: list[tuple[str, str]],
    ) -> dict[str, Any]:
        """The ``done: true`` object; metrics are ``omitempty`` in Go, so zero values are left out."""
        created = go_time(time.time_ns(), utc=True)
        present = {key: value for key, value in metrics.items() if value}
        if job.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": "" if job.stream else accumulated["response"]}
            if not job.stream and accumulated["thinking"]:
                message["thinking"] = accumulated["thinking"]
            return {
                "model": job.model_field,
                "created_at": created,
                "message": message,
                "done": True,
                "done_reason": done_reason,
                **present,
            }
        final: dict[str, Any] = {
            "model": job.model_field,
            "created_at": created,
            "response": "" if job.stream else accumulated["response"],
        }
        if not job.stream and accumulated["thinking"]:
            final["thinking"] = accumulated["thinking"]
        final["done"] = True
        final["done_reason"] = done_reason
        if not job.raw:
            prompt_ids = [_fake_token_id(f"p{i}") for i in range(job.prompt_words)]
            final["context"] = prompt_ids + [_fake_token_id(text) for _kind, text in pieces]
        final.update(present)
        return final


def _go_gostring(value: Any) -> str:
    """Go's ``%#v`` for the JSON values found in a params blob."""
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def _modelfile(info: ModelInfo, system: str, params: list[str]) -> str:
    """The ``modelfile`` text of ``/api/show`` (header comment + FROM/TEMPLATE/SYSTEM/PARAMETER/LICENSE)."""
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {info.name.display_shortest()}",
        "",
        f"FROM {info.model_path or info.name.display_shortest()}",
    ]
    if info.template:
        lines.append(f'TEMPLATE """{info.template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines.extend(f"PARAMETER {p.split(None, 1)[0]} {p.split(None, 1)[1]}" for p in params)
    lines.extend(f'LICENSE """{text}"""' for text in info.licenses)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ollama_stub.py",
        description="A stand-in for `ollama serve` that serves a real model store with fake inference.",
    )
    parser.add_argument("--host", help="address to bind (default: from OLLAMA_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind; 0 picks a free one (default: from OLLAMA_HOST)")
    parser.add_argument("--models", help="model store (default: OLLAMA_MODELS, else $HOME/.ollama/models)")
    parser.add_argument("--behaviour", help="JSON behaviour file, re-read whenever it changes")
    parser.add_argument("--ready-file", help="write http://HOST:PORT here (atomically) once listening")
    parser.add_argument(
        "--prune-grace",
        type=float,
        default=PRUNE_GRACE_S,
        help="startup prune leaves blobs younger than this many seconds (default 3600 as in v0.21+; 0 = pre-0.21)",
    )
    return parser.parse_args(argv)


def _env_defaults() -> Behaviour:
    return Behaviour(
        max_parallel=max(1, env_uint("OLLAMA_NUM_PARALLEL", 1)),
        max_queue=env_uint("OLLAMA_MAX_QUEUE", 512),
    )


def _url(address: tuple[Any, ...]) -> str:
    host = str(address[0])
    return f"http://[{host}]:{address[1]}" if ":" in host else f"http://{host}:{address[1]}"


def main(argv: list[str] | None = None) -> int:
    """Bind, tidy the store as ``Serve`` does, announce readiness, serve until SIGTERM/SIGINT (exit 0)."""
    args = _parse_args(argv)
    env_host, env_port = parse_ollama_host(env_var("OLLAMA_HOST"))
    host = env_host if args.host is None else args.host
    port = env_port if args.port is None else args.port
    models_dir = args.models if args.models is not None else default_models_dir()

    behaviour = BehaviourSource(args.behaviour, _env_defaults())
    try:
        behaviour.load_initial()
    except BehaviourError as exc:
        print(f"ollama_stub: {exc}", file=sys.stderr)
        return 2

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    store = Store(models_dir)
    try:
        server = StubServer((host, port), store, behaviour, family)
    except OSError as exc:
        print(f"Error: listen tcp {host}:{port}: {_strerror(exc)}", file=sys.stderr)
        return 1

    log(f"server config env=map[OLLAMA_HOST:{_url(server.server_address)} OLLAMA_MODELS:{models_dir}]")
    try:
        store.startup(prune=not env_bool("OLLAMA_NOPRUNE"), grace_s=args.prune_grace)
    except OSError as exc:
        print(f"Error: {exc.filename}: {_strerror(exc)}: ensure path elements are traversable", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = _url(server.server_address)
    log(f"Listening on {url.removeprefix('http://')} (version {behaviour.get().version})")
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(url + "\n")
        os.replace(tmp, args.ready_file)
    print(f"listening on {url}", flush=True)

    while not stop.wait(0.5):
        pass
    # Like srvr.Close() on SIGTERM: stop accepting and cut in-flight requests; no draining.
    server.stopping.set()
    server.shutdown()
    server.server_close()
    log("shutting down")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: daemon threads may be mid-write (hung or streaming requests); skip interpreter teardown with them.
    os._exit(code)
