"""hxctl fleet over real SSH: a real sshd on loopback, each "node" an SSH host alias whose hxctl reads its own config
(HXD_CONFIG, passed with SetEnv). The multi-container version of this, one booted Debian 12 per node on a private
network, is in tools/e2e."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import wait_listening, world_traversable_dir
from migrate_support import node_config

from hxd.core.config import dump_config
from hxsandbox.world import OllamaStub, free_port

HXCTL = str(Path(sys.executable).with_name("hxctl"))


@pytest.fixture(scope="module")
def sshd() -> Iterator[tuple[Path, int]]:
    """An sshd of the test's own on 127.0.0.1 (key auth as root, accepting HXD_CONFIG and HXD_NODE); returns (dir,
    port)."""
    assert shutil.which("sshd", path="/usr/sbin:/usr/bin"), "sshd is missing: apt-get install openssh-server"
    with world_traversable_dir("hxd-sshd-") as root:
        for kind in ("ed25519",):
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(root / f"host_{kind}")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "client")], check=True)
        (root / "authorized_keys").write_text((root / "client.pub").read_text())
        port = free_port()
        (root / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root}/host_ed25519\nPidFile {root}/sshd.pid\n"
            f"AuthorizedKeysFile {root}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAcceptEnv HXD_CONFIG HXD_NODE\n"
            f"SetEnv PATH={Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        daemon = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.PIPE
        )
        wait_listening(port, 10, daemon)
        yield root, port
        daemon.terminate()
        daemon.wait(10)


NODE_SHELL = 'mount --bind "$1/$HXD_NODE" "$1/current" || exit 1; shift; exec "$@"'


def in_node(base: Path, node: str, *command: str) -> list[str]:
    """``command`` seeing node's files at ``base/current``: every node has the same absolute paths, as on a fleet."""
    return [
        "env",
        f"HXD_NODE={node}",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        NODE_SHELL,
        "sh",
        str(base),
        *command,
    ]


