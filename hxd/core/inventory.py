"""What a node is, in one JSON-able structure: the facts fleet views compare between nodes.

``hxctl inventory`` prints it on each node; ``hxctl fleet`` gathers it over SSH. Everything here is read from the
node's own files, as systemd and Ollama would see them: the effective config, the environment systemd passes to
Ollama (hxd.core.envfile_reader), the store's layout and its models by manifest digest, the digest pins; and the
version the running Ollama reports (``GET /api/version``), since nodes that run different Ollama versions can read
the same store and names differently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hxd import __version__
from hxd.core.config import Config
from hxd.core.envfile_reader import read_envfile
from hxd.core.errors import HxdError, Unreadable
from hxd.core.modelref import BadReference, parse_ref
from hxd.core.ollama_api import OllamaUnavailable, version
from hxd.core.ollama_env import api_url, ollama_var
from hxd.core.store import Store, StoreError
from hxd.core.systemctl import SystemctlController
from hxd.core.validate import MODEL_VARIABLE, MODELS_DIR

_VERSION_TIMEOUT_SEC = 3.0  # fleet views wait for every node (hxctl fleet --timeout, 20 s by default)


def inventory(config: Config) -> dict[str, Any]:
    """The node's facts; problems reading one part are reported in ``errors``, never raised."""
    errors: list[str] = []
    try:
        environment = read_envfile(config.paths.env_file).environment
    except Unreadable as exc:
        environment = {}
        errors.append(str(exc))
    store_root = Path(ollama_var(environment.get(MODELS_DIR, "")) or config.paths.canonical)
    try:
        ollama_unit = "active" if SystemctlController().is_active(config.ollama.unit) else "inactive"
    except HxdError as exc:
        ollama_unit = "unknown"
        errors.append(str(exc))
    try:
        ollama_version: str | None = version(api_url(config, environment), _VERSION_TIMEOUT_SEC)
    except OllamaUnavailable as exc:
        ollama_version = None
        if ollama_unit == "active":  # a stopped Ollama has no version to report; a running one that does not answer
            errors.append(str(exc))
    return {
        "node": config.node_name,
        "version": __version__,
        "config": {k: v for k, v in config.model_dump(mode="json").items() if k != "node"},
        "layout": layout(config),
        "environment": environment,
        "models": _models(Store(store_root), errors),
        "pins": _pins(environment),
        "ollama_unit": ollama_unit,
        "ollama_version": ollama_version,
        "errors": errors,
    }


def layout(config: Config) -> dict[str, str]:
    """Each path of the canonical layout and what it is now: ``-> target`` for a symlink, ``directory``, ``missing``;
    ``state`` sums it up: ``canonical`` when blobs and manifests lead into bulk storage and the legacy path (if any)
    leads to the canonical path, ``legacy`` when the canonical path holds no store yet (missing, or a directory without
    blobs and manifests, as a node before its migration often has), ``mixed`` otherwise."""
    p = config.paths
    entries = {
        "canonical": p.canonical,
        "canonical/blobs": p.canonical / "blobs",
        "canonical/manifests": p.canonical / "manifests",
        "legacy": p.legacy,
    }
    described = {name: _what(path) for name, path in entries.items()}
    into_bulk = all(_real(p.canonical / part) == _real(p.bulk / part) for part in ("blobs", "manifests"))
    legacy_ok = not os.path.lexists(p.legacy) or _real(p.legacy) == _real(p.canonical)
    if into_bulk and legacy_ok and (p.canonical / "blobs").is_symlink():
        described["state"] = "canonical"
    elif not any(os.path.lexists(p.canonical / part) for part in ("blobs", "manifests")):
        described["state"] = "legacy"
    else:
        described["state"] = "mixed"
    return described


def _what(path: Path) -> str:
    if path.is_symlink():
        return f"-> {os.readlink(path)}"
    if path.is_dir():
        return "directory"
    return "file" if path.exists() else "missing"


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _models(store: Store, errors: list[str]) -> dict[str, str]:
    """Full model name -> manifest digest, for every manifest in the store Ollama uses."""
    models: dict[str, str] = {}
    for path in store.manifest_files():
        try:
            manifest = store.read_manifest(path)
        except StoreError as exc:
            errors.append(str(exc))
            continue
        models[parse_ref(manifest.name, stored=True).full_name] = manifest.digest
    return models


def _pins(environment: dict[str, str]) -> dict[str, str]:
    """Model variable -> its digest pin, for the variables that carry one."""
    pins: dict[str, str] = {}
    for key, value in environment.items():
        if MODEL_VARIABLE.fullmatch(key):
            try:
                ref = parse_ref(value)
            except BadReference:
                continue
            if ref.pin:
                pins[key] = ref.pin
    return pins
