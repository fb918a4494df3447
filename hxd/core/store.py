"""Ollama's on-disk model store: manifests four levels deep, content-addressed blobs.

Read-only view used by validation and migration. The facts it relies on (docs/ollama.md, "Store layout"):
a manifest's identity is the sha256 of its bytes (the ``digest`` in ``/api/tags``); each layer names a blob
``blobs/sha256-<hex>`` whose content hashes to ``<hex>``; only ``manifests/*/*/*/*`` files count as models.

Manifests belong to the ``ollama`` account, so hxd reads them within limits (docs/ollama.md, "Manifest limits"): at
most ``MANIFEST_MAX_BYTES`` read, nesting and object counts checked on the bytes before the JSON parser, which
recurses, ever sees them. Every reader of a manifest goes through ``read_manifest_bytes``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hxd.core.errors import Unreadable
from hxd.core.modelref import ModelRef
from hxd.core.readlimit import OPEN_FLAGS, file_kind, read_at_most

# manifest/paths.go: BlobsPath accepts "sha256" then ":" or "-", then 64 hex digits of either case.
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")

# The largest manifest a registry accepts (distribution's and containers/image's 4 MiB); Ollama itself has no limit.
MANIFEST_MAX_BYTES: Final = 4 << 20
# A manifest nests three deep (object, layers list, layer); Go's encoding/json stops at 10000.
MANIFEST_MAX_DEPTH: Final = 32
# Objects and lists together: one per layer and three more; bounds what the parser allocates for 4 MiB.
MANIFEST_MAX_CONTAINERS: Final = 65536
# A JSON string, escapes included (its brackets are text, not structure), or an unclosed one to the end of the data:
# every match succeeds, so the scan stays linear (a pattern that must find the closing quote rescans to the end from
# each escaped quote of an unclosed string: quadratic, hours for 4 MiB). An unclosed string's text is kept, so its
# brackets count, as before.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:(?P<closed>")|\\?\Z)', re.DOTALL)
_AS_PARENS = bytes.maketrans(b"[]{}", b"()()")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


class StoreError(Unreadable):
    """A manifest that cannot be used; the message names the file, and what is wrong with it."""


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
        """Every ``manifests/<host>/<namespace>/<model>/<tag>`` file, as Ollama's glob finds them. A directory that
        vanishes while it is listed (the store's owner at work) holds nothing, as for a glob; no error."""
        yield from sorted(_files_at_depth(self.manifests_dir, 3))

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
        data = read_manifest_file(path)
        layers = parse_layers(data, path)
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


def _files_at_depth(directory: Path, depth: int) -> Iterator[Path]:
    try:
        with os.scandir(directory) as listing:
            entries = list(listing)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        try:
            if depth == 0 and entry.is_file():
                yield Path(entry.path)
            elif depth > 0 and entry.is_dir():
                yield from _files_at_depth(Path(entry.path), depth - 1)
        except OSError:
            continue  # gone (or a symlink loop) since the listing


def read_manifest_file(path: Path) -> bytes:
    """The bytes of the manifest at ``path``: opened without blocking, a regular file, within the size limit.

    Like Ollama's ``os.Open``, a symlink at ``path`` is followed; a caller that must not follow one opens the file
    itself and calls ``read_manifest_bytes``.
    """
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as exc:
        raise StoreError(
            f"{path}: cannot read: {exc.strerror}; remove it, and re-pull the model if you need it"
        ) from None
    try:
        return read_manifest_bytes(fd, path)
    finally:
        os.close(fd)


def read_manifest_bytes(fd: int, path: Path) -> bytes:
    """The bytes of the manifest open at ``fd`` (``path`` names it in messages); StoreError if it is not a regular
    file or is larger than ``MANIFEST_MAX_BYTES``, after reading at most one byte more than that."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{path}: is {file_kind(info.st_mode)}, not a manifest file; remove it")
        data = read_at_most(fd, MANIFEST_MAX_BYTES)
    except OSError as exc:
        raise StoreError(
            f"{path}: cannot read: {exc.strerror}; remove it, and re-pull the model if you need it"
        ) from None
    if len(data) > MANIFEST_MAX_BYTES:
        raise StoreError(
            f"{path}: larger than {MANIFEST_MAX_BYTES} bytes ({info.st_size} on disk), hxd's limit for a "
            "manifest; remove the file, and re-pull the model if you need it"
        )
    return data


def parse_layers(data: bytes, path: Path) -> tuple[Layer, ...]:
    """The config layer, then the layers, of the manifest ``data`` read from ``path``; StoreError if it is not one.

    The shape is checked on the bytes first, so the JSON parser (which recurses) only ever sees at most
    ``MANIFEST_MAX_DEPTH`` levels and ``MANIFEST_MAX_CONTAINERS`` objects and lists.
    """
    _check_shape(data, path)
    try:
        # Go reads bytes as UTF-8 with U+FFFD for invalid sequences; never UTF-16/32 as json.loads(bytes) would.
        document = json.loads(data.decode("utf-8", errors="replace"))
        return tuple(_layer(item) for item in [document["config"], *document["layers"]])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path}: not an Ollama manifest ({exc}); re-pull the model or remove it") from None


def _closed_strings(match: re.Match[bytes]) -> bytes:
    return b"" if match.group("closed") else match.group()


def _check_shape(data: bytes, path: Path) -> None:
    """Refuse nesting past ``MANIFEST_MAX_DEPTH`` and more than ``MANIFEST_MAX_CONTAINERS`` objects and lists.

    In UTF-8 no byte of a multi-byte character is a quote or a bracket, so dropping the strings and then all
    but the brackets leaves the structure. Each pass removes every innermost pair; whatever is left after
    ``MANIFEST_MAX_DEPTH`` passes is nested deeper (a pair remains) or does not balance: each pass costs one copy of
    at most ``MANIFEST_MAX_BYTES``, however deep the file claims to go.
    """
    brackets = _STRING.sub(_closed_strings, data).translate(_AS_PARENS, _NOT_BRACKETS)
    containers = brackets.count(b"(")
    for _ in range(MANIFEST_MAX_DEPTH):
        brackets = brackets.replace(b"()", b"")
    if b"()" in brackets:
        raise StoreError(
            f"{path}: nests deeper than {MANIFEST_MAX_DEPTH} levels, hxd's limit for a manifest (Ollama's nest 3 "
            "deep); remove the file, and re-pull the model if you need it"
        )
    if brackets:
        raise StoreError(
            f"{path}: not an Ollama manifest (its brackets do not balance); re-pull the model or remove it"
        )
    if containers > MANIFEST_MAX_CONTAINERS:
        raise StoreError(
            f"{path}: holds {containers} objects and lists, more than hxd's limit of {MANIFEST_MAX_CONTAINERS} "
            "for a manifest (one per layer); remove the file, and re-pull the model if you need it"
        )


def _layer(item: object) -> Layer:
    if not isinstance(item, dict):
        raise TypeError("a layer is not an object")
    digest, size = item["digest"], item["size"]
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"bad layer digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"bad layer size {size!r}")
    return Layer(str(item.get("mediaType", "")), digest, size)


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
