"""Validation of Ollama's environment file: what systemd will really pass, and whether it matches store and server.

Each finding has a stable code (HX1xx), a severity, the line, the key, a one-line message and a fix hint. Codes are
a contract for scripts and never change meaning; the table is in hxctl(1) and README.md.

- HX100-HX108: how systemd 252 reads the file (hxd.core.envfile_parser), where it differs from what the author meant.
- HX110-HX119: the model variables ``OLLAMA_MODEL_<NAME>`` and the list ``OLLAMA_MODELS_AVAILABLE``.
- HX120-HX126: ``OLLAMA_MODELS`` (as Ollama reads it, hxd.core.ollama_env) and the canonical layout;
  ``OLLAMA_HOST`` against ``ollama.url``.
- HX130-HX136: with ``store``, each configured model against the store on disk (``deep``: every blob's sha256).
- HX140-HX143: with ``server``, each configured model against ``GET /api/tags``.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hxd.core.config import Config
from hxd.core.envfile_parser import Assignment, EnvFile
from hxd.core.modelref import BadReference, ModelRef, parse_ref
from hxd.core.ollama_api import OllamaUnavailable, list_models
from hxd.core.ollama_env import api_url, host_url, ollama_var
from hxd.core.store import Store, StoreError

Severity = Literal["error", "warning", "info"]

MODEL_VARIABLE = re.compile(r"OLLAMA_MODEL_[A-Za-z0-9_]+")
AVAILABLE = "OLLAMA_MODELS_AVAILABLE"
MODELS_DIR = "OLLAMA_MODELS"
_BLOB_CODES = {"missing": "HX132", "size": "HX133", "content": "HX135", "unreadable": "HX132"}


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    line: int  # 1-based; 0 when the finding is about the whole file
    key: str
    message: str
    hint: str


@dataclass(frozen=True)
class Options:
    strict: bool = False  # unpinned tags are errors, not warnings
    store: bool = False  # check each model's manifest and blobs in the store
    deep: bool = False  # also recompute every blob's sha256 (implies store)
    server: bool = False  # check GET /api/tags


@dataclass
class Report:
    file: str
    loads: bool
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == "warning" for f in self.findings)


@dataclass
class _Check:
    """One validation run: the parsed file, where each effective key was set, and the findings so far."""

    env: EnvFile
    config: Config
    options: Options
    report: Report
    lines: dict[str, int] = field(default_factory=dict)

    def add(self, code: str, severity: Severity, line: int, key: str, message: str, hint: str) -> None:
        self.report.findings.append(Finding(code, severity, line, key, message, hint))


def validate(env: EnvFile, file: str, config: Config, options: Options = Options()) -> Report:
    """Run every rule that applies; a file systemd rejects gets HX100 and nothing else (nothing else is real)."""
    check = _Check(env, config, options, Report(file, env.loads))
    if not env.loads:
        check.add(
            "HX100",
            "error",
            0,
            "",
            f"systemd rejects the whole file: {env.error}",
            "the unit will not start (or the file is skipped with EnvironmentFile=-); fix the bytes named",
        )
        return check.report
    check.lines = {a.key: a.line for a in env.assignments}
    _syntax(check)
    refs = _models(check)
    _models_dir(check)
    _host(check)
    digests = _store(check, refs) if options.store or options.deep else {}
    if options.server:
        _server(check, refs, digests)
    check.report.findings.sort(key=lambda f: (f.line, f.code))
    return check.report


def _syntax(check: _Check) -> None:
    env = check.env
    for a in env.assignments:
        _assignment(check, a)
    by_key: dict[str, list[Assignment]] = defaultdict(list)
    for a in env.assignments:
        if a.valid_name:
            by_key[a.key].append(a)
    for key, assignments in by_key.items():
        if len(assignments) > 1:
            last = assignments[-1]
            for earlier in assignments[:-1]:
                check.add(
                    "HX106",
                    "warning",
                    earlier.line,
                    key,
                    f"{key} is set again on line {last.line}, which wins: this value ({earlier.value!r}) is ignored",
                    "keep one assignment per key",
                )
            others = ", ".join(str(a.line) for a in assignments[:-1])
            check.add(
                "HX106",
                "warning",
                last.line,
                key,
                f"{key} is also set on line {others}; systemd uses this one: {last.value!r}",
                "keep one assignment per key",
            )
    for line in env.swallowed_lines:
        check.add(
            "HX107",
            "error",
            line,
            "",
            "the comment on the line before ends in a backslash, so systemd 252 "
            "treats this line as comment too (systemd 254 and later read it)",
            "remove the trailing backslash from the comment",
        )
    for line in env.lines_without_equals:
        check.add(
            "HX108",
            "warning",
            line,
            "",
            "this line has no '=' and systemd ignores it",
            "write KEY=VALUE, or start the line with # to make it a comment",
        )


def _assignment(check: _Check, a: Assignment) -> None:
    if not a.valid_name:
        if a.key.startswith("export ") or a.key.startswith("export\t"):
            name = a.key.split(None, 1)[1] if len(a.key.split(None, 1)) > 1 else ""
            check.add(
                "HX103",
                "error",
                a.line,
                a.key,
                f"systemd ignores 'export {name}=...': 'export' is shell syntax, not part of an environment file",
                f"remove 'export ' so the line reads {name}=...",
            )
        else:
            check.add(
                "HX104",
                "error",
                a.line,
                a.key,
                f"{a.key!r} is not a valid variable name, so systemd drops this assignment",
                "use letters, digits and '_', not starting with a digit",
            )
        return
    if a.unterminated_quote:
        check.add(
            "HX105",
            "error",
            a.line,
            a.key,
            f"the quote opened in {a.key}'s value is never closed, so the "
            f"value runs to the end of the file (line {a.end_line})",
            "close the quote",
        )
    elif a.inline_comment:
        check.add(
            "HX101",
            "error",
            a.line,
            a.key,
            f"systemd has no trailing comments: the service gets {a.key}={a.value!r}",
            "put the comment on its own line, starting with #",
        )
    elif a.glued_after_quote:
        check.add(
            "HX102",
            "warning",
            a.line,
            a.key,
            f"text after the closing quote is glued to the value: the service gets {a.key}={a.value!r}",
            "quote the whole value, or remove what follows the quote",
        )


def _parse(check: _Check, key: str, text: str) -> ModelRef | None:
    try:
        return parse_ref(text)
    except BadReference as exc:
        check.add(
            "HX116",
            "error",
            check.lines.get(key, 0),
            key,
            f"not an Ollama model name: {exc}",
            "write [host/][namespace/]model:tag, optionally followed by @sha256:<digest prefix>",
        )
        return None


def _models(check: _Check) -> dict[str, ModelRef]:
    """The model variables' references (by variable), after checking them against the available list."""
    environment = check.env.environment
    variables = {k: v for k, v in environment.items() if MODEL_VARIABLE.fullmatch(k)}
    refs = {key: ref for key, value in variables.items() if (ref := _parse(check, key, value)) is not None}
    for key, ref in refs.items():
        if ref.pin is not None:
            check.add(
                "HX118",
                "info",
                check.lines[key],
                key,
                f"{ref.text!r} carries a digest pin, which Ollama's API "
                "rejects (400 invalid model name): hxd checks the pin and sends the name without it",
                f"scripts that call Ollama directly must send {ref.api_name!r}",
            )
        if ref.source == "cloud":
            check.add(
                "HX119",
                "info",
                check.lines[key],
                key,
                f"{ref.text!r} is a cloud model: Ollama sends its requests to ollama.com "
                "(internal/modelref), so hxd does not look for it in the store or in /api/tags",
                "drop the :cloud or -cloud suffix to serve the model from this node",
            )
        if ref.unpinned_tag and ref.pin is None:
            tag = "no tag" if not ref.explicit_tag else f"the tag {ref.tag!r}"
            check.add(
                "HX115",
                "error" if check.options.strict else "warning",
                check.lines[key],
                key,
                f"{ref.text!r} has {tag}: the model can change under the same name at the next pull",
                "name an explicit version tag (llama3.2:3b) or pin a digest (@sha256:<prefix>)",
            )
    if AVAILABLE not in environment:
        if variables:
            check.add(
                "HX117",
                "error",
                0,
                AVAILABLE,
                f"{len(variables)} model variables but no {AVAILABLE} list",
                f'add {AVAILABLE}="{",".join(variables.values())}"',
            )
        return refs
    line = check.lines[AVAILABLE]
    items = [item.strip() for item in environment[AVAILABLE].split(",")]
    if "" in items:
        check.add("HX114", "info", line, AVAILABLE, "empty entries in the list are ignored", "remove the extra commas")
    listed: dict[str, str] = {}
    for item in filter(None, items):
        ref = _parse(check, AVAILABLE, item)
        if ref is None:
            continue
        if ref.key in listed:
            check.add(
                "HX113",
                "warning",
                line,
                AVAILABLE,
                f"{item!r} is listed twice (as {listed[ref.key]!r})",
                "list each model once",
            )
            continue
        listed[ref.key] = item
    configured = {ref.key: key for key, ref in refs.items()}
    for key, ref in refs.items():
        if ref.key not in listed:
            check.add(
                "HX110",
                "error",
                check.lines[key],
                key,
                f"{ref.text!r} is not in {AVAILABLE}",
                f"add it to {AVAILABLE} on line {line}",
            )
    for model_key, item in listed.items():
        if model_key not in configured:
            check.add(
                "HX111",
                "error",
                line,
                AVAILABLE,
                f"{item!r} is listed but no OLLAMA_MODEL_* variable names it",
                "add an OLLAMA_MODEL_<NAME> variable for it, or remove it from the list",
            )
    if len(listed) != len(variables):
        check.add(
            "HX112",
            "error",
            line,
            AVAILABLE,
            f"{len(variables)} model variables but {len(listed)} models in {AVAILABLE}",
            "make the list and the variables name the same models",
        )
    return refs


