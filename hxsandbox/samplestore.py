"""Build real Ollama model stores on disk: the sample store of ``make demo``, the benchmarks and the tests.

The layout follows docs/ollama.md, "Store layout", "Blob names" and "Manifests":

* ``manifests/<host>/<namespace>/<model>/<tag>`` holds the manifest JSON.
* ``blobs/sha256-<hex>`` holds each blob, named by the SHA-256 of its content.
* Manifests are written the way ``WriteManifest`` writes them: ``schemaVersion`` 2, the docker v2 media type,
  a ``config`` layer of ``application/vnd.docker.container.image.v1+json`` and Go's field order
  (mediaType, digest, size), followed by a trailing newline.

Everything that migrates, verifies or serves a sample store (the Ollama stub's tests, hxd's validation and
migration tests, the demo) builds it here, so that all of them work on the same valid format. ``make_store`` is the
main entry point; the smaller functions let tests break a store on purpose.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from hxd.core.modelref import parse_ref

MANIFEST_MEDIA_TYPE: Final = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE: Final = "application/vnd.docker.container.image.v1+json"
MEDIA_PREFIX: Final = "application/vnd.ollama.image."

DEFAULT_CONFIG: Final[Mapping[str, Any]] = {
    "model_format": "gguf",
    "model_family": "llama",
    "model_families": ["llama"],
    "model_type": "1B",
    "file_type": "Q4_K_M",
    "architecture": "amd64",
    "os": "linux",
}

# A layer is either bare bytes, or (media type, bytes). The media type may be written short ("template") or
# in full ("application/vnd.ollama.image.template").
LayerSpec = bytes | tuple[str, bytes]


def sha256_digest(data: bytes) -> str:
    """The digest of ``data`` as manifests spell it: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_path(root: Path, name: str) -> Path:
    """Where the manifest of ``name`` lives under store ``root``, by Ollama's naming rules (hxd.core.modelref)."""
    return root / "manifests" / parse_ref(name, stored=True).manifest_path


def blob_path(root: Path, digest: str) -> Path:
    """Where the blob ``sha256:<hex>`` lives under store ``root``."""
    return root / "blobs" / digest.replace(":", "-")


def write_blob(root: Path, data: bytes) -> str:
    """Store ``data`` under its SHA-256 name and return its ``sha256:<hex>`` digest."""
    digest = sha256_digest(data)
    path = blob_path(root, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _media_type(kind: str) -> str:
    return kind if "/" in kind else MEDIA_PREFIX + kind


def config_bytes(overrides: Mapping[str, Any] | None = None) -> bytes:
    """The config blob: ``DEFAULT_CONFIG`` updated with ``overrides``, as compact JSON."""
    config = {**DEFAULT_CONFIG, **(overrides or {})}
    return json.dumps(config, separators=(",", ":")).encode()


def manifest_bytes(config: tuple[str, int], layers: Sequence[tuple[str, str, int]]) -> bytes:
    """Manifest JSON as ``WriteManifest`` writes it.

    ``config`` is (digest, size); each layer is (media type, digest, size).
    """
    document = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": kind, "digest": digest, "size": size} for kind, digest, size in layers],
    }
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def write_model(root: Path, name: str, layers: Sequence[LayerSpec], config: Mapping[str, Any] | None = None) -> str:
    """Write the config blob, the layer blobs and the manifest of one model. Returns the manifest digest (hex).

    A bare-bytes first layer is the weights (``application/vnd.ollama.image.model``); further bare-bytes layers
    are licenses. The manifest digest is what ``/api/tags`` reports as ``digest``: the SHA-256 of the
    manifest file.
    """
    config_data = config_bytes(config)
    config_digest = write_blob(root, config_data)
    entries: list[tuple[str, str, int]] = []
    for index, spec in enumerate(layers):
        if isinstance(spec, bytes):
            kind, data = ("model" if index == 0 else "license"), spec
        else:
            kind, data = spec
        entries.append((_media_type(kind), write_blob(root, data), len(data)))
    document = manifest_bytes((config_digest, len(config_data)), entries)
    path = manifest_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(document)
    return hashlib.sha256(document).hexdigest()


