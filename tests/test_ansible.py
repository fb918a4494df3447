"""The Ansible collection (ansible/ansible_collections/hxinfra/hxd) against real hxd processes on sandbox nodes.

The modules run as Ansible runs a module on a node: the module file with its arguments in a JSON file (how Ansible's
developer guide runs a module by hand), on the ansible-core and the module_utils of the collection, calling the
checkout's hxctl, which reaches each node's hxd on a private bus (HXD_BUS) with the node's configuration
(HXD_CONFIG). The playbook runs with ansible-playbook on two sandbox nodes, each with a bus, hxd, the systemd
stand-in and the Ollama stub of its own, reached with connection: local.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import StartHxd, start_on_node, world_traversable_dir
from e2e_ansible import ansible_env, recap
from migrate_support import make_legacy_node, node_config

from hxd.core.config import Config
from hxsandbox.systemd import MockSystemd, OllamaService
from hxsandbox.world import HxdProcess, PrivateBus, free_port

REPO = Path(__file__).resolve().parents[1]
COLLECTIONS = REPO / "ansible"
COLLECTION = COLLECTIONS / "ansible_collections/hxinfra/hxd"
HXCTL = str(Path(sys.executable).parent / "hxctl")  # this checkout's, installed in the venv by `make venv`
sys.path.insert(0, str(COLLECTIONS))  # the collection's modules as Ansible imports them: ansible_collections.hxinfra...

pytestmark = pytest.mark.usefixtures("ollama_account")

RunModule = Callable[..., dict[str, Any]]


@pytest.fixture
def run_module(tmp_path: Path) -> RunModule:
    """``run_module(NAME, ENV, check=False, diff=False, **params)``: the module's result as it prints it."""

    def run(
        name: str, env: dict[str, str], *, check: bool = False, diff: bool = False, **params: Any
    ) -> dict[str, Any]:
        arguments = tmp_path / f"{name}-args.json"
        internal = {"_ansible_check_mode": check, "_ansible_diff": diff}
        arguments.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"hxctl": HXCTL, **params, **internal}}))
        result = subprocess.run(
            [sys.executable, str(COLLECTION / f"plugins/modules/{name}.py"), str(arguments)],
            env={**os.environ, "PYTHONPATH": str(COLLECTIONS), **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in result.stderr, result.stderr
        reply: dict[str, Any] = json.loads(result.stdout)
        assert result.returncode == (1 if reply.get("failed") else 0), result
        return reply

    return run


def node_env(bus: PrivateBus, hxd: HxdProcess) -> dict[str, str]:
    return {"HXD_BUS": bus.address, "HXD_CONFIG": str(hxd.config)}


def corrupt_a_blob(config: Config) -> Path:
    """One blob of the legacy store with a byte changed (same size): its sha256 no longer is its name."""
    blob = sorted((config.paths.legacy / "blobs").iterdir())[0]
    data = bytearray(blob.read_bytes())
    data[0] ^= 0xFF
    blob.write_bytes(bytes(data))
    return blob


@pytest.mark.parametrize("module", ["hxd_facts", "hxd_validate", "hxd_migrate", "hxd_smoke"])
def test_ansible_doc_reads_each_module_s_documentation(module: str, tmp_path: Path) -> None:
    """ansible-doc parses DOCUMENTATION, EXAMPLES and RETURN, and the options it documents are the module's own."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "--json", f"hxinfra.hxd.{module}"],
        env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)[f"hxinfra.hxd.{module}"]
    assert doc["doc"]["module"] == module and doc["examples"] and doc["return"]
    spec = importlib.import_module(f"ansible_collections.hxinfra.hxd.plugins.modules.{module}").ARGUMENT_SPEC
    assert {name: option["type"] for name, option in doc["doc"]["options"].items()} == {
        name: option["type"] for name, option in spec.items()
    }


def test_facts_are_hxctl_inventory(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService, run_module: RunModule
) -> None:
    hxd = start_on_node(start_hxd, node)
    reply = run_module("hxd_facts", node_env(bus, hxd))
    facts = reply["ansible_facts"]["hxd"]
    assert reply["changed"] is False
    assert facts["layout"]["state"] == "legacy" and facts["layout"]["legacy"] == "directory"
    assert facts["environment"]["OLLAMA_MODELS"] == str(node.paths.legacy)
    assert facts["hxd"]["state"] == "running" and len(facts["models"]) == 3


def test_facts_without_hxd_say_why_and_do_not_fail(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, run_module: RunModule, tmp_path: Path
) -> None:
    hxd = start_on_node(start_hxd, node)
    hxd.stop()
    reply = run_module("hxd_facts", node_env(bus, hxd))
    facts = reply["ansible_facts"]["hxd"]
    assert "failed" not in reply and facts["layout"]["state"] == "legacy"
    assert "hxd" not in facts and "not running" in facts["hxd_error"]


def test_validate_fails_on_errors_and_passes_after_the_migration(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService, run_module: RunModule
) -> None:
    env = node_env(bus, start_on_node(start_hxd, node))
    before = run_module("hxd_validate", env, store=True, server=True)
    assert before["failed"] is True and before["changed"] is False
    assert before["msg"].startswith(f"{node.paths.env_file}: 2 error(s): HX121 line 3: Ollama gets OLLAMA_MODELS=")
    assert {f["code"] for f in before["validation"]["findings"]} == {"HX121", "HX122", "HX118"}
    assert run_module("hxd_migrate", env)["changed"] is True
    after = run_module("hxd_validate", env, store=True, server=True, check=True)
    assert "failed" not in after and (after["validation"]["errors"], after["validation"]["infos"]) == (0, 1)


def test_validate_of_a_file_that_cannot_be_read_names_it(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, run_module: RunModule
) -> None:
    env = node_env(bus, start_on_node(start_hxd, node))
    missing = node.paths.env_file.with_name("nothing.env")
    reply = run_module("hxd_validate", env, file=str(missing))
    assert reply["failed"] is True and reply["rc"] == 2
    assert reply["msg"].startswith(f"hxctl validate {missing} --json: exit status 2, bad command line or unusable")
    assert str(missing) in reply["msg"].split(": ", 2)[2]  # hxctl's own line, naming the file


def test_migrate_check_mode_is_the_plan_and_changes_nothing(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService, run_module: RunModule
) -> None:
    env = node_env(bus, start_on_node(start_hxd, node))
    reply = run_module("hxd_migrate", env, check=True, diff=True)
    canonical, bulk, legacy = node.paths.canonical, node.paths.bulk, node.paths.legacy
    assert reply["changed"] is True and reply["msg"] == f"would migrate 6 blobs and 3 manifests from {legacy}"
    assert reply["plan"]["source"] == str(legacy) and reply["plan"]["blobs"] == 6
    diff = reply["diff"]
    assert f"OLLAMA_MODELS in {node.paths.env_file}: {legacy}\n" in diff["before"]
    assert f"{canonical}/blobs: missing\n" in diff["before"] and f"{legacy}: directory\n" in diff["before"]
    assert f"OLLAMA_MODELS in {node.paths.env_file}: {canonical}\n" in diff["after"]
    assert f"{canonical}/blobs: -> {bulk}/blobs\n" in diff["after"]
    assert diff["prepared"].startswith(f"the plan ({legacy}):\n  1. hash, then hard-link ")
    assert (
        not os.path.lexists(canonical / "blobs")
        and not legacy.is_symlink()
        and ollama.calls == ["start ollama.service"]
    )


def test_migrate_changes_once_then_reports_aligned(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService, run_module: RunModule
) -> None:
    env = node_env(bus, start_on_node(start_hxd, node))
    first = run_module("hxd_migrate", env, diff=True)
    assert first["changed"] is True and first["result"]["blobs"] == 6
    assert first["msg"].startswith("committed: 6 blobs and 3 manifests") and "before" in first["diff"]
    assert os.readlink(node.paths.legacy) == str(node.paths.canonical)
    aligned = f"already aligned: {node.paths.canonical} is the canonical layout (its blobs are in {node.paths.bulk})"
    for check in (False, True):
        again = run_module("hxd_migrate", env, check=check, diff=True)
        assert again == {
            "changed": False,
            "plan": {"changed": False, "message": f"{aligned}; nothing to do"},
            "msg": f"{aligned}; nothing to do",
            "invocation": again["invocation"],
        }
    assert ollama.calls == ["start ollama.service", "stop ollama.service", "start ollama.service"]


def test_migrate_refused_by_the_plan_changes_nothing(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService, run_module: RunModule
) -> None:
    env = node_env(bus, start_on_node(start_hxd, node))
    node.paths.legacy.rename(node.paths.legacy.with_name("elsewhere"))
    for check in (False, True):
        reply = run_module("hxd_migrate", env, check=check)
        assert reply["failed"] is True and reply["rc"] == 5, reply
        assert reply["msg"].startswith("hxctl migrate --dry-run --json: exit status 5, refused; nothing was changed: ")
        assert str(node.paths.legacy) in reply["msg"]
    assert not os.path.lexists(node.paths.canonical / "blobs") and ollama.calls == ["start ollama.service"]


def test_migrate_that_fails_reports_hxd_s_reason(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService, run_module: RunModule
) -> None:
    env = node_env(bus, start_on_node(start_hxd, node))
    blob = corrupt_a_blob(node)
    reply = run_module("hxd_migrate", env)
    assert reply["failed"] is True and reply["rc"] == 1
    assert reply["msg"].startswith("hxctl migrate --json: exit status 1, failed or found problems: ")
    assert blob.name in reply["msg"]
    assert node.paths.legacy.is_dir() and not node.paths.legacy.is_symlink()
    assert ollama.calls == ["start ollama.service"]  # it failed before the stop


def test_smoke_passes_without_a_change_and_is_skipped_in_check_mode(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService, run_module: RunModule
) -> None:
    env = node_env(bus, start_on_node(start_hxd, node))
    reply = run_module("hxd_smoke", env, models=["qwen3:1.7b"])
    assert reply["changed"] is False and reply["smoke"]["ok"] is True
    assert [m["name"] for m in reply["smoke"]["models"]] == ["qwen3:1.7b"]
    skipped = run_module("hxd_smoke", env, check=True)
    assert skipped["skipped"] is True and "smoke" not in skipped


def test_smoke_fails_when_ollama_does_not_answer(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService, run_module: RunModule
) -> None:
    env = node_env(bus, start_on_node(start_hxd, node))
    ollama.stop("ollama.service")
    reply = run_module("hxd_smoke", env)
    assert reply["failed"] is True and reply["smoke"]["ok"] is False
    assert reply["msg"].startswith("smoke tests failed on sandbox: llama3.2:3b: ")
    assert reply["msg"].endswith("; no model passed")


def test_hxd_not_reachable_or_no_hxctl(run_module: RunModule, tmp_path: Path) -> None:
    env = {"HXD_BUS": f"unix:path={tmp_path}/no-bus"}
    reply = run_module("hxd_validate", env)
    assert reply["failed"] is True and reply["rc"] == 3
    assert reply["msg"].startswith("hxctl validate --json: exit status 3, hxd cannot be reached: ")
    missing = run_module("hxd_facts", env, hxctl="hxctl-not-installed")
    assert missing["failed"] is True and "hxctl-not-installed" in missing["msg"]


# ---------------------------------------------------------------------------------------------------------------
# The playbook
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SandboxNode:
    """A node of the stand-in fleet: its bus, its hxd, its Ollama stub."""

    name: str
    config: Config
    bus: PrivateBus
    hxd: HxdProcess
    ollama: OllamaService

    def layout(self) -> str:
        inventory = subprocess.run(
            [HXCTL, "inventory", "--json"],
            env={**os.environ, **node_env(self.bus, self.hxd)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        state: str = json.loads(inventory.stdout)["layout"]["state"]
        return state


@pytest.fixture
def fleet(start_hxd: StartHxd, tmp_path: Path) -> Iterator[list[SandboxNode]]:
    """llm-01 and llm-02 before the alignment, each with a bus, the systemd stand-in and Ollama of its own."""
    nodes = []
    with ExitStack() as stack:
        for name in ("llm-01", "llm-02"):
            root = stack.enter_context(world_traversable_dir(f"hxd-ansible-{name}-"))
            (tmp_path / f"bus-{name}").mkdir()
            bus = stack.enter_context(PrivateBus(tmp_path / f"bus-{name}"))
            config = node_config(root, url=f"http://127.0.0.1:{free_port()}")
            make_legacy_node(config)
            port = int(config.ollama.url.rsplit(":", 1)[1])
            service = OllamaService(config.paths.env_file, config.paths.state_dir.parent, port)
            service.workdir.mkdir(parents=True, exist_ok=True)
            service.start("ollama.service")
            stack.callback(service.stop, "ollama.service")
            stack.enter_context(MockSystemd(bus.address, service))
            paths = {key: getattr(config.paths, key) for key in ("canonical", "bulk", "legacy", "env_file")}
            paths |= {key: getattr(config.paths, key) for key in ("log_dir", "state_dir")}
            extra = f'[ollama]\nurl = "{config.ollama.url}"\n[telemetry]\nenabled = false\n'
            hxd = start_hxd(extra, address=bus.address, paths=paths)
            stack.callback(hxd.stop)  # before its bus goes
            nodes.append(SandboxNode(name, config, bus, hxd, service))
        yield nodes


def run_playbook(fleet: list[SandboxNode], tmp_path: Path) -> tuple[int, str, dict[str, dict[str, int]]]:
    """ansible-playbook hxinfra.hxd.align on the fleet: exit status, output, and PLAY RECAP per host."""
    inventory = {
        "hxd_nodes": {
            "hosts": {
                node.name: {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                    "hxd_environment": {
                        **node_env(node.bus, node.hxd),
                        "PATH": f"{Path(HXCTL).parent}:{os.environ['PATH']}",
                    },
                }
                for node in fleet
            }
        }
    }
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    home = tmp_path / "ansible-home"
    env = {**os.environ, **ansible_env(home, COLLECTIONS), "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp")}
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp_path / "inventory.json")]
    result = subprocess.run(
        [*command, "hxinfra.hxd.align"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    return result.returncode, result.stdout + result.stderr, recap(result.stdout)


def test_playbook_aligns_each_node_once(fleet: list[SandboxNode], tmp_path: Path) -> None:
    """First run: migrated, validated and smoke-tested, one node after the other, each changed once; second run:
    nothing changes."""
    code, output, recap = run_playbook(fleet, tmp_path)
    assert code == 0, output
    assert {host: (c["ok"], c["changed"], c["failed"]) for host, c in recap.items()} == {
        "llm-01": (4, 1, 0),
        "llm-02": (4, 1, 0),
    }, output
    assert [node.layout() for node in fleet] == ["canonical", "canonical"]
    # serial: 1, the first node's every task before the second node's first
    tasks = re.findall(r"^(?:ok|changed): \[(llm-0\d)\]", output, re.M)
    assert tasks == ["llm-01"] * 4 + ["llm-02"] * 4, output
    code, output, recap = run_playbook(fleet, tmp_path)
    assert code == 0, output
    assert {host: (c["ok"], c["changed"]) for host, c in recap.items()} == {"llm-01": (4, 0), "llm-02": (4, 0)}, output


def test_playbook_stops_at_the_first_node_that_fails(fleet: list[SandboxNode], tmp_path: Path) -> None:
    """llm-01's store has a corrupt blob: its migration fails, the rollout stops there, and llm-02 is not touched
    (no task ran on it, its layout is legacy, its Ollama never stopped)."""
    first, second = fleet
    corrupt_a_blob(first.config)
    code, output, recap = run_playbook(fleet, tmp_path)
    assert code == 2, output
    assert recap["llm-01"]["failed"] == 1 and "llm-02" not in recap, output
    assert "fatal: [llm-01]: FAILED!" in output and "[llm-02]" not in output.split("PLAY RECAP")[0], output
    assert [node.layout() for node in fleet] == ["legacy", "legacy"]
    assert first.ollama.calls == second.ollama.calls == ["start ollama.service"]