def _models_dir(check: _Check) -> None:
    paths = check.config.paths
    value = check.env.environment.get(MODELS_DIR)
    if value is None:
        check.add(
            "HX120",
            "error",
            0,
            MODELS_DIR,
            f"{MODELS_DIR} is not set, so Ollama uses its default ($HOME/.ollama/models)",
            f"set {MODELS_DIR}={paths.canonical}",
        )
        return
    line = check.lines[MODELS_DIR]
    ollama_reads = ollama_var(value)
    if ollama_reads != value:
        check.add(
            "HX125",
            "warning",
            line,
            MODELS_DIR,
            f"systemd passes {MODELS_DIR}={value!r}, which Ollama trims to {ollama_reads!r} "
            "(envconfig Var): scripts reading the environment see another path than Ollama",
            f"write {MODELS_DIR}={ollama_reads} without the spaces or inner quotes",
        )
    if Path(ollama_reads) != paths.canonical:
        check.add(
            "HX121",
            "error",
            line,
            MODELS_DIR,
            f"Ollama gets {MODELS_DIR}={ollama_reads!r}, not the canonical path {str(paths.canonical)!r}",
            f"set {MODELS_DIR}={paths.canonical} (hxctl migrate does)",
        )
    canonical = paths.canonical
    if not canonical.is_dir():
        check.add(
            "HX122",
            "error",
            line,
            MODELS_DIR,
            f"the canonical path {canonical} does not exist",
            "run hxctl migrate --dry-run to see how to create it",
        )
        return
    for part in ("blobs", "manifests"):
        link, target = canonical / part, paths.bulk / part
        if not (link.is_symlink() and Path(os.path.realpath(link)) == Path(os.path.realpath(target))):
            check.add(
                "HX123",
                "warning",
                line,
                MODELS_DIR,
                f"{link} is not a symlink to {target}",
                "run hxctl migrate --dry-run to see the steps to the canonical layout",
            )
    legacy = paths.legacy
    if os.path.lexists(legacy) and Path(os.path.realpath(legacy)) != Path(os.path.realpath(canonical)):
        check.add(
            "HX124",
            "warning",
            line,
            MODELS_DIR,
            f"the legacy path {legacy} is not a symlink to {canonical}",
            "run hxctl migrate --dry-run to see the steps to the canonical layout",
        )


