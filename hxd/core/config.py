"""hxd's configuration: ``/etc/hxd/hxd.toml`` as a strict pydantic model.

Strict because a typo in a daemon's config that is silently ignored is worse than a daemon that refuses to start:
unknown keys and bad values are errors that name the key. The defaults reproduce the layout of the seed nodes
(llm-01; docs/node-layout.md), so an empty file is a working configuration on such a node.
"""

from __future__ import annotations

import json
import socket
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from hxd.core.errors import InvalidConfig
from hxd.core.safepaths import check_path
from hxd.core.schedule import Calendar

DEFAULT_CONFIG_PATH = Path("/etc/hxd/hxd.toml")


# A path hxd may work in: absolute, no "..", no control characters, not in the system's trees (hxd.core.safepaths).
SafePath = Annotated[Path, AfterValidator(check_path)]


def _calendar(value: str) -> str:
    Calendar.parse(value)  # raises ValueError with the reason
    return value


# A systemd.time(7) calendar spec such as "daily UTC", checked when the config is read.
CalendarSpec = Annotated[StrictStr, AfterValidator(_calendar)]


def _octal(value: object) -> object:
    if isinstance(value, str) and len(value) in (3, 4) and all(c in "01234567" for c in value):
        return int(value, 8)
    raise ValueError(f'must be an octal mode such as 0644 (a string: "0644"), got {value!r}')


# A permission mode: an octal string of 3 or 4 digits in the file ("0644"), its int (0o644) in the model, and
# back to the 4-digit string in dumps, so `hxd dump-config` prints what the file says.
OctalMode = Annotated[StrictInt, BeforeValidator(_octal), PlainSerializer(lambda mode: f"{mode:04o}", return_type=str)]


class _Section(BaseModel):
    """Common settings: unknown keys are errors; fields use Strict* types so "300" is not taken for 300."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    """Where the model store, Ollama's config and hxd's own files live; each checked by hxd.core.safepaths."""

    canonical: SafePath = Path("/mnt/active_llm_models")
    bulk: SafePath = Path("/data/llm_bulk_storage")
    legacy: SafePath = Path("/opt/hx-infrastructure/llm-01/models/production")
    env_file: SafePath = Path("/opt/hx-infrastructure/llm-01/config/ollama/ollama.env")
    log_dir: SafePath = Path("/var/log/hxd")
    state_dir: SafePath = Path("/var/lib/hxd")


class OllamaConfig(_Section):
    """How to reach and manage the Ollama server on this node."""

    url: StrictStr = "http://127.0.0.1:11434"
    unit: StrictStr = "ollama.service"
    user: StrictStr = "ollama"
    group: StrictStr = "ollama"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
        return value.rstrip("/")

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str) -> str:
        if not value.endswith(".service") or "/" in value:
            raise ValueError(f"must be a systemd service unit name such as 'ollama.service', got {value!r}")
        return value


class TelemetryConfig(_Section):
    """GPU sampling: first sample at start, then every ``interval_sec`` on the monotonic clock.

    Samples go to ``<paths.log_dir>/gpu/telemetry.csv``, rotated at ``rotate_size_mb`` or ``rotate_age_days``,
    keeping ``keep`` rotated files.
    """

    enabled: StrictBool = True
    interval_sec: StrictInt = Field(default=300, ge=1, le=86400)
    rotate_size_mb: StrictInt = Field(default=64, ge=1, le=65536)
    rotate_age_days: StrictInt = Field(default=7, ge=1, le=3650)
    keep: StrictInt = Field(default=8, ge=1, le=1000)


class SmokeConfig(_Section):
    """Nightly smoke tests against Ollama, scheduled like a systemd timer (with catch-up, like Persistent=true).

    Results go to ``<paths.log_dir>/perf/nightly-smoke.log`` (one readable line per model per run) and
    ``nightly-smoke.jsonl`` beside it, rotated at ``rotate_size_mb``, keeping ``keep`` rotated files.
    """

    enabled: StrictBool = True
    schedule: CalendarSpec = "*-*-* 00:03:00 UTC"
    randomized_delay_sec: StrictInt = Field(default=900, ge=0, le=86400)
    models: list[StrictStr] = []
    prompt: StrictStr = "Reply with one short sentence: what is the capital of France?"
    num_predict: StrictInt = Field(default=32, ge=1, le=4096)
    concurrency: StrictInt = Field(default=4, ge=1, le=64)
    timeout_sec: StrictInt = Field(default=300, ge=1, le=3600)
    # The least keep_alive sent with a request after which the smoke test uses the model again (smoke.py, "keep_alive").
    keep_alive_sec: StrictInt = Field(default=300, ge=1, le=86400)
    regression_margin: float = Field(default=0.5, ge=0.0, le=100.0, strict=True)
    rotate_size_mb: StrictInt = Field(default=16, ge=1, le=65536)
    keep: StrictInt = Field(default=8, ge=1, le=1000)


class AuditConfig(_Section):
    """Ownership and permission audit of everything hxd manages, daily and on request.

    The modes are what ``hxctl audit --fix`` and migrations set, so a mode the audit itself reports is refused:
    --fix would set it on every run and the finding would never clear (see ``_mode_problem``).
    """

    enabled: StrictBool = True
    schedule: CalendarSpec = "daily UTC"
    randomized_delay_sec: StrictInt = Field(default=900, ge=0, le=86400)
    file_mode: OctalMode = 0o644
    dir_mode: OctalMode = 0o755
    env_file_mode: OctalMode = 0o640

    @field_validator("file_mode", "dir_mode", "env_file_mode")
    @classmethod
    def _mode(cls, value: int, info: ValidationInfo) -> int:
        key = info.field_name or ""
        problem = _mode_problem(key, value)
        if problem:
            raise ValueError(
                f"{value:04o} {problem}: --fix would set it and the audit report it again; use a mode "
                f"such as {_MODE_EXAMPLES[key]}"
            )
        return value


_MODE_EXAMPLES = {"file_mode": '"0644"', "dir_mode": '"0755"', "env_file_mode": '"0640"'}


def _mode_problem(key: str, mode: int) -> str:
    """What the audit (hxd.core.audit_checks) finds on an entry with this ``audit.<key>`` mode and --fix's owner."""
    if mode & stat.S_IWOTH:
        return "lets any local user write (o+w), which the audit reports as HX200"
    if mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
        return "sets setuid, setgid or sticky bits (the audit reports set-id files as HX201)"
    if key == "dir_mode" and not mode & stat.S_IXUSR:
        return "does not let the Ollama user, the owner, enter directories (u+x), which the audit reports as HX212"
    if key == "env_file_mode" and mode & stat.S_IROTH:
        return "lets any local user read Ollama's settings (o+r), which the audit reports as HX222"
    return ""


