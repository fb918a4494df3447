"""Validate over D-Bus (busctl, a raw message) and through hxctl, online and --offline, with bad inputs."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from busctl import hxctl, manager
from conftest import StartHxd
from dbus_fast import Message
from dbus_fast.aio import MessageBus

from hxd.bus import names
from hxsandbox.samplestore import make_node, make_store, write_hostile_manifest
from hxsandbox.world import HxdProcess, OllamaStub, PrivateBus


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    """Paths of a sample node in the canonical layout, under tmp_path (the layout write_config uses)."""
    root = tmp_path / "hxd0"
    paths = {
        "canonical": root / "mnt/active_llm_models",
        "bulk": root / "data/llm_bulk_storage",
        "legacy": root / "opt/hx-infrastructure/llm-01/models/production",
        "env_file": root / "opt/hx-infrastructure/llm-01/config/ollama/ollama.env",
    }
    make_node(paths["canonical"], paths["bulk"], paths["legacy"], paths["env_file"], migrated=True)
    return paths


def test_clean_node_validates_online_and_offline(bus: PrivateBus, start_hxd: StartHxd, node: dict[str, Path]) -> None:
    hxd = start_hxd()
    online = hxctl("--bus", bus.address, "validate", "--strict", "--store", "--deep")
    assert online.returncode == 0, online.stdout + online.stderr
    assert online.stdout.splitlines()[0].startswith(f"{node['env_file']}:6: info HX118: ")
    assert online.stdout.splitlines()[-1] == f"{node['env_file']}: 0 errors, 0 warnings, 1 note"
    offline = hxctl("--offline", "--config", str(hxd.config), "validate", "--strict", "--store", "--deep")
    assert (offline.returncode, offline.stdout) == (0, online.stdout)


def test_findings_are_compiler_style_and_agree_offline(
    bus: PrivateBus, start_hxd: StartHxd, node: dict[str, Path]
) -> None:
    hxd = start_hxd()
    env = node["env_file"]
    env.write_text(env.read_text().replace('OLLAMA_MODELS="', 'OLLAMA_MODELS="/x"  # was "'))
    result = hxctl("--bus", bus.address, "validate")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"{env}:3: error HX101: systemd has no trailing comments: the service gets OLLAMA_MODELS="
    )
    assert lines[1].startswith("    fix: ")
    assert lines[-1] == f"{env}: 2 errors, 1 warning, 1 note"  # HX125: Ollama trims the value's last quote
    online = json.loads(hxctl("--bus", bus.address, "validate", "--json").stdout)
    offline = json.loads(hxctl("--offline", "--config", str(hxd.config), "validate", "--json").stdout)
    assert online == offline
    assert [f["code"] for f in online["findings"]] == ["HX101", "HX121", "HX125", "HX118"]


def test_busctl_prints_findings_readably(bus: PrivateBus, start_hxd: StartHxd, node: dict[str, Path]) -> None:
    start_hxd()
    env = node["env_file"]
    env.write_text(env.read_text().replace('"llama3.2:3b"', '"llama3.2"').replace('"llama3.2:3b,', '"llama3.2,'))
    result = manager(
        bus.address,
        "Validate",
        "a{sv}",
        "1",
        "strict",
        "b",
        "true",
    )
    assert result.stdout.startswith(f'sba(ssusss) "{env}" true 2 "HX115" "error" 4 "OLLAMA_MODEL_LLAMA32" ')
    assert '"HX118" "info" 6 "OLLAMA_MODEL_MISTRAL"' in result.stdout
    for option, message in [
        (("bogus", "b", "true"), "unknown option 'bogus'; valid options: deep, server, store, strict"),
        (("strict", "s", "yes"), "option 'strict' must have type 'b', not 's'"),
    ]:
        refused = manager(
            bus.address,
            "Validate",
            "a{sv}",
            "1",
            *option,
            check=False,
        )
        assert refused.stderr.strip() == f"Call failed: {message}"


def test_a_file_given_on_the_command_line_is_passed_as_a_descriptor(
    bus: PrivateBus, start_hxd: StartHxd, node: dict[str, Path], tmp_path: Path
) -> None:
    start_hxd()
    other = tmp_path / "other.env"
    other.write_text("export OLLAMA_DEBUG=1\n")
    result = hxctl("--bus", bus.address, "validate", str(other))
    assert result.returncode == 1
    assert any(
        line.startswith(f"{other}:1: error HX103: systemd ignores 'export OLLAMA_DEBUG=...'")
        for line in result.stdout.splitlines()
    )


def test_a_descriptor_number_without_a_descriptor_is_refused(bus: PrivateBus, start_hxd: StartHxd) -> None:
    """dbus-fast hands a method the raw index when no fd is attached; hxd must not read its own fd 3 then."""
    start_hxd()

    async def send() -> Message:
        client = await MessageBus(bus_address=bus.address, negotiate_unix_fd=True).connect()
        reply = await client.call(
            Message(
                destination=names.BUS_NAME,
                path=names.MANAGER_PATH,
                interface=names.MANAGER_INTERFACE,
                member="ValidateFile",
                signature="ha{sv}",
                body=[3, {}],
            )
        )
        client.disconnect()
        assert reply is not None
        return reply

    reply = asyncio.run(send())
    assert reply.error_name == "org.hxinfra.hxd1.Error.InvalidArgs"
    assert reply.body == ["the file must come as an attached file descriptor (type h), not a number"]


def listens_on(env_file: Path, url: str) -> None:
    """Make the env file's OLLAMA_HOST say where this node's Ollama (the stub) listens, as ollama.url does (else
    HX126)."""
    host = urlsplit(url).netloc
    env_file.write_text(re.sub(r'(?m)^OLLAMA_HOST=".*"$', f'OLLAMA_HOST="{host}"', env_file.read_text()))


def test_server_check_against_the_stub(
    bus: PrivateBus, start_hxd: StartHxd, node: dict[str, Path], tmp_path: Path
) -> None:
    with OllamaStub(tmp_path, node["canonical"]).start() as stub:
        listens_on(node["env_file"], stub.url)
        hxd = start_hxd(f'[ollama]\nurl = "{stub.url}"\n')
        result = hxctl("--bus", bus.address, "validate", "--store", "--server")
        assert result.returncode == 0, result.stdout + result.stderr
    with OllamaStub(tmp_path, tmp_path / "other-store").start() as other:
        make_store(tmp_path / "other-store", {"llama3.2:3b": [b"different weights"]})
        config = hxd.config.read_text().replace(stub.url, other.url)
        hxd.config.write_text(config)
        listens_on(node["env_file"], other.url)
        offline = hxctl("--offline", "--config", str(hxd.config), "validate", "--store", "--server", "--json")
    codes = [(f["code"], f["line"]) for f in json.loads(offline.stdout)["findings"] if f["code"] != "HX118"]
    assert codes == [("HX142", 4), ("HX141", 5), ("HX141", 6)]
    down = hxctl("--offline", "--config", str(hxd.config), "validate", "--server", "--json")
    [finding] = [f for f in json.loads(down.stdout)["findings"] if f["code"] != "HX118"]
    assert finding["code"] == "HX140"
    assert finding["message"].startswith(f"cannot list the server's models: {other.url}/api/tags: Connection refused")


@pytest.fixture
def bad_inputs(world_tmp: Path) -> dict[str, Path]:
    """Bad files in a world-traversable directory, so that for nobody only each file's own mode decides."""
    root = world_tmp
    files = {name: root / f"{name}.env" for name in ("binary", "directory", "missing", "loop", "unreadable", "big")}
    files["binary"].write_bytes(b"A=1\x00\xff\xfe binary")
    files["directory"].mkdir()
    files["loop"].symlink_to(files["loop"])
    files["unreadable"].write_text("A=1\n")
    files["unreadable"].chmod(0o600)
    with files["big"].open("w") as big:
        big.write(("# " + "x" * 1021 + "\n") * (50 * 1024))
        big.write("OLLAMA_DEBUG=1\n")
    files["config"] = root / "hxd.toml"
    files["config"].write_text("[telemetry]\nenabled = false\n")
    return files


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_bad_inputs_give_one_line_and_the_right_exit_code(
    bus: PrivateBus, start_hxd: StartHxd, bad_inputs: dict[str, Path], mode: str
) -> None:
    hxd: HxdProcess = start_hxd()
    where = ["--bus", bus.address] if mode == "online" else ["--offline", "--config", str(hxd.config)]
    expected = {
        "directory": (2, "is a directory, not a regular file"),
        "missing": (2, "cannot open: does not exist"),
        "loop": (2, "cannot open: too many levels of symbolic links (a symlink loop?)"),
    }
    for name, (code, text) in expected.items():
        result = hxctl(*where, "validate", str(bad_inputs[name]))
        assert result.returncode == code, (name, result.stderr)
        assert result.stdout == "" and result.stderr.count("\n") == 1 and text in result.stderr, (name, result.stderr)
        assert str(bad_inputs[name]) in result.stderr and "Traceback" not in result.stderr
    binary = hxctl(*where, "validate", str(bad_inputs["binary"]))
    assert binary.returncode == 1
    assert binary.stdout.startswith(f"{bad_inputs['binary']}: error HX100: systemd rejects the whole file: ")
    assert "NUL byte at offset 3" in binary.stdout
    big = hxctl(*where, "validate", str(bad_inputs["big"]), "--json")
    assert big.returncode == 1  # loads; it just lacks every model setting
    assert json.loads(big.stdout)["loads"] is True
    if mode == "offline":  # nobody cannot read the test's hxd.toml; give it one it can
        where = ["--offline", "--config", str(bad_inputs["config"])]
    denied = hxctl(*where, "validate", str(bad_inputs["unreadable"]), user="nobody")
    assert (denied.returncode, denied.stderr) == (
        2,
        f"hxctl: {bad_inputs['unreadable']}: cannot open: permission denied [Unreadable]\n",
    )