@pytest.fixture
def nodes(sshd: tuple[Path, int], world_tmp: Path) -> tuple[Path, dict[str, Path]]:
    """Two aligned nodes (llm-01, llm-02) after the migration, each with its files at the same absolute paths (a
    mount namespace per SSH session binds the node's directory on base/current), and an ssh_config naming them and
    an unreachable one. Returns the base and each node's hxd.toml (as seen from outside)."""
    root, port = sshd
    base = world_tmp
    (base / "current").mkdir()
    config = node_config(base / "current")
    p = config.paths
    configs = {}
    for name in ("llm-01", "llm-02"):
        (base / name).mkdir()
        configs[name] = base / name / "hxd.toml"
        configs[name].write_text(dump_config(config.model_copy(update={"node": name})))
        code = (
            f"from hxsandbox.samplestore import make_node; from pathlib import Path as P; "
            f"make_node(P('{p.canonical}'), P('{p.bulk}'), P('{p.legacy}'), P('{p.env_file}'), migrated=True)"
        )
        subprocess.run(in_node(base, name, sys.executable, "-c", code), check=True)
    remote = base / "hxctl-node"  # the "remote" hxctl: HXD_NODE (sent by ssh) picks the node's files
    remote.write_text(
        f"#!/bin/sh\nexec unshare --mount --propagation private /bin/sh -c '{NODE_SHELL}' sh {base} {HXCTL} \"$@\"\n"
    )
    remote.chmod(0o755)
    lines = [
        f"Host {name}\n  HostName 127.0.0.1\n  SetEnv HXD_NODE={name} HXD_CONFIG={base}/current/hxd.toml\n"
        for name in configs
    ]
    lines.append(f"Host down\n  HostName 127.0.0.1\n  Port {free_port()}\n")
    lines.append(
        f"Host *\n  Port {port}\n  User root\n  IdentityFile {root}/client\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    (base / "ssh_config").write_text("\n".join(lines))
    return base, configs


def fleet(
    base: Path, *args: str, hosts: tuple[str, ...] = ("llm-01", "llm-02"), as_json: bool = True
) -> subprocess.CompletedProcess[str]:
    host_args = [part for host in hosts for part in ("--host", host)]
    return subprocess.run(
        [
            HXCTL,
            *host_args,
            "fleet",
            *args,
            "--ssh-config",
            str(base / "ssh_config"),
            "--remote-hxctl",
            str(base / "hxctl-node"),
            *(["--json"] if as_json else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def differences(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    report = json.loads(result.stdout)
    return {d["field"]: d["values"] for d in report["differences"]}


def test_aligned_nodes_have_no_drift(nodes: tuple[Path, dict[str, Path]]) -> None:
    base, _ = nodes
    result = fleet(base, "diff")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report == {"aligned": True, "nodes": ["llm-01", "llm-02"], "unreachable": {}, "differences": []}


def test_a_changed_model_path_and_env_value_are_reported_exactly(nodes: tuple[Path, dict[str, Path]]) -> None:
    base, configs = nodes
    env = base / "llm-01/opt/hx-infrastructure/llm-01/config/ollama/ollama.env"
    assert env.exists()
    env.write_text(env.read_text() + 'OLLAMA_KEEP_ALIVE="10m"\n')
    manifest = base / "llm-01/data/llm_bulk_storage/manifests/registry.ollama.ai/library/qwen3/1.7b"
    manifest.write_bytes(manifest.read_bytes() + b" ")
    changed = configs["llm-02"].read_text().replace('canonical = "', 'canonical = "/srv', 1)
    configs["llm-02"].write_text(changed)
    result = fleet(base, "diff")
    assert result.returncode == 1
    found = differences(result)
    assert found["environment.OLLAMA_KEEP_ALIVE"] == {"llm-01": "10m", "llm-02": None}
    model = "models.registry.ollama.ai/library/qwen3:1.7b"
    assert set(found[model]) == {"llm-01", "llm-02"} and found[model]["llm-01"] != found[model]["llm-02"]
    assert found["config.paths.canonical"]["llm-02"].startswith("/srv")
    assert set(found) - {"environment.OLLAMA_KEEP_ALIVE", model, "config.paths.canonical"} <= {
        f"layout.{k}" for k in ("canonical", "canonical/blobs", "canonical/manifests", "legacy", "state")
    }


def test_different_ollama_versions_are_a_difference(nodes: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    """Each node's hxctl asks its own Ollama for GET /api/version (server/routes.go 1879-1880); nodes that run
    different versions may read the same store and names differently, so fleet diff reports it."""
    base, configs = nodes
    with (
        OllamaStub(tmp_path, tmp_path / "models", {"version": "0.33.0-rc2"}).start() as newer,
        OllamaStub(tmp_path, tmp_path / "models", {"version": "0.32.1"}).start() as older,
    ):
        for name, stub in (("llm-01", newer), ("llm-02", older)):
            text = configs[name].read_text()
            configs[name].write_text(text.replace('url = "http://127.0.0.1:9"', f'url = "{stub.url}"'))
        result = fleet(base, "diff")
        status = json.loads(fleet(base, "status").stdout)
    assert result.returncode == 1, result.stderr
    found = differences(result)
    assert found.pop("ollama_version") == {"llm-01": "0.33.0-rc2", "llm-02": "0.32.1"}
    assert set(found) == {"config.ollama.url"}
    assert (status["llm-01"]["ollama_version"], status["llm-02"]["ollama_version"]) == ("0.33.0-rc2", "0.32.1")


def test_an_unreachable_node_while_the_others_answer(nodes: tuple[Path, dict[str, Path]]) -> None:
    base, _ = nodes
    started = time.monotonic()
    result = fleet(base, "status", hosts=("llm-01", "down", "llm-02"))
    assert time.monotonic() - started < 60
    assert result.returncode == 1
    rows = json.loads(result.stdout)
    assert rows["down"]["error"].startswith("unreachable: ")
    for name in ("llm-01", "llm-02"):
        assert rows[name]["layout"] == "canonical" and rows[name]["models"] == 3
        assert rows[name]["hxd"] == "not running" and rows[name]["version"] == "0.1.0"
    diff = fleet(base, "diff", hosts=("llm-01", "down", "llm-02"))
    report = json.loads(diff.stdout)
    assert diff.returncode == 1 and list(report["unreachable"]) == ["down"] and report["differences"] == []


def test_no_hosts_is_a_usage_error() -> None:
    result = subprocess.run([HXCTL, "fleet", "status"], capture_output=True, text=True)
    assert result.returncode == 2 and "no nodes: name them with --host" in result.stderr
    misplaced = subprocess.run([HXCTL, "--host", "x", "status"], capture_output=True, text=True)
    assert misplaced.returncode == 2 and "--host and --hosts-file name nodes for `hxctl fleet" in misplaced.stderr


def test_hosts_file(nodes: tuple[Path, dict[str, Path]]) -> None:
    base, _ = nodes
    (base / "hosts").write_text("# the llm nodes\nllm-01\nllm-02  # second\n\n")
    result = subprocess.run(
        [
            HXCTL,
            "--hosts-file",
            str(base / "hosts"),
            "fleet",
            "diff",
            "--ssh-config",
            str(base / "ssh_config"),
            "--remote-hxctl",
            str(base / "hxctl-node"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "fleet: aligned (answered: llm-01, llm-02; unreachable: 0)"


def recording_ssh(directory: Path) -> dict[str, str]:
    """An environment whose ``ssh`` only records its arguments (one JSON list per line in directory/argv) and fails
    as an unreachable node does."""
    (directory / "ssh").write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(directory / 'argv')!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\nsys.exit(255)\n"
    )
    (directory / "ssh").chmod(0o755)
    return {**os.environ, "PATH": f"{directory}:{os.environ['PATH']}"}


def test_a_host_that_is_an_ssh_option_never_reaches_ssh(tmp_path: Path) -> None:
    env = recording_ssh(tmp_path)
    marker = tmp_path / "pwned"
    hosts = tmp_path / "hosts"
    hosts.write_text(f"# nodes\nllm-01\n-oProxyCommand=touch {marker}\n")
    result = subprocess.run(
        [HXCTL, "--hosts-file", str(hosts), "fleet", "status"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert f"{hosts}:3: '-oProxyCommand=touch {marker}' is not [USER@]HOST[:PORT]" in result.stderr
    assert not (tmp_path / "argv").exists() and not marker.exists()  # refused before any ssh ran
    for bad in ("-oProxyCommand=x", "root@-x", "llm-01:0", "llm-01:99999", "a b", "llm-01:22:22", "@llm-01"):
        refused = subprocess.run([HXCTL, f"--host={bad}", "fleet", "status"], capture_output=True, text=True, env=env)
        assert refused.returncode == 2 and f"--host {bad!r} is not [USER@]HOST[:PORT]" in refused.stderr, bad
    assert not (tmp_path / "argv").exists()


def test_the_host_comes_after_double_dash_and_the_port_before(tmp_path: Path) -> None:
    env = recording_ssh(tmp_path)
    hosts = ("root@llm-02:2222", "llm-01", "[fd00::1]:22", "ops_1@10.0.0.7")
    args = [part for host in hosts for part in ("--host", host)]
    result = subprocess.run(
        [HXCTL, *args, "fleet", "status", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1 and set(json.loads(result.stdout)) == set(hosts)  # every node "unreachable"
    calls = sorted(json.loads(line) for line in (tmp_path / "argv").read_text().splitlines())
    tails = sorted(call[call.index("--") - 2 if "-p" in call else call.index("--") :] for call in calls)
    assert tails == sorted(
        [
            ["-p", "2222", "--", "root@llm-02", "hxctl", "inventory", "--json"],
            ["--", "llm-01", "hxctl", "inventory", "--json"],
            ["-p", "22", "--", "fd00::1", "hxctl", "inventory", "--json"],
            ["--", "ops_1@10.0.0.7", "hxctl", "inventory", "--json"],
        ]
    )
    assert all(call[:2] == ["-xT", "-o"] for call in calls)


# --- what the fleet view got wrong (issue 17) -------------------------------------------------------------------

ENV = "opt/hx-infrastructure/{node}/config/ollama/ollama.env"


def empty_pins(base: Path) -> set[str]:
    env = base / "llm-01" / ENV.format(node="llm-01")
    text = env.read_text()
    pin = text.split("mistral-small3.2@", 1)[1].split('"', 1)[0].split(",", 1)[0]
    env.write_text(text.replace(f"@{pin}", ""))
    return {"environment.OLLAMA_MODEL_MISTRAL", "environment.OLLAMA_MODELS_AVAILABLE", "pins.OLLAMA_MODEL_MISTRAL"}


def empty_store(base: Path) -> set[str]:
    manifests = base / "llm-01/data/llm_bulk_storage/manifests"
    shutil.rmtree(manifests)
    manifests.mkdir()
    return {
        f"models.registry.ollama.ai/library/{name}" for name in ("llama3.2:3b", "qwen3:1.7b", "mistral-small3.2:latest")
    }


def unreadable_env_file(base: Path) -> set[str]:
    env = base / "llm-01" / ENV.format(node="llm-01")
    variables = [line.split("=", 1)[0] for line in env.read_text().splitlines() if "=" in line]
    env.unlink()
    env.mkdir()  # unreadable even for root: "is a directory, not a regular file"
    return {f"environment.{name}" for name in variables} | {"pins.OLLAMA_MODEL_MISTRAL"}


@pytest.mark.parametrize("case", [empty_pins, empty_store, unreadable_env_file])
def test_an_empty_part_is_not_a_field_of_its_own(
    nodes: tuple[Path, dict[str, Path]], case: Callable[[Path], set[str]]
) -> None:
    """One node's empty pins, store or environment (its file unreadable) differs by the fields it lacks; the empty
    part itself was a phantom field (``pins: llm-01={}  llm-02=(missing)``), counted in the summary."""
    base, _ = nodes
    expected = case(base)
    result = fleet(base, "diff")
    assert result.returncode == 1, result.stderr
    assert set(differences(result)) == expected
    human = fleet(base, "diff", as_json=False)
    assert human.returncode == 1
    assert f"fleet: {len(expected)} differences, not aligned" in human.stderr
    assert len(human.stdout.splitlines()) == len(expected)


def scripted_ssh(directory: Path, replies: dict[str, tuple[bytes, bytes, int]]) -> dict[str, str]:
    """An environment whose ``ssh`` answers for each destination (the argument after ``--``) with the given standard
    output, standard error and exit status, as bytes: what a node's sshd and hxctl could send."""
    table = {host: [out.hex(), err.hex(), code] for host, (out, err, code) in replies.items()}
    (directory / "replies.json").write_text(json.dumps(table))
    (directory / "ssh").write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"out, err, code = json.load(open({str(directory / 'replies.json')!r}))[sys.argv[sys.argv.index('--') + 1]]\n"
        "sys.stdout.buffer.write(bytes.fromhex(out)); sys.stderr.buffer.write(bytes.fromhex(err)); sys.exit(code)\n"
    )
    (directory / "ssh").chmod(0o755)
    return {**os.environ, "PATH": f"{directory}:{os.environ['PATH']}"}


# What `hxctl inventory --json` prints on a node whose hxd could not be asked (the parts fleet reads).
INVENTORY = {
    "node": "n",
    "version": "0.1.0",
    "config": {"node": "n"},
    "layout": {"state": "canonical"},
    "environment": {"OLLAMA_HOST": "127.0.0.1:11434"},
    "models": {},
    "pins": {},
    "ollama_unit": "active",
    "errors": [],
    "hxd_error": "hxd is not running: start it with systemctl start hxd",
}


def hxctl_fleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HXCTL, *args], capture_output=True, text=True, env=env, timeout=60)


def test_a_node_that_sends_bytes_that_are_not_utf8_is_a_row_of_its_own(tmp_path: Path) -> None:
    """A Latin-1 sshd banner on one node crashed the whole command (UnicodeDecodeError) with no row for any node."""
    answer = json.dumps(INVENTORY).encode()
    env = scripted_ssh(
        tmp_path,
        {
            "banner": (answer, "Willkommen auf dem Rechenknoten für Ollama\n".encode("latin-1"), 0),
            "latin": (b"\xe9t\xe9 " + answer, b"", 0),
            "refused": (b"", b"ssh: connect to host refused: Verbindung zur\xfcckgewiesen\n", 255),
            "good": (answer, b"", 0),
        },
    )
    hosts = [part for host in ("banner", "latin", "refused", "good") for part in ("--host", host)]
    result = hxctl_fleet(env, *hosts, "fleet", "status", "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    rows = json.loads(result.stdout)
    assert rows["banner"]["layout"] == rows["good"]["layout"] == "canonical"
    assert rows["latin"] == {"error": "the node's answer is not UTF-8 (byte 0); is something printing at login there?"}
    assert rows["refused"] == {"error": "unreachable: ssh: connect to host refused: Verbindung zur\\xfcckgewiesen"}
    diff = hxctl_fleet(env, *hosts, "fleet", "diff")
    assert diff.returncode == 1 and "Traceback" not in diff.stderr, diff.stderr
    assert diff.stdout.splitlines() == [
        "latin: the node's answer is not UTF-8 (byte 0); is something printing at login there?",
        "refused: unreachable: ssh: connect to host refused: Verbindung zur\\xfcckgewiesen",
    ]
    assert "fleet: aligned (answered: banner, good; unreachable: 2)" not in diff.stderr  # two did not answer
    assert "unreachable: 2" in diff.stderr


def test_without_ssh_the_error_names_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    env = {**os.environ, "PATH": str(tmp_path / "bin")}
    result = hxctl_fleet(env, "--host", "llm-01", "fleet", "status")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == (
        "hxctl: ssh is not installed (no ssh on PATH); hxctl fleet needs it: apt-get install openssh-client [Failed]"
    )
    control = (Path(__file__).parents[1] / "packaging/debian/control").read_text()
    recommends = control.split("\nRecommends:", 1)[1].split("\nDescription:", 1)[0]
    assert "openssh-client" in recommends  # the package says so too


def test_status_shows_a_question_mark_where_hxd_could_not_be_asked(tmp_path: Path) -> None:
    """hxctl(1): ``-`` where there is none yet, ``?`` where hxd could not be asked (it was ``-`` for both)."""
    asked = {k: v for k, v in INVENTORY.items() if k != "hxd_error"}
    asked["hxd"] = {"state": "running", "features": {"telemetry": "ok", "validate": "unchecked"}, "last_audit": {}}
    env = scripted_ssh(
        tmp_path, {"down": (json.dumps(INVENTORY).encode(), b"", 0), "up": (json.dumps(asked).encode(), b"", 0)}
    )
    rows = json.loads(hxctl_fleet(env, "--host", "down", "--host", "up", "fleet", "status", "--json").stdout)
    assert rows["down"]["smoke_first_token_max_sec"] == rows["down"]["audit_errors"] == "?"
    assert rows["up"]["smoke_first_token_max_sec"] is None and rows["up"]["audit_errors"] is None
    table = hxctl_fleet(env, "--host", "down", "--host", "up", "fleet", "status")
    assert table.returncode == 0, table.stderr
    lines = [line.split() for line in table.stdout.splitlines()]
    # The ollama version column is "?" in both rows: these inventories carry none.
    assert lines[1] == ["down", "0.1.0", "not", "running", "canonical", "active", "?", "0", "?", "?", "?", "?"]
    assert lines[2] == ["up", "0.1.0", "running", "canonical", "active", "?", "0", "-", "ok", "-", "unchecked"]
