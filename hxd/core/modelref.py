"""Ollama model references, parsed with Ollama's own rules (``types/model/name.go``).

``llama3.2:3b`` means ``registry.ollama.ai/library/llama3.2:3b``, stored at
``manifests/registry.ollama.ai/library/llama3.2/3b`` (docs/ollama.md, "Model names"). The seed nodes' convention
``name@sha256:PREFIX`` (docs/node-layout.md) is not an Ollama name (the server answers 400 "invalid model name"),
so hxd reads the suffix as a *pin*: a check that the manifest's digest starts with PREFIX. The pin is stripped
before a name is ever sent to Ollama (``api_name``).

A request name may end in a *source* (``internal/modelref/modelref.go: parseSourceSuffix``): ``:cloud`` or a tag
ending ``-cloud`` sends the request to ollama.com, ``:local`` insists on this node's store; the suffix is stripped
before the name is parsed, so ``llama3:local`` is the local ``llama3:latest``. Names read back from the store
(manifest paths, ``/api/tags``) are not request names: a ``-cloud`` there is just a tag (``stored=True``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_PIN = re.compile(r"[0-9a-f]{1,64}")


class BadReference(ValueError):
    """The text is not a model reference Ollama (or hxd's pin convention) accepts; the message says which part."""


@dataclass(frozen=True)
class ModelRef:
    """One parsed reference. ``explicit_tag`` is False when the tag defaulted to ``latest``."""

    text: str
    host: str
    namespace: str
    model: str
    tag: str
    explicit_tag: bool
    pin: str | None
    source: str = ""  # "", "local" or "cloud": the request's source suffix

    @property
    def full_name(self) -> str:
        """``host/namespace/model:tag``: the key under which two references name the same model."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Case-insensitive identity, as Ollama matches names against the manifests on disk; a cloud model is
        another model than the local one of the same name (``:local`` is the local one, so it keeps the key)."""
        return f"{self.full_name.lower()}:cloud" if self.source == "cloud" else self.full_name.lower()

    @property
    def api_name(self) -> str:
        """The name to send to Ollama's API: the shortest form with its source suffix, never with a pin (Ollama
        rejects ``@sha256:``)."""
        prefix = "" if self.host == DEFAULT_HOST else f"{self.host}/"
        if prefix or self.namespace != DEFAULT_NAMESPACE:
            prefix += f"{self.namespace}/"
        suffix = f":{self.source}" if self.source else ""
        return f"{prefix}{self.model}:{self.tag}{suffix}"

    @property
    def manifest_path(self) -> PurePosixPath:
        """Where the manifest lives under ``$OLLAMA_MODELS/manifests``."""
        return PurePosixPath(self.host, self.namespace, self.model, self.tag)

    @property
    def unpinned_tag(self) -> bool:
        """No tag, or ``latest``: the model can change under the same name on the next pull."""
        return not self.explicit_tag or self.tag.lower() == DEFAULT_TAG


def _source_suffix(name: str) -> tuple[str, str]:
    """``parseSourceSuffix`` (internal/modelref/modelref.go): the name without its source suffix, and the source."""
    colon = name.rfind(":")
    if colon < 0:
        return name, ""
    suffix = name[colon + 1 :].strip()
    if suffix.lower() in ("cloud", "local"):
        return name[:colon], suffix.lower()
    if "/" not in suffix and suffix.lower().endswith("-cloud"):
        return name[: colon + 1] + suffix[: -len("-cloud")], "cloud"
    return name, ""


def parse_ref(text: str, *, stored: bool = False) -> ModelRef:
    """Parse ``[scheme://][host/][namespace/]model[:tag][:cloud|:local][@sha256:PIN]``; raises BadReference.

    ``stored``: a name read from the store or ``/api/tags``, which has no source suffix.
    """
    name, at, pin_text = text.strip().partition("@")
    pin = None
    if at:
        algorithm, _, pin = pin_text.partition(":")
        if algorithm != "sha256" or not _PIN.fullmatch(pin):
            raise BadReference(f"{text!r}: a pin must be @sha256: followed by 1 to 64 lowercase hex digits")
    source = ""
    if not stored:
        name, source = _source_suffix(name)
        if source and _source_suffix(name)[1]:
            raise BadReference(f"{text!r}: use either :local or :cloud, not both")
    tag, explicit_tag = DEFAULT_TAG, False
    colon, slash = name.rfind(":"), name.rfind("/")
    if colon > slash:
        name, tag, explicit_tag = name[:colon], name[colon + 1 :], True
    parts = name.split("/")
    if len(parts) > 3:
        parts = ["/".join(parts[:-2]), *parts[-2:]]
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
    # types/model/name.go: ParseNameBare cuts "scheme://" off what is left for the host, and nowhere else.
    _, scheme, rest = host.partition("://")
    host = rest if scheme else host
    for value, pattern, what in (
        (host, _HOST, "host"),
        (namespace, _NAMESPACE, "namespace"),
        (model, _PART, "model name"),
        (tag, _PART, "tag"),
    ):
        if not pattern.fullmatch(value):
            raise BadReference(f"{text!r}: the {what} {value!r} is not valid in an Ollama model name")
    return ModelRef(text, host, namespace, model, tag, explicit_tag, pin, source)