def test_env_json_one_object_per_file(bad_inputs: dict[str, Path], tmp_path: Path) -> None:
    good = tmp_path / "good.env"
    good.write_text('OLLAMA_MODELS="/mnt/active_llm_models"  # comment\nexport X=1\nB="x"y\n')
    result = hxctl("env", "--json", str(good), str(bad_inputs["binary"]), str(bad_inputs["directory"]))
    assert result.returncode == 2
    first, second, third = (json.loads(line) for line in result.stdout.splitlines())
    assert first == {
        "file": str(good),
        "loads": True,
        "error": None,
        "environment": {"OLLAMA_MODELS": "/mnt/active_llm_models# comment", "B": "xy"},
        "ignored_assignments": ["export X=1"],
    }
    assert second["loads"] is False and "NUL byte" in second["error"] and second["environment"] == {}
    assert third["loads"] is False and "is a directory" in third["error"]
    plain = hxctl("env", str(good))
    assert plain.stdout == 'OLLAMA_MODELS="/mnt/active_llm_models# comment"\nB=xy\n# ignored by systemd: export X=1\n'
    assert plain.returncode == 0


@pytest.mark.parametrize(
    ("kind", "message"), [("million-layers", "larger than 4194304 bytes"), ("deep", "nests deeper than 32 levels")]
)
def test_a_hostile_manifest_is_a_finding_online_offline_and_through_busctl(
    bus: PrivateBus, start_hxd: StartHxd, node: dict[str, Path], kind: str, message: str
) -> None:
    """Issue 14: a 157 MB manifest with a million layers, or one nested 100,000 deep, in the store the service uses
    is HX131 naming the file and hxd's limit, the same online and offline; never Internal."""
    hxd = start_hxd()
    write_hostile_manifest(node["bulk"], "llama3.2:3b", kind)
    path = node["canonical"] / "manifests/registry.ollama.ai/library/llama3.2/3b"  # as OLLAMA_MODELS leads to it
    online = hxctl("--bus", bus.address, "validate", "--store", "--json")
    offline = hxctl("--offline", "--config", str(hxd.config), "validate", "--store", "--json")
    assert online.returncode == 1 and (offline.returncode, offline.stdout) == (1, online.stdout), online.stderr
    [finding] = [f for f in json.loads(online.stdout)["findings"] if f["code"] == "HX131"]
    assert finding["message"].startswith(f"{path}: {message}") and "remove the file" in finding["message"], finding
    raw = manager(bus.address, "Validate", "a{sv}", "1", "store", "b", "true")
    assert '"HX131" "error" 4 "OLLAMA_MODEL_LLAMA32"' in raw.stdout and message in raw.stdout, raw.stdout
