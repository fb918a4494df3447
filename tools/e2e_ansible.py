"""The Ansible controller of tools/e2e: the collection built and installed on the host, an inventory of the booted
nodes, and ansible-playbook's output read back.

The controller is the host's venv (`make venv` installs ansible-core from requirements-dev.lock) with the host's
ssh client; tools/e2e runs it in llm-01's network namespace only (nsenter -n), where the nodes' private network is,
so the playbook reaches both nodes over real SSH to their sshd while everything else is the host's. Stdlib only:
tools/e2e runs on Debian's python3.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from debroot import REPO, SetupFailed

COLLECTION = REPO / "ansible/ansible_collections/hxinfra/hxd"
VENV_BIN = REPO / ".venv/bin"
PLAYBOOK = "hxinfra.hxd.align"


def install_collection(work: Path) -> Path:
    """`ansible-galaxy collection build` of the repository's collection, then `ansible-galaxy collection install`
    of the tarball into ``work``/collections, as an operator installs it; returns that collections path."""
    galaxy = VENV_BIN / "ansible-galaxy"
    if not galaxy.exists():
        raise SetupFailed(f"{galaxy} is missing: run `make venv` (ansible-core is in requirements-dev.lock)")
    shutil.rmtree(work, ignore_errors=True)
    (work / "dist").mkdir(parents=True)
    env = {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "ANSIBLE_HOME": str(work / "home"), "LANG": "C.UTF-8"}
    for command in (
        [str(galaxy), "collection", "build", str(COLLECTION), "--output-path", str(work / "dist")],
        [str(galaxy), "collection", "install", "--offline", "-p", str(work / "collections")],
    ):
        if command[2] == "install":
            command += [str(path) for path in (work / "dist").glob("hxinfra-hxd-*.tar.gz")]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise SetupFailed(f"{' '.join(command[:3])}: {(result.stdout + result.stderr).strip()[-600:]}")
    return work / "collections"


def write_inventory(work: Path, nodes: dict[str, str], key: Path, known_hosts: Path) -> Path:
    """hxd_nodes: each node by its address, as root with the test's key and the nodes' real host keys."""
    ssh_args = (
        f"-o IdentitiesOnly=yes -o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes -o BatchMode=yes"
    )
    hosts = {
        name: {
            "ansible_host": address,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key),
            "ansible_ssh_common_args": ssh_args,
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        for name, address in nodes.items()
    }
    path = work / "inventory.json"
    path.write_text(json.dumps({"hxd_nodes": {"hosts": hosts}}, indent=1))
    return path


def ansible_env(home: Path, collections: Path) -> dict[str, str]:
    """ANSIBLE_* settings that keep an ansible-playbook off this machine's configuration: an empty ansible.cfg and
    a home of its own under ``home``, the collection from ``collections``, no colors in its output (which
    ``recap`` reads). The tests' and the benchmark's playbooks run with these too."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "ansible.cfg").write_text("[defaults]\n")
    return {
        "ANSIBLE_CONFIG": str(home / "ansible.cfg"),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_COLLECTIONS_PATH": str(collections),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }


def playbook_command(work: Path, collections: Path, inventory: Path) -> tuple[list[str], dict[str, str]]:
    """The ansible-playbook command line and its environment (no configuration of this machine's)."""
    env = {
        "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(work / "home"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "cp"),
        **ansible_env(work / "home", collections),
    }
    return [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), PLAYBOOK], env


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP as host -> {ok, changed, unreachable, failed, ...}."""
    return {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
        for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M)
    }


def task_hosts(output: str) -> list[str]:
    """The host of each task result, in the order ansible-playbook printed them."""
    return re.findall(r"^(?:ok|changed|fatal|skipping): \[([^\]]+)\]", output, re.M)
