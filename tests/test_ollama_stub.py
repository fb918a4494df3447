"""The Ollama stub (tools/ollama_stub.py) as a real subprocess against real stores on disk.

Each check is phrased as a fact from docs/ollama.md: store layout and digests, name resolution,
status codes and error bodies, NDJSON framing, timing, injected failures, pruning at startup and SIGTERM.
The clients are http.client and raw sockets, so nothing in this file shares code with the stub.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hxsandbox.samplestore import blob_path, make_store, manifest_path, write_blob
from hxsandbox.world import OllamaStub, wait_until

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
BUSY = "server busy, please try again.  maximum pending requests exceeded"
RUN_ERROR = "an error was encountered while running the model"
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


Stub = OllamaStub
Launch = Callable[..., Stub]


def _start(
    workdir: Path,
    models: Path | None,
    behaviour: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Stub:
    """Start a stub (port 0 unless ``models`` is None: then the environment decides) and wait for readiness."""
    return OllamaStub(workdir, models, behaviour).start(*args, env=env)


def _reap(stubs: list[Stub]) -> None:
    for stub in stubs:
        stub.kill()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start stubs for one test; whatever is still running afterwards is killed."""
    started: list[Stub] = []

    def start(models: Path | None, *args: Any, **kwargs: Any) -> Stub:
        stub = _start(tmp_path, models, *args, **kwargs)
        started.append(stub)
        return stub

    yield start
    _reap(started)


MODELS: dict[str, list[Any]] = {
    "llama3.2": [b"llama weights", ("template", b"{{ .Prompt }}")],
    "qwen3:0.6b": [b"qwen weights"],
    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M": [b"hf weights", b"MIT license text"],
    "myns/custom:v1": [b"custom weights", ("system", b"You are terse."), ("params", b'{"temperature":0.7}')],
}
CONFIGS = {"qwen3:0.6b": {"model_family": "qwen3", "model_families": ["qwen3"], "capabilities": ["thinking"]}}


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "models"
    return root, make_store(root, MODELS, configs=CONFIGS)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stub]:
    """One stub for the checks that only read: it saves a process start per case."""
    workdir = tmp_path_factory.mktemp("shared")
    make_store(workdir / "models", MODELS, configs=CONFIGS)
    stub = _start(workdir, workdir / "models", {"version": "0.5.1", "models": {"*": {"tokens": 1}}})
    yield stub
    _reap([stub])


def call(
    stub: Stub, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on a fresh connection; ``body`` that is not bytes is sent as JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=10)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def call_json(stub: Stub, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, _headers, data = call(stub, method, path, body)
    return status, json.loads(data)


def generate(stub: Stub, **req: Any) -> tuple[int, Any]:
    """A non-streaming /api/generate."""
    return call_json(stub, "POST", "/api/generate", {"stream": False, **req})


def stream(stub: Stub, path: str, req: dict[str, Any]) -> tuple[float, list[tuple[float, Any]]]:
    """POST and read NDJSON lines; returns (seconds to first line, [(arrival seconds, object)])."""
    conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=10)
    conn.connect()
    try:
        start = time.perf_counter()
        conn.request("POST", path, body=json.dumps(req).encode())
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        lines: list[tuple[float, Any]] = []
        while line := resp.readline():
            lines.append((time.perf_counter() - start, json.loads(line)))
        return lines[0][0], lines
    finally:
        conn.close()


