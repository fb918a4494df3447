"""The config model: the seed nodes' defaults (docs/node-layout.md), errors that name the key, the shipped file,
check-config and dump-config, and the paths hxd refuses to work in (hxd.core.safepaths)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hxd.core.config import Config, dump_config, load_config, parse_config
from hxd.core.errors import InvalidConfig
from hxd.core.safepaths import SHARED_DIRS, SYSTEM_TREES, check_path

SHIPPED = Path(__file__).resolve().parents[1] / "packaging/hxd.toml"
MANUAL = Path(__file__).resolve().parents[1] / "packaging/man/hxd.toml.5"


def test_defaults_reproduce_the_seed_layout() -> None:
    config = Config()
    assert str(config.paths.canonical) == "/mnt/active_llm_models"
    assert str(config.paths.bulk) == "/data/llm_bulk_storage"
    assert str(config.paths.legacy) == "/opt/hx-infrastructure/llm-01/models/production"
    assert str(config.paths.env_file) == "/opt/hx-infrastructure/llm-01/config/ollama/ollama.env"
    assert (config.ollama.url, config.ollama.unit, config.ollama.user, config.ollama.group) == (
        "http://127.0.0.1:11434",
        "ollama.service",
        "ollama",
        "ollama",
    )
    assert config.telemetry.interval_sec == 300
    assert config.smoke.schedule == "*-*-* 00:03:00 UTC" and config.smoke.randomized_delay_sec > 0
    assert (str(config.paths.log_dir), str(config.paths.state_dir)) == ("/var/log/hxd", "/var/lib/hxd")


def test_shipped_file_has_every_key_with_the_default_value() -> None:
    shipped = tomllib.loads(SHIPPED.read_text())
    assert shipped == tomllib.loads(dump_config(Config()))
    assert load_config(SHIPPED) == Config()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[paths]\ncanonicall = '/x'\n", "paths.canonicall: unknown key"),
        ("colour = 'blue'\n", "colour: unknown key"),
        ("[paths]\ncanonical = 'relative/dir'\n", "paths.canonical: must be an absolute path"),
        ("[telemetry]\ninterval_sec = '300'\n", "telemetry.interval_sec: Input should be a valid integer"),
        ("[telemetry]\ninterval_sec = 0\n", "telemetry.interval_sec: Input should be greater than or equal to 1"),
        ("[telemetry]\nenabled = 'yes'\n", "telemetry.enabled: Input should be a valid boolean"),
        ("[ollama]\nurl = 'localhost:11434'\n", "ollama.url: must be an http:// or https:// URL"),
        ("[ollama]\nunit = 'ollama'\n", "ollama.unit: must be a systemd service unit name"),
        ("[smoke]\nschedule = '*-*-* 25:00'\n", "smoke.schedule: hour '25' is outside 0..23"),
        ("[smoke]\nschedule = 'Funday 01:00'\n", "smoke.schedule: weekday 'funday' is not one of Mon..Sun"),
        ("[paths\n", "not valid TOML"),
    ],
)
def test_errors_name_the_file_and_key(text: str, message: str) -> None:
    with pytest.raises(InvalidConfig) as error:
        parse_config(text, "/etc/hxd/hxd.toml")
    assert str(error.value).startswith("/etc/hxd/hxd.toml: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_several_errors_are_all_reported() -> None:
    with pytest.raises(InvalidConfig) as error:
        parse_config("[paths]\nbulk = 'x'\nlegacy = 'y'\n", "f")
    assert "paths.bulk" in str(error.value) and "paths.legacy" in str(error.value)


def test_unreadable_inputs(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="no such file"):
        load_config(tmp_path / "missing.toml")
    assert load_config(tmp_path / "missing.toml", must_exist=False) == Config()
    with pytest.raises(InvalidConfig, match="cannot read"):
        load_config(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"node = '\xff'\n")
    with pytest.raises(InvalidConfig, match="not UTF-8"):
        load_config(binary)


def test_dump_config_round_trips() -> None:
    config = parse_config(
        'node = "llm-02"\n[paths]\ncanonical = "/srv/a \\"quoted\\" path"\n[smoke]\nenabled = false\n', "f"
    )
    assert parse_config(dump_config(config), "dump") == config


def hxd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hxd", *args], capture_output=True, text=True, timeout=30)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[telemetry]\ninterval_sec = 60\n")
    result = hxd("--config", str(good), "check-config")
    assert (result.returncode, result.stdout.strip()) == (0, f"hxd: {good}: configuration is valid")
    bad = tmp_path / "bad.toml"
    bad.write_text("[telemetry]\ninterval_sec = -1\n")
    result = hxd("--config", str(bad), "check-config")
    assert result.returncode == 1
    assert result.stderr.startswith(f"hxd: {bad}: telemetry.interval_sec:")
    assert "Traceback" not in result.stderr


def test_check_config_says_when_the_default_file_is_missing(tmp_path: Path) -> None:
    """No config file is valid (hxd runs on the defaults), but it is not a valid file: check-config says which."""
    absent = tmp_path / "hxd.toml"
    code = "import sys, pathlib, hxd.daemon as d; d.DEFAULT_CONFIG_PATH = pathlib.Path(sys.argv[1]); "
    code += "sys.exit(d.main(['check-config']))"  # the default path, without touching /etc/hxd
    result = subprocess.run([sys.executable, "-c", code, str(absent)], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (
        0,
        f"hxd: {absent}: no such file; the defaults are in force (hxd dump-config shows them)",
    )


def test_dump_config_prints_the_effective_config(tmp_path: Path) -> None:
    config = tmp_path / "hxd.toml"
    config.write_text("[telemetry]\ninterval_sec = 60\n")
    result = hxd("--config", str(config), "dump-config")
    assert result.returncode == 0
    dumped = tomllib.loads(result.stdout)
    assert dumped["telemetry"]["interval_sec"] == 60
    assert dumped["paths"]["canonical"] == "/mnt/active_llm_models"


def test_shipped_audit_modes_are_accepted_and_read_as_ints() -> None:
    audit = load_config(SHIPPED).audit
    assert (audit.file_mode, audit.dir_mode, audit.env_file_mode) == (0o644, 0o755, 0o640)
    assert Config().audit == audit
    config = parse_config("[audit]\nfile_mode = '600'\ndir_mode = '0711'\nenv_file_mode = '0600'\n", "f")
    assert (config.audit.file_mode, config.audit.dir_mode, config.audit.env_file_mode) == (0o600, 0o711, 0o600)


def test_audit_modes_dump_as_the_octal_strings_of_the_file() -> None:
    dumped = tomllib.loads(dump_config(parse_config("[audit]\nfile_mode = '0600'\n", "f")))
    assert (dumped["audit"]["file_mode"], dumped["audit"]["dir_mode"]) == ("0600", "0755")
    config = parse_config("[audit]\nfile_mode = '0600'\ndir_mode = '0700'\n", "f")
    assert parse_config(dump_config(config), "dump") == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Not a mode at all.
        ("file_mode = '0x1'", "audit.file_mode: must be an octal mode such as 0644"),
        ("file_mode = '06444'", "audit.file_mode: must be an octal mode such as 0644"),
        ("dir_mode = 755", 'audit.dir_mode: must be an octal mode such as 0644 (a string: "0644"), got 755'),
        # World-writable (HX200), in every key.
        ("file_mode = '0666'", "audit.file_mode: 0666 lets any local user write (o+w)"),
        ("dir_mode = '0777'", "audit.dir_mode: 0777 lets any local user write (o+w)"),
        ("env_file_mode = '0642'", "audit.env_file_mode: 0642 lets any local user write (o+w)"),
        # Setuid, setgid, sticky (HX201), in every key.
        ("file_mode = '4644'", "audit.file_mode: 4644 sets setuid, setgid or sticky bits"),
        ("file_mode = '2644'", "audit.file_mode: 2644 sets setuid, setgid or sticky bits"),
        ("dir_mode = '2755'", "audit.dir_mode: 2755 sets setuid, setgid or sticky bits"),
        ("dir_mode = '1777'", "audit.dir_mode: 1777 lets any local user write (o+w)"),
        ("dir_mode = '1755'", "audit.dir_mode: 1755 sets setuid, setgid or sticky bits"),
        ("env_file_mode = '4640'", "audit.env_file_mode: 4640 sets setuid, setgid or sticky bits"),
        # Directories the Ollama user, their owner, cannot enter (HX212).
        ("dir_mode = '0644'", "audit.dir_mode: 0644 does not let the Ollama user, the owner, enter directories"),
        ("dir_mode = '0655'", "audit.dir_mode: 0655 does not let the Ollama user, the owner, enter directories"),
        # A world-readable env file (HX222).
        ("env_file_mode = '0644'", "audit.env_file_mode: 0644 lets any local user read Ollama's settings (o+r)"),
        ("env_file_mode = '0604'", "audit.env_file_mode: 0604 lets any local user read Ollama's settings (o+r)"),
    ],
)
def test_audit_modes_the_audit_would_report_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidConfig) as error:
        parse_config(f"[audit]\n{text}\n", "/etc/hxd/hxd.toml")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("key", "example"), [("file_mode", '"0644"'), ("dir_mode", '"0755"'), ("env_file_mode", '"0640"')]
)
def test_a_refused_audit_mode_says_what_to_use(key: str, example: str) -> None:
    with pytest.raises(InvalidConfig) as error:
        parse_config(f"[audit]\n{key} = '0777'\n", "f")
    assert str(error.value).endswith(f"use a mode such as {example}")


def test_both_schedules_are_calendar_specs() -> None:
    with pytest.raises(InvalidConfig, match=r"audit\.schedule: hour '25' is outside 0\.\.23"):
        parse_config("[audit]\nschedule = '*-*-* 25:00'\n", "f")
    with pytest.raises(InvalidConfig, match=r"audit\.schedule: Input should be a valid string"):
        parse_config("[audit]\nschedule = 3\n", "f")
    config = parse_config("[smoke]\nschedule = 'Mon 01:00'\n[audit]\nschedule = 'weekly'\n", "f")
    assert (config.smoke.schedule, config.audit.schedule) == ("Mon 01:00", "weekly")


# The hostile paths of issue 15, by the key they are given to, and what the refusal says; SYMLINK_TO_ETC stands for a
# symlink to /etc made by the test. test_migrate_bus gives the same values to PlanMigration.
SYMLINK_TO_ETC = "<a symlink to /etc>"
HOSTILE = [
    ("canonical", "/", "is / itself, which other software shares"),
    ("bulk", "/etc", "is in /etc, which hxd never writes"),
    ("legacy", "/proc", "is in /proc, which hxd never writes"),
    ("canonical", "/sys/kernel", "is in /sys, which hxd never writes"),
    ("env_file", "/etc/shadow", "is in /etc, which hxd never writes"),
    ("bulk", "/data/../etc", "must not contain '..'"),
    ("bulk", "/tmp/../etc", "must not contain '..'"),
    ("legacy", SYMLINK_TO_ETC, "(which resolves to '/etc') is in /etc"),
    ("canonical", "/data/models\nx", "has the non-printing character U+000A, got '/data/models\\nx'"),
    ("canonical", "/etc/default", "is in /etc, which hxd never writes"),
    ("canonical", "relative/dir", "must be an absolute path"),
]


def hostile_value(value: str, tmp_path: Path) -> str:
    if value != SYMLINK_TO_ETC:
        return value
    link = tmp_path / "etc-link"
    link.symlink_to("/etc")
    return str(link)


@pytest.mark.parametrize(("key", "value", "message"), HOSTILE)
def test_check_config_refuses_hostile_paths_naming_the_key(key: str, value: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "hxd.toml"
    config.write_text(f"[paths]\n{key} = {json.dumps(hostile_value(value, tmp_path))}\n")
    result = hxd("--config", str(config), "check-config")
    assert result.returncode == 1
    assert result.stderr.startswith(f"hxd: {config}: paths.{key}: ") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1  # one line, the newline in the value escaped


@pytest.mark.parametrize(
    "path",
    [
        "/run/hxd",
        "/var/run/hxd",
        "/lib64/x",
        "/usr/share/ollama",
        "/var/lib/dpkg/info",
        "/var/log/journal/x",
        "/root/models",
        "/opt",
        "/var/lib",
        "//etc",
        "/data/\u202emodels",
    ],
)
def test_the_rest_of_the_refused_list(path: str) -> None:
    with pytest.raises(ValueError, match=r"(never writes|other software shares|non-printing)"):
        check_path(path)


@pytest.mark.parametrize(
    "path", ["/var/lib/hxd", "/var/log/hxd", "/srv/models", "/opt/hx-infrastructure", "/mnt/x", "/data", "/tmp/x"]
)
def test_paths_of_their_own_below_shared_directories_are_fine(path: str) -> None:
    assert str(check_path(path)) == path


def test_the_manual_lists_exactly_the_refused_paths() -> None:
    section = MANUAL.read_text().split(".SS Refused paths", 1)[1].split(".SH ", 1)[0]
    trees, shared = section.split("is itself one of", 1)
    listed = [re.findall(r"^\.IR? (/[^ \n]*)", part, re.M) for part in (trees, shared.split("(a directory")[0])]
    assert [[path.replace("\\-", "-") for path in paths] for paths in listed] == [list(SYSTEM_TREES), list(SHARED_DIRS)]