def _host(check: _Check) -> None:
    """``ollama.url`` in hxd.toml against the address ``OLLAMA_HOST`` makes Ollama listen on (envconfig Host)."""
    if "url" not in check.config.ollama.model_fields_set:
        return
    configured, derived = check.config.ollama.url, host_url(check.env.environment.get("OLLAMA_HOST"))
    if configured != derived:
        check.add(
            "HX126",
            "warning",
            check.lines.get("OLLAMA_HOST", 0),
            "OLLAMA_HOST",
            f"hxd.toml sets ollama.url = {configured!r}, but Ollama listens on {derived!r} by OLLAMA_HOST",
            "make them agree, or drop ollama.url so hxd derives it from OLLAMA_HOST",
        )


def _local(refs: dict[str, ModelRef]) -> dict[str, ModelRef]:
    """The references this node serves itself: a cloud model (HX119) is in neither the store nor /api/tags."""
    return {key: ref for key, ref in refs.items() if ref.source != "cloud"}


def _store(check: _Check, refs: dict[str, ModelRef]) -> dict[str, str]:
    """Check each model's manifest and blobs; returns model key -> manifest digest for those found."""
    root = Path(ollama_var(check.env.environment.get(MODELS_DIR, "")) or check.config.paths.canonical)
    store = Store(root)
    for unreadable, reason in store.unlistable():
        check.add(
            "HX136",
            "error",
            check.lines.get(MODELS_DIR, 0),
            MODELS_DIR,
            f"{unreadable} cannot be read ({reason}): Ollama fails its whole model list on it, "
            "so /api/tags answers 500 and every generate 404",
            "remove the dangling symlink, or restore what it points to",
        )
    digests: dict[str, str] = {}
    for key, ref in _local(refs).items():
        line = check.lines[key]
        path = store.find(ref)
        if path is None:
            check.add(
                "HX130",
                "error",
                line,
                key,
                f"{ref.api_name} has no manifest in {store.manifests_dir}",
                f"pull it (ollama pull {ref.api_name}) or fix the name",
            )
            continue
        try:
            manifest = store.read_manifest(path)
        except StoreError as exc:
            check.add("HX131", "error", line, key, str(exc), f"re-pull {ref.api_name}")
            continue
        digests[ref.key] = manifest.digest
        if ref.pin is not None and not manifest.digest.startswith(ref.pin):
            check.add(
                "HX134",
                "error",
                line,
                key,
                f"pinned to sha256:{ref.pin} but the store has sha256:{manifest.digest[:12]}",
                "pull the pinned version, or update the pin",
            )
        for layer in manifest.layers:
            problem = store.blob_problem(layer, deep=check.options.deep)
            if problem is not None:
                check.add(
                    _BLOB_CODES[problem.kind],
                    "error",
                    line,
                    key,
                    f"{ref.api_name}: {problem.message}",
                    f"delete the blob and re-pull {ref.api_name} (Ollama does not repair blobs in place)",
                )
    return digests