def make_store(
    root: Path,
    models: Mapping[str, Sequence[LayerSpec]],
    *,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Create (or add to) a valid store at ``root`` and return model name -> manifest digest (hex).

    ``models`` maps a name (``llama3.2``, ``llama3.2:1b``, ``hf.co/user/repo:Q4``) to its layers. See
    ``write_model`` for how layers are typed. ``configs`` optionally overrides config-blob fields per model,
    for example ``{"capabilities": ["completion", "thinking"]}``. Both ``blobs/`` and ``manifests/`` exist
    afterwards, even when ``models`` is empty.
    """
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    return {name: write_model(root, name, layers, (configs or {}).get(name)) for name, layers in models.items()}


# llm-01's three production models (docs/node-layout.md, "Models and measurements"), with tiny stand-in weights.
SAMPLE_MODELS: Final[Mapping[str, Sequence[LayerSpec]]] = {
    "llama3.2:3b": [b"llama3.2 3b weights", ("template", b"{{ .Prompt }}")],
    "qwen3:1.7b": [b"qwen3 1.7b weights"],
    "mistral-small3.2": [b"mistral-small3.2 weights", b"Apache-2.0 license text"],
}


# Ollama's own default address (docs/ollama.md), as llm-01's env file spells it.
DEFAULT_HOST = "127.0.0.1:11434"


def sample_env(models_dir: Path, digests: Mapping[str, str], ollama_host: str = DEFAULT_HOST) -> str:
    """llm-01's ollama.env (docs/node-layout.md): quoted values, the model variables, the list, a digest pin;
    OLLAMA_HOST is where the node's Ollama listens (a sandbox's stub listens on a port of its own)."""
    pin = digests["mistral-small3.2"][:12]
    return (
        "# Ollama configuration for llm-01\n"
        f'OLLAMA_HOST="{ollama_host}"\n'
        f'OLLAMA_MODELS="{models_dir}"\n'
        'OLLAMA_MODEL_LLAMA32="llama3.2:3b"\n'
        'OLLAMA_MODEL_QWEN3="qwen3:1.7b"\n'
        f'OLLAMA_MODEL_MISTRAL="mistral-small3.2@sha256:{pin}"\n'
        f'OLLAMA_MODELS_AVAILABLE="llama3.2:3b,qwen3:1.7b,mistral-small3.2@sha256:{pin}"\n'
    )


def make_node(
    canonical: Path, bulk: Path, legacy: Path, env_file: Path, *, migrated: bool, ollama_host: str = DEFAULT_HOST
) -> dict[str, str]:
    """A node with the sample models and its env file; returns model name -> manifest digest.

    ``migrated=False`` is llm-01 before the alignment: the store is a real directory at the legacy path and
    OLLAMA_MODELS points there. ``migrated=True`` is the canonical layout: the store in bulk storage, ``canonical``
    holding ``blobs``/``manifests`` symlinks into it, the legacy path a symlink to ``canonical``.
    """
    if migrated:
        digests = make_store(bulk, SAMPLE_MODELS)
        canonical.mkdir(parents=True, exist_ok=True)
        for part in ("blobs", "manifests"):
            (canonical / part).symlink_to(bulk / part)
        legacy.parent.mkdir(parents=True, exist_ok=True)
        legacy.symlink_to(canonical)
    else:
        digests = make_store(legacy, SAMPLE_MODELS)
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text(sample_env(canonical if migrated else legacy, digests, ollama_host))
    return digests


# Manifests that the store's owner could write to attack hxd (issue 14): a million layers (157 MB) and nesting
# 100,000 deep. Both are well-formed JSON that Ollama's Go decoder would read (the first) or refuse only past its
# own depth of 10000 (the second).
HOSTILE_MANIFESTS: Final = ("million-layers", "deep")


def write_hostile_manifest(root: Path, name: str, kind: str) -> Path:
    """Write manifest ``kind`` (one of ``HOSTILE_MANIFESTS``) for model ``name`` under store ``root``, streamed so
    the test itself stays small; its layers name a blob that exists (the config of an empty model)."""
    config_data = config_bytes()
    config = {"mediaType": CONFIG_MEDIA_TYPE, "digest": write_blob(root, config_data), "size": len(config_data)}
    layer = json.dumps(config, separators=(",", ":")).encode()
    head = b'{"schemaVersion":2,"mediaType":"' + MANIFEST_MEDIA_TYPE.encode() + b'","config":' + layer
    path = manifest_path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(head)
        if kind == "million-layers":
            out.write(b',"layers":[' + layer + (b"," + layer) * 999)
            for _ in range(999):
                out.write((b"," + layer) * 1000)
            out.write(b"]}\n")
        elif kind == "deep":
            out.write(b',"layers":[],"annotations":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
        else:
            raise ValueError(f"unknown hostile manifest {kind!r}; one of {HOSTILE_MANIFESTS}")
    return path
