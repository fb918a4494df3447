"""Ollama's on-disk model store: manifests four levels deep, content-addressed blobs.

Read-only view used by validation and migration. The facts it relies on (docs/ollama.md, "Store layout"):
a manifest's identity is the sha256 of its bytes (the ``digest`` in ``/api/tags``); each layer names a blob
``blobs/sha256-<hex>`` whose content hashes to ``<hex>``; only ``manifests/*/*/*/*`` files count as models.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hxd.core.modelref import ModelRef

# manifest/paths.go: BlobsPath accepts "sha256" then ":" or "-", then 64 hex digits of either case.
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


class StoreError(Exception):
    """A manifest or blob that cannot be used; the message names the file."""


@dataclass(frozen=True)
class BlobProblem:
    """What is wrong with one blob: ``kind`` is missing, size, content or unreadable."""

    kind: str
    message: str


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str  # "sha256:<hex>" as the manifest writes it ("sha256-" and upper-case hex are accepted too)
    size: int

    @property
    def blob_name(self) -> str:
        """The file under blobs/: BlobsPath turns ":" into "-" and keeps the case, so the name must match it."""
        return self.digest.replace(":", "-", 1)

    @property
    def hex(self) -> str:
        """The digest's hex in lower case, as a content hash prints it."""
        return self.digest[len("sha256:") :].lower()


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest file; ``digest`` is the hex sha256 of its exact bytes (Ollama's model ID)."""

    path: Path
    name: str  # host/namespace/model:tag as stored on disk
    digest: str
    layers: tuple[Layer, ...]  # the config blob first, then the layers

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class Store:
    """The store rooted at ``root`` (``$OLLAMA_MODELS``)."""

    root: Path

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs"

    def manifest_files(self) -> Iterator[Path]:
        """Every ``manifests/<host>/<namespace>/<model>/<tag>`` file, as Ollama's glob finds them."""
        yield from sorted(p for p in self.manifests_dir.glob("*/*/*/*") if p.is_file())

    def unlistable(self) -> list[tuple[Path, str]]:
        """Paths the manifest glob matches that cannot be stat'ed (a dangling symlink), with the reason.

        ``manifest/manifest.go: Manifests`` returns the error of ``os.Stat`` on any glob match, even in its
        continue-on-error mode, so one such path fails Ollama's whole model list (docs/ollama.md, "Store layout").
        """
        found: list[tuple[Path, str]] = []
        for path in sorted(self.manifests_dir.glob("*/*/*/*")):
            try:
                path.stat()
            except OSError as exc:
                found.append((path, exc.strerror or str(exc)))
        return found

    def find(self, ref: ModelRef) -> Path | None:
        """The manifest file for ``ref``, matched case-insensitively as Ollama's server does."""
        exact = self.manifests_dir / ref.manifest_path
        if exact.is_file():
            return exact
        wanted = str(ref.manifest_path).lower()
        for path in self.manifest_files():
            if str(path.relative_to(self.manifests_dir)).lower() == wanted:
                return path
        return None

    def read_manifest(self, path: Path) -> Manifest:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            document = json.loads(data)
            layers = tuple(_layer(item) for item in [document["config"], *document["layers"]])
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: not an Ollama manifest ({exc})") from None
        host, namespace, model, tag = path.relative_to(self.manifests_dir).parts
        return Manifest(path, f"{host}/{namespace}/{model}:{tag}", hashlib.sha256(data).hexdigest(), layers)

    def blob_problem(self, layer: Layer, *, deep: bool) -> BlobProblem | None:
        """None when the blob is there with the manifest's size (and, if ``deep``, content); else what is wrong."""
        path = self.blobs_dir / layer.blob_name
        try:
            size = path.stat().st_size
            if size != layer.size:
                return BlobProblem("size", f"blob {layer.blob_name} has {size} bytes, the manifest says {layer.size}")
            if deep and (actual := sha256_file(path)) != layer.hex:
                return BlobProblem("content", f"blob {layer.blob_name} content hashes to sha256:{actual}")
        except FileNotFoundError:
            return BlobProblem("missing", f"blob {layer.blob_name} is missing")
        except OSError as exc:
            return BlobProblem("unreadable", f"blob {layer.blob_name} cannot be read: {exc.strerror}")
        return None


def _layer(item: object) -> Layer:
    if not isinstance(item, dict):
        raise TypeError("a layer is not an object")
    digest, size = item["digest"], item["size"]
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"bad layer digest {digest!r}")
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"bad layer size {size!r}")
    return Layer(str(item.get("mediaType", "")), digest, size)


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