def _server(check: _Check, refs: dict[str, ModelRef], store_digests: dict[str, str]) -> None:
    try:
        served = list_models(api_url(check.config, check.env.environment))
    except OllamaUnavailable as exc:
        check.add(
            "HX140",
            "error",
            0,
            "",
            f"cannot list the server's models: {exc}",
            f"start {check.config.ollama.unit}, or run without --server",
        )
        return
    for key, ref in _local(refs).items():
        line = check.lines[key]
        digest = served.get(ref.key)
        if digest is None:
            check.add(
                "HX141",
                "error",
                line,
                key,
                f"{ref.api_name} is not in the server's /api/tags",
                f"pull it, or check that {check.config.ollama.unit} uses this store",
            )
        elif ref.key in store_digests and digest != store_digests[ref.key]:
            check.add(
                "HX142",
                "error",
                line,
                key,
                f"the server has {ref.api_name} as sha256:{digest[:12]}, the "
                f"store as sha256:{store_digests[ref.key][:12]}",
                f"restart {check.config.ollama.unit}",
            )
        elif ref.pin is not None and not digest.startswith(ref.pin):
            check.add(
                "HX143",
                "error",
                line,
                key,
                f"pinned to sha256:{ref.pin} but the server serves sha256:{digest[:12]}",
                "pull the pinned version, or update the pin",
            )
