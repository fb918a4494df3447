"""What the migration tests share: a node before the migration, fake service controllers, the invariant.

The fakes stand in for systemd only (the true edge here): ``FakeController`` records what was asked;
hxsandbox.systemd.OllamaService runs the Ollama stub as "ollama.service".
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from hxd.core.config import Config, OllamaConfig, PathsConfig
from hxsandbox.samplestore import make_node
from hxsandbox.world import node_paths


@dataclass
class FakeController:
    """A service that is just a flag; ``calls`` records every request in order."""

    active: bool = True
    calls: list[str] = field(default_factory=list)

    def is_active(self, unit: str) -> bool:
        self.calls.append(f"is_active {unit}")
        return self.active

    def stop(self, unit: str) -> None:
        self.calls.append(f"stop {unit}")
        self.active = False

    def start(self, unit: str) -> None:
        self.calls.append(f"start {unit}")
        self.active = True


@dataclass
class FlagController:
    """A service whose state outlives the process that asks (as systemd's does): active while ``flag`` exists.
    Stop and start are one system call each, so a kill cannot leave a half-changed state."""

    flag: Path

    def is_active(self, unit: str) -> bool:
        return self.flag.exists()

    def stop(self, unit: str) -> None:
        self.flag.unlink(missing_ok=True)

    def start(self, unit: str) -> None:
        self.flag.touch()


def node_config(root: Path, bulk: Path | None = None, url: str = "http://127.0.0.1:9") -> Config:
    """Config for a node under ``root`` (bulk storage elsewhere when given, e.g. on another filesystem)."""
    paths = PathsConfig(**{**node_paths(root), **({"bulk": bulk} if bulk else {})})
    return Config(paths=paths, ollama=OllamaConfig(url=url, user="ollama", group="ollama"))


def make_legacy_node(config: Config) -> dict[str, str]:
    """llm-01 before the alignment: the store is a real directory at the legacy path."""
    p = config.paths
    host = urlsplit(config.ollama.url).netloc  # the env file names the address the node's Ollama listens on
    return make_node(p.canonical, p.bulk, p.legacy, p.env_file, migrated=False, ollama_host=host)


def snapshot(store: Path) -> dict[str, str]:
    """Every file of a store (manifests and blobs) -> sha256 of its bytes, plus manifest mtimes."""
    result: dict[str, str] = {}
    for path in sorted(store.rglob("*")):
        if path.is_file() and not path.name.endswith(".part"):
            relative = str(path.relative_to(store))
            if relative.startswith(("blobs/", "manifests/")):
                result[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
                if relative.startswith("manifests/"):
                    result[relative + "@mtime"] = str(path.stat().st_mtime_ns)
    return result


def readable_models(root: Path) -> dict[str, str]:
    """Models readable through ``root`` (following symlinks): name -> manifest sha256, only when every blob it
    references is there with content that hashes to its name."""
    models: dict[str, str] = {}
    manifests = root / "manifests"
    if not manifests.is_dir():
        return models
    for path in manifests.glob("*/*/*/*"):
        data = path.read_bytes()
        document = json.loads(data)
        layers = [document["config"], *document["layers"]]
        if all(_blob_ok(root, layer["digest"]) for layer in layers):
            models[str(path.relative_to(manifests))] = hashlib.sha256(data).hexdigest()
    return models


def _blob_ok(root: Path, digest: str) -> bool:
    blob = root / "blobs" / digest.replace(":", "-")
    try:
        return hashlib.sha256(blob.read_bytes()).hexdigest() == digest.split(":", 1)[1]
    except OSError:
        return False


def old_store(config: Config) -> Path:
    """Where the pre-migration store is now: the legacy directory, or its backup once the legacy path is a link."""
    legacy = config.paths.legacy
    if legacy.is_dir() and not legacy.is_symlink():
        return legacy
    backups = sorted(legacy.parent.glob(f"{legacy.name}.hxd-backup-*"))
    real = [b for b in backups if b.is_dir() and not b.is_symlink()]
    assert real, f"no old store at {legacy} or beside it: {os.listdir(legacy.parent)}"
    return real[0]