class MetricsConfig(_Section):
    """The Prometheus endpoint. Under systemd, hxd.socket passes the socket and ``listen`` is ignored."""

    listen: StrictStr = ""

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"must be HOST:PORT such as 127.0.0.1:9464, or empty to disable; got {value!r}")
        return value


class Config(_Section):
    """The whole file. Every key is optional; see ``packaging/hxd.toml`` for the commented defaults."""

    node: StrictStr = ""
    paths: PathsConfig = PathsConfig()
    ollama: OllamaConfig = OllamaConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    smoke: SmokeConfig = SmokeConfig()
    audit: AuditConfig = AuditConfig()
    metrics: MetricsConfig = MetricsConfig()

    @property
    def node_name(self) -> str:
        """The node's name in reports: the configured one, else the host name (as llm-01 and llm-02 are named)."""
        return self.node or socket.gethostname()


def parse_config(text: str, source: str) -> Config:
    """Parse TOML text into a Config; every error names ``source`` and the offending key or line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(f"{source}: not valid TOML: {exc}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise InvalidConfig(f"{source}: {_describe(exc)}") from None


def load_config(path: Path, *, must_exist: bool = True) -> Config:
    """Read and validate the config file.

    A missing file is an error when the operator named it; the default path may be absent, which means defaults.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if must_exist:
            raise InvalidConfig(f"{path}: no such file; create it or pass another --config") from None
        return Config()
    except OSError as exc:
        raise InvalidConfig(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidConfig(f"{path}: not UTF-8 text (byte {exc.start}); TOML files must be UTF-8") from None
    return parse_config(text, str(path))


def _describe(exc: ValidationError) -> str:
    """One line per problem, each led by the dotted key, e.g. ``paths.canonical: must be an absolute path``."""
    problems = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            message = "unknown key; see `hxd dump-config` for the valid keys"
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{key}: {message}")
    return "; ".join(problems)


def dump_config(config: Config) -> str:
    """The effective configuration as TOML (what ``hxd dump-config`` prints)."""
    data = config.model_dump(mode="json")
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items() if not isinstance(value, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append("")
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    # JSON's string escapes are a subset of TOML basic strings', and its numbers and booleans match TOML's.
    return json.dumps(value, ensure_ascii=False)