def raw_exchange(port: int, request: bytes, until: bytes = b"0\r\n\r\n", timeout: float = 5.0) -> bytes:
    """Send raw bytes and read until ``until`` appears (or the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while until not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def post_raw(path: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


def split_chunks(body: bytes) -> list[bytes]:
    """Decode HTTP/1.1 chunked framing strictly; fails on anything malformed or a missing terminator."""
    chunks: list[bytes] = []
    while True:
        size_line, sep, body = body.partition(b"\r\n")
        assert sep, "truncated chunk header"
        size = int(size_line, 16)
        if size == 0:
            assert body == b"\r\n", f"unexpected trailer {body!r}"
            return chunks
        chunks.append(body[:size])
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


# ---------------------------------------------------------------------------------------------------------------
# liveness, version, routing
# ---------------------------------------------------------------------------------------------------------------


def test_liveness_version_and_routing(shared: Stub) -> None:
    stub = shared
    status, headers, body = call(stub, "GET", "/")
    assert (status, body, headers["Content-Type"]) == (200, b"Ollama is running", "text/plain; charset=utf-8")
    status, headers, body = call(stub, "HEAD", "/")
    assert (status, body, headers["Content-Length"]) == (200, b"", "17")
    status, headers, body = call(stub, "GET", "/api/version")
    assert (status, body, headers["Content-Type"]) == (200, b'{"version":"0.5.1"}', "application/json; charset=utf-8")
    assert call(stub, "GET", "/nope")[::2] == (404, b"404 page not found")
    assert call(stub, "GET", "/api/generate")[::2] == (405, b"405 method not allowed")
    assert call(stub, "POST", "/api/pull", {"model": "x"})[::2] == (501, b'{"error":"not implemented by ollama_stub"}')
    # allowedHostsMiddleware: a loopback-bound server refuses foreign Host headers with an empty 403.
    assert call(stub, "GET", "/", headers={"Host": "evil.example.com"})[::2] == (403, b"")
    assert call(stub, "GET", "/", headers={"Host": "localhost:11434"})[0] == 200
    # One gin-style line per request on stderr (written just after the response, hence the short wait).
    gin_line = re.compile(r'^\[GIN\] \d{4}/\d\d/\d\d - [\d:]{8} \| 200 \| +\S+ \| +127\.0\.0\.1 \| GET {6}"/"$', re.M)
    wait_until(lambda: gin_line.search(stub.stderr.read_text()), 2, "the gin line of GET /")
    assert gin_line.search(stub.stderr.read_text())


# ---------------------------------------------------------------------------------------------------------------
# /api/tags and the store
# ---------------------------------------------------------------------------------------------------------------


def test_tags_lists_the_store_like_ollama(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    root, digests = store
    for offset, name in enumerate(MODELS):  # distinct whole-second mtimes: list order is newest first
        os.utime(manifest_path(root, name), ns=(1_700_000_000_000_000_000 + offset * 10**9 + 123,) * 2)
    stub = launch(root)
    status, headers, body = call(stub, "GET", "/api/tags")
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
    assert b": " not in body and b", " not in body  # Go's compact encoding
    models = json.loads(body)["models"]
    assert [m["name"] for m in models] == [
        "myns/custom:v1",
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        "qwen3:0.6b",
        "llama3.2:latest",
    ]
    by_name = {m["name"]: m for m in models}
    for name, digest in digests.items():
        short = {"llama3.2": "llama3.2:latest"}.get(name, name)
        entry = by_name[short]
        manifest = manifest_path(root, name)
        assert entry["model"] == short
        assert entry["digest"] == digest == hashlib.sha256(manifest.read_bytes()).hexdigest()
        document = json.loads(manifest.read_bytes())
        assert entry["size"] == document["config"]["size"] + sum(layer["size"] for layer in document["layers"])
        stamp = datetime.fromisoformat(entry["modified_at"])  # RFC 3339, local offset
        assert int(stamp.timestamp()) == manifest.stat().st_mtime_ns // 10**9
        fraction = re.search(r"\.(\d+)", entry["modified_at"])
        assert fraction is not None and fraction.group(1) == "000000123"  # nanoseconds, as Go prints them
    assert by_name["llama3.2:latest"]["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1B",
        "quantization_level": "Q4_K_M",
    }
    assert by_name["qwen3:0.6b"]["capabilities"] == ["thinking"]
    assert "capabilities" not in by_name["llama3.2:latest"]


def test_tags_rescans_the_store_on_every_request(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    root, digests = store
    stub = launch(root)

    def listing() -> dict[str, tuple[str, str]]:
        status, data = call_json(stub, "GET", "/api/tags")
        assert status == 200, data
        return {m["name"]: (m["digest"], m["modified_at"]) for m in data["models"]}

    before = listing()
    assert {name: digest for name, (digest, _) in before.items()} == {
        {"llama3.2": "llama3.2:latest"}.get(name, name): digest for name, digest in digests.items()
    }
    new = make_store(root, {"added:7b": [b"new weights"]})
    assert listing()["added:7b"][0] == new["added:7b"]
    manifest_path(root, "qwen3:0.6b").unlink()
    assert "qwen3:0.6b" not in listing()
    # Same bytes, new mtime: the digest-keyed cache keeps the old modified_at (model_list_cache.go).
    os.utime(manifest_path(root, "llama3.2"), (1_600_000_000, 1_600_000_000))
    assert listing()["llama3.2:latest"] == before["llama3.2:latest"]
    # A model whose config blob is missing is left out; a stray dot-file at depth 4 is skipped.
    broken = make_store(root, {"broken": [b"broken weights"]})
    config_digest = json.loads(manifest_path(root, "broken").read_bytes())["config"]["digest"]
    blob_path(root, config_digest).unlink()
    (manifest_path(root, "llama3.2").parent / ".DS_Store").write_bytes(b"junk")
    names = listing()
    assert manifest_path(root, "broken").is_file() and "broken" in broken  # its manifest is there ...
    assert "broken:latest" not in names and len(names) == 4  # ... yet it is left out
    assert names.keys() == before.keys() - {"qwen3:0.6b"} | {"added:7b"}
    # A dangling symlink at depth 4 makes manifest.Manifests fail: the whole listing is a 500.
    dangling = manifest_path(root, "llama3.2").parent / "gone"
    dangling.symlink_to(root / "nowhere")
    status, data = call_json(stub, "GET", "/api/tags")
    assert (status, data) == (500, {"error": f"stat {dangling}: no such file or directory"})
    dangling.unlink()  # and once it is gone, the store lists again
    assert listing().keys() == names.keys()


def test_startup_prunes_like_ollama(launch: Launch, tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_store(root, {"keep": [b"kept weights"]})
    old = time.time() - 7200
    orphan_old = write_blob(root, b"orphaned long ago")
    orphan_new = write_blob(root, b"orphaned just now")
    partial_old = root / "blobs" / ("sha256-" + "a" * 64 + "-partial")
    partial_old.write_bytes(b"x")
    tmp_new = root / "blobs" / ("sha256-" + "b" * 64 + ".tmp")
    tmp_new.write_bytes(b"y")
    legacy = root / "blobs" / ("sha256:" + "c" * 64)  # pre-0.1.30 name: renamed by fixBlobs, then orphan-pruned
    legacy.write_bytes(b"z")
    (root / "manifests" / "example.com" / "empty" / "dir").mkdir(parents=True)
    for path in (root / "blobs").iterdir():
        if path.name != orphan_new.replace(":", "-") and path != tmp_new:
            os.utime(path, (old, old))
    referenced = {p.name for p in (root / "blobs").iterdir()} - {
        orphan_old.replace(":", "-"),
        orphan_new.replace(":", "-"),
        partial_old.name,
        tmp_new.name,
        legacy.name,
    }

    # OLLAMA_NOPRUNE=yes does not parse as a bool, which envconfig.Bool reads as true: nothing is pruned.
    launch(root, env={"OLLAMA_NOPRUNE": "yes"}).stop()
    assert partial_old.exists() and blob_path(root, orphan_old).exists()
    assert (root / "blobs" / ("sha256-" + "c" * 64)).exists() and not legacy.exists()  # fixBlobs always runs

    # A corrupt manifest (bad name at depth 4) makes startup skip the prune.
    junk = manifest_path(root, "keep").parent / ".DS_Store"
    junk.write_bytes(b"junk")
    stub = launch(root)
    stub.stop()
    assert partial_old.exists() and blob_path(root, orphan_old).exists()
    assert "corrupt manifests detected, skipping prune operation" in stub.stderr.read_text()

    junk.unlink()
    launch(root).stop()
    remaining = {p.name for p in (root / "blobs").iterdir()}
    assert remaining == referenced | {orphan_new.replace(":", "-"), tmp_new.name}  # young files are spared
    assert not (root / "manifests" / "example.com").exists()  # PruneDirectory removed the empty tree


def test_ollama_host_and_models_from_the_environment(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    ready = store[0].parent / "ready"
    stub = launch(
        None,
        env={"OLLAMA_HOST": " 'http://127.0.0.1:0' ", "OLLAMA_MODELS": str(store[0])},
        args=("--ready-file", str(ready)),
    )
    assert ready.read_text() == stub.url + "\n"
    status, data = call_json(stub, "GET", "/api/tags")
    assert status == 200 and len(data["models"]) == 4


# ---------------------------------------------------------------------------------------------------------------
# names and errors
# ---------------------------------------------------------------------------------------------------------------


def test_name_resolution(shared: Stub) -> None:
    stub = shared
    for name in (
        "llama3.2",
        "llama3.2:latest",
        "registry.ollama.ai/library/llama3.2:latest",
        "https://registry.ollama.ai/library/llama3.2",
        "LLaMA3.2:LATEST",
        "library/llama3.2",
        "llama3.2:local",
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        "myns/custom:v1",
    ):
        status, data = generate(stub, model=name, prompt="hi")
        assert (status, data["model"], data["done"]) == (200, name, True), (name, data)


GEN = "/api/generate"
ERROR_CASES: list[tuple[str, Any, int, str]] = [
    # docs/ollama.md, "Model names": name@sha256:... parses to an invalid model name
    (GEN, {"model": "mistral-small3.2@sha256:" + "0" * 64, "prompt": "x"}, 400, "invalid model name"),
    (GEN, {"model": "bad name!", "prompt": "x"}, 400, "invalid model name"),
    (GEN, {"model": "llama3.2:", "prompt": "x"}, 400, "invalid model name"),
    (GEN, {"model": "a.b/llama3.2", "prompt": "x"}, 400, "invalid model name"),  # no "." in a namespace
    (GEN, {"model": "xyz", "prompt": "x"}, 404, "model 'xyz' not found"),
    (GEN, {"model": "", "prompt": "x"}, 404, "model '' not found"),
    (GEN, {"model": "llama3.2:local:cloud"}, 400, 'use either :local or :cloud, not both: "llama3.2:local:cloud"'),
    (GEN, {"model": "llama3.2", "keep_alive": "3600"}, 400, 'time: missing unit in duration "3600"'),
    (GEN, {"model": "llama3.2", "think": True, "prompt": "x"}, 400, '"llama3.2" does not support thinking'),
    (GEN, {"model": "llama3.2", "top_logprobs": 21}, 400, "top_logprobs must be between 0 and 20"),
    (GEN, {"model": 5}, 400, "json: cannot unmarshal number into Go struct field GenerateRequest.model of type string"),
    (GEN, b"", 400, "missing request body"),
    (GEN, b"[]", 400, "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
    ("/api/chat", {"model": "xyz", "messages": []}, 404, "model 'xyz' not found"),
    ("/api/chat", {"model": ""}, 400, "model is required"),
    ("/api/show", {"model": "xyz"}, 404, "model 'xyz:latest' not found"),
    ("/api/show", {}, 400, "model is required"),
    ("/api/show", {"model": "x@sha256:" + "1" * 64}, 400, "invalid model name"),
    ("/api/delete", {"model": "xyz"}, 404, "model 'xyz' not found"),
    ("/api/delete", {"model": "bad name"}, 400, 'name "bad name" is invalid'),
]


@pytest.mark.parametrize(("path", "body", "status", "error"), ERROR_CASES)
def test_error_status_and_body(shared: Stub, path: str, body: Any, status: int, error: str) -> None:
    stub = shared
    method = "DELETE" if path == "/api/delete" else "POST"
    got_status, headers, data = call(stub, method, path, body)
    assert (got_status, json.loads(data)) == (status, {"error": error})
    assert headers["Content-Type"] == "application/json; charset=utf-8"


def test_missing_blobs_surface_as_ollama_reports_them(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    root, _digests = store
    stub = launch(root)
    weights = json.loads(manifest_path(root, "qwen3:0.6b").read_bytes())["layers"][0]["digest"]
    blob_path(root, weights).unlink()  # no GGUF to read, so no completion capability
    assert generate(stub, model="qwen3:0.6b", prompt="x") == (400, {"error": '"qwen3:0.6b" does not support generate'})
    config = json.loads(manifest_path(root, "llama3.2").read_bytes())["config"]["digest"]
    blob_path(root, config).unlink()  # GetModel cannot open the config: fs.ErrNotExist
    assert generate(stub, model="llama3.2", prompt="x") == (404, {"error": "model 'llama3.2' not found"})
    assert call(stub, "HEAD", f"/api/blobs/{config}")[0] == 404
    assert call(stub, "HEAD", f"/api/blobs/{weights.replace('sha256:', 'sha256-')}")[0] == 404
    assert call(stub, "HEAD", "/api/blobs/sha256:123")[0] == 400
    present = json.loads(manifest_path(root, "myns/custom:v1").read_bytes())["layers"][0]["digest"]
    assert call(stub, "HEAD", f"/api/blobs/{present}")[0] == 200


def test_show_and_delete(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    root, _digests = store
    stub = launch(root)
    status, data = call_json(stub, "POST", "/api/show", {"model": "MYNS/custom:v1"})
    assert status == 200
    assert data["system"] == "You are terse."
    assert data["parameters"] == "temperature                    0.7"
    assert data["details"]["format"] == "gguf" and data["capabilities"] == ["completion"]
    assert data["model_info"] == {"general.architecture": "llama"}
    mtime_ns = manifest_path(root, "myns/custom:v1").stat().st_mtime_ns
    assert int(datetime.fromisoformat(data["modified_at"]).timestamp()) == mtime_ns // 10**9
    # Two tags share the weights: deleting one keeps the shared blob and drops the unshared license.
    make_store(root, {"hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:copy": [b"hf weights"]})
    doc = json.loads(manifest_path(root, "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M").read_bytes())
    shared, license_blob = (blob_path(root, layer["digest"]) for layer in doc["layers"])
    status, _headers, body = call(
        stub, "DELETE", "/api/delete", {"model": "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"}
    )
    assert (status, body) == (200, b"")
    assert shared.exists() and not license_blob.exists()
    assert not manifest_path(root, "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M").exists()
    names = {m["name"] for m in call_json(stub, "GET", "/api/tags")[1]["models"]}
    assert "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:copy" in names
    assert "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M" not in names


# ---------------------------------------------------------------------------------------------------------------
# generation: framing, fields, timing
# ---------------------------------------------------------------------------------------------------------------


def test_streaming_framing_and_fields(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    stub = launch(store[0], {"models": {"llama3.2": {"tokens": 4, "first_token_delay": 0.05, "token_rate": 100}}})
    request = post_raw("/api/generate", {"model": "llama3.2", "prompt": "Why is the sky blue?"})
    raw = raw_exchange(stub.port, request)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers
    chunks = split_chunks(body)
    assert len(chunks) == 5 and all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in chunks)
    objects = [json.loads(c) for c in chunks]
    for obj in objects[:-1]:
        assert list(obj) == ["model", "created_at", "response", "done"]
        assert obj["model"] == "llama3.2" and obj["done"] is False and RFC3339_UTC.match(obj["created_at"])
    assert "".join(o["response"] for o in objects[:-1]) == "The sky is blue"
    final = objects[-1]
    assert list(final) == ["model", "created_at", "response", "done", "done_reason", "context", *METRICS]
    assert (final["response"], final["done"], final["done_reason"], final["eval_count"]) == ("", True, "stop", 4)
    assert all(isinstance(final[k], int) and final[k] > 0 for k in METRICS)
    # Durations are nanoseconds: 50 ms of prompt evaluation, 4 tokens at 100/s = 40 ms of evaluation.
    assert 50_000_000 <= final["prompt_eval_duration"] < 70_000_000
    assert 40_000_000 <= final["eval_duration"] < 60_000_000
    assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"]


def test_keep_alive_connection_and_http10(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    stub = launch(store[0], {"models": {"*": {"tokens": 2}}})
    with socket.create_connection(("127.0.0.1", stub.port), timeout=5) as sock:
        for _ in range(2):  # two streams on one HTTP/1.1 connection
            sock.sendall(post_raw("/api/generate", {"model": "llama3.2", "prompt": "x"}))
            data = b""
            while not data.endswith(b"0\r\n\r\n"):
                data += sock.recv(65536)
            assert len(split_chunks(data.partition(b"\r\n\r\n")[2])) == 3
    request = post_raw("/api/generate", {"model": "llama3.2", "prompt": "x"}).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    head, _, body = raw_exchange(stub.port, request, until=b"never").partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert [json.loads(line)["done"] for line in body.splitlines()] == [False, False, True]


def test_non_streaming_and_num_predict(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    stub = launch(store[0], {"models": {"*": {"tokens": 6, "text": "alpha beta gamma"}}})
    status, headers, body = call(
        stub,
        "POST",
        "/api/generate",
        {"model": "llama3.2", "prompt": "x", "stream": False, "options": {"num_predict": 4}},
    )
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    data = json.loads(body)
    assert (data["response"], data["done_reason"], data["eval_count"]) == ("alpha beta gamma alpha", "length", 4)
    status, data = generate(stub, model="llama3.2", prompt="x", raw=True)
    assert data["response"] == "alpha beta gamma alpha beta gamma" and "context" not in data


def test_first_token_delay_is_accurate(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    delay = 0.1
    stub = launch(store[0], {"models": {"llama3.2": {"first_token_delay": delay, "tokens": 2}}})
    assert generate(stub, model="llama3.2")[1]["done_reason"] == "load"  # warm it up
    firsts = [stream(stub, "/api/generate", {"model": "llama3.2", "prompt": "hello"})[0] for _ in range(3)]
    assert min(firsts) >= delay
    assert statistics.median(firsts) <= delay + 0.005, firsts


def test_load_delay_load_and_unload(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    stub = launch(store[0], {"models": {"llama3.2": {"load_delay": 0.2, "tokens": 1}}})
    assert call_json(stub, "GET", "/api/ps") == (200, {"models": []})
    start = time.perf_counter()
    status, data = generate(stub, model="llama3.2")
    assert time.perf_counter() - start >= 0.2
    assert list(data) == ["model", "created_at", "response", "done", "done_reason"]
    assert (data["response"], data["done"], data["done_reason"]) == ("", True, "load")
    ps = call_json(stub, "GET", "/api/ps")[1]["models"]
    assert [(m["name"], m["size_vram"] == m["size"]) for m in ps] == [("llama3.2:latest", True)]
    assert set(ps[0]) == {"name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"}
    status, data = generate(stub, model="llama3.2", prompt="warm")
    assert data["load_duration"] < 50_000_000  # resident: no load this time
    status, data = generate(stub, model="llama3.2", keep_alive=0)
    assert (status, data["done_reason"]) == (200, "unload")
    assert call_json(stub, "GET", "/api/ps")[1]["models"] == []
    status, data = generate(stub, model="llama3.2", prompt="cold again")
    assert data["load_duration"] >= 200_000_000


def test_ollama_keep_alive_zero_and_a_requests_own_keep_alive(
    launch: Launch, store: tuple[Path, dict[str, str]]
) -> None:
    """server/sched.go at fb30760: a model loads for the request's keep_alive, else OLLAMA_KEEP_ALIVE (load, 512-515);
    a request without one leaves a loaded runner's duration as it was (useLoadedRunner, 483-485); when the last
    request ends, a duration of 0 unloads the runner at once (processCompleted, 386-392), so the next pays the load."""
    load = 0.2
    stub = launch(store[0], {"models": {"llama3.2": {"load_delay": load, "tokens": 1}}}, env={"OLLAMA_KEEP_ALIVE": "0"})
    assert generate(stub, model="llama3.2")[1]["done_reason"] == "load"
    assert call_json(stub, "GET", "/api/ps")[1]["models"] == []  # unloaded after the load request
    assert generate(stub, model="llama3.2", prompt="x")[1]["load_duration"] >= load * 1e9  # so this one loads again
    assert generate(stub, model="llama3.2", keep_alive=300)[1]["done_reason"] == "load"
    [loaded] = call_json(stub, "GET", "/api/ps")[1]["models"]
    status, data = generate(stub, model="llama3.2", prompt="x")  # no keep_alive: the runner keeps its 300 s
    assert status == 200 and data["load_duration"] < load * 1e9
    [still] = call_json(stub, "GET", "/api/ps")[1]["models"]
    assert still["expires_at"] >= loaded["expires_at"]
    assert generate(stub, model="llama3.2", prompt="x", keep_alive=0)[0] == 200  # the request's own 0 wins
    assert call_json(stub, "GET", "/api/ps")[1]["models"] == []


def test_requests_beyond_num_parallel_wait_in_order(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    """OLLAMA_NUM_PARALLEL (envconfig/config.go 275) slots per runner; the others wait on its semaphore
    (llm/llama_server.go: Completion, 1536), golang.org/x/sync/semaphore, which serves waiters first come first
    served."""
    stub = launch(store[0], {"models": {"llama3.2": {"first_token_delay": 0.08, "tokens": 1}}},
                  env={"OLLAMA_NUM_PARALLEL": "1"})  # fmt: skip
    generate(stub, model="llama3.2")  # load it
    finished: list[int] = []

    def one(index: int) -> None:
        assert generate(stub, model="llama3.2", prompt="x")[0] == 200
        finished.append(index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(10)
    assert finished == [0, 1, 2, 3]


def test_chat_and_thinking(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    stub = launch(store[0], {"models": {"qwen3:0.6b": {"tokens": 2, "thinking_tokens": 2}}})
    _first, lines = stream(stub, "/api/chat", {"model": "qwen3:0.6b", "messages": [{"role": "user", "content": "hi"}]})
    objects = [obj for _t, obj in lines]
    assert [o["message"].get("thinking", "") for o in objects[:4]] == ["The", " sky", "", ""]
    assert [o["message"]["content"] for o in objects[:4]] == ["", "", "The", " sky"]
    assert all(o["message"]["role"] == "assistant" for o in objects)
    assert list(objects[-1])[:5] == ["model", "created_at", "message", "done", "done_reason"]
    assert objects[-1]["eval_count"] == 4 and "context" not in objects[-1]
    status, data = generate(stub, model="qwen3:0.6b", prompt="x", think=False)
    assert (status, data["response"], "thinking" in data) == (200, "The sky", False)
    status, data = generate(stub, model="qwen3:0.6b", prompt="x")
    assert (status, data["thinking"], data["response"]) == (200, "The sky", "The sky")


# ---------------------------------------------------------------------------------------------------------------
# injected failures, reconfiguration, concurrency, shutdown
# ---------------------------------------------------------------------------------------------------------------


def test_stream_error_mid_stream(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    stub = launch(store[0], {"models": {"llama3.2": {"tokens": 6, "fail": "stream_error", "fail_after": 2}}})
    raw = raw_exchange(stub.port, post_raw("/api/generate", {"model": "llama3.2", "prompt": "x"}))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    chunks = split_chunks(body)
    assert [json.loads(c).get("done") for c in chunks[:2]] == [False, False]
    assert chunks[2:] == [b'{"error":"' + RUN_ERROR.encode() + b'"}\n']
    # Before the first chunk the error keeps its real status (and plain application/json).
    stub.set_behaviour({"models": {"llama3.2": {"fail": "stream_error", "fail_after": 0, "error": "boom <1>"}}})
    status, headers, data = call(stub, "POST", "/api/generate", {"model": "llama3.2", "prompt": "x"})
    assert (status, headers["Content-Type"], data) == (500, "application/json", b'{"error":"boom \\u003c1\\u003e"}')
    assert generate(stub, model="llama3.2", prompt="x") == (500, {"error": "boom <1>"})


def test_busy_not_found_close_and_hang(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    stub = launch(store[0], {"models": {"llama3.2": {"fail": "busy"}, "qwen3:0.6b": {"fail": "not_found"}}})
    assert generate(stub, model="llama3.2", prompt="x") == (503, {"error": BUSY})
    assert generate(stub, model="qwen3:0.6b", prompt="x") == (404, {"error": "model 'qwen3:0.6b' not found"})

    stub.set_behaviour({"models": {"llama3.2": {"tokens": 6, "fail": "close", "fail_after": 2}}})
    conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=5)
    conn.request("POST", "/api/generate", body=json.dumps({"model": "llama3.2", "prompt": "x"}).encode())
    resp = conn.getresponse()
    assert json.loads(resp.readline())["response"] == "The"
    assert json.loads(resp.readline())["response"] == " sky"
    with pytest.raises(http.client.IncompleteRead):
        resp.read()
    conn.close()

    stub.set_behaviour({"models": {"llama3.2": {"fail": "hang"}}})
    conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=0.3)
    conn.request("POST", "/api/generate", body=json.dumps({"model": "llama3.2", "prompt": "x"}).encode())
    with pytest.raises(TimeoutError):
        conn.getresponse()
    conn.close()  # the hung request notices the disconnect and gives its slot back
    stub.set_behaviour({"models": {"llama3.2": {"tokens": 1}}})
    start = time.perf_counter()
    assert generate(stub, model="llama3.2", prompt="x")[0] == 200
    assert time.perf_counter() - start < 1.0


def test_behaviour_file_is_reread(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    stub = launch(store[0], {"models": {"llama3.2": {"tokens": 3}}})
    assert generate(stub, model="llama3.2", prompt="x")[1]["eval_count"] == 3
    stub.set_behaviour({"models": {"llama3.2": {"tokens": 5}}})
    assert generate(stub, model="llama3.2", prompt="x")[1]["eval_count"] == 5
    stub.behaviour.write_text("{not json")  # a broken file is reported and the last good one stays
    assert generate(stub, model="llama3.2", prompt="x")[1]["eval_count"] == 5
    assert "ignoring invalid behaviour file" in stub.stderr.read_text()


def _parallel(stub: Stub, count: int, stagger: float = 0.0) -> tuple[float, list[int]]:
    statuses: list[int] = [0] * count

    def one(index: int) -> None:
        statuses[index] = generate(stub, model="llama3.2", prompt="x")[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
        time.sleep(stagger)
    for thread in threads:
        thread.join(10)
    return time.perf_counter() - start, statuses


def test_four_parallel_requests(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    delay = 0.2
    stub = launch(store[0], {"max_parallel": 4, "models": {"llama3.2": {"first_token_delay": delay, "tokens": 2}}})
    generate(stub, model="llama3.2")  # load it
    elapsed, statuses = _parallel(stub, 4)
    assert statuses == [200] * 4
    assert delay <= elapsed < 2 * delay, elapsed  # all four ran at once
    stub.set_behaviour({"max_parallel": 1, "models": {"llama3.2": {"first_token_delay": delay, "tokens": 2}}})
    elapsed, statuses = _parallel(stub, 4)
    assert statuses == [200] * 4
    assert elapsed >= 4 * delay, elapsed  # OLLAMA_NUM_PARALLEL=1: the runner serves one at a time


def test_pending_loads_beyond_max_queue_get_503(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    stub = launch(store[0], {"max_queue": 1, "models": {"llama3.2": {"load_delay": 0.4, "tokens": 1}}})
    _elapsed, statuses = _parallel(stub, 3, stagger=0.05)
    assert sorted(statuses) == [200, 200, 503]


def test_sigterm_exits_zero_even_with_requests_in_flight(launch: Launch, store: tuple[Path, dict[str, str]]) -> None:
    stub = launch(store[0], {"models": {"llama3.2": {"fail": "hang"}}})
    conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=5)
    conn.request("POST", "/api/generate", body=json.dumps({"model": "llama3.2", "prompt": "x"}).encode())
    time.sleep(0.1)  # let the request reach the hang
    start = time.perf_counter()
    assert stub.stop() == 0
    assert time.perf_counter() - start < 2.0
    conn.close()
    assert "Listening on 127.0.0.1:" in stub.stderr.read_text()
