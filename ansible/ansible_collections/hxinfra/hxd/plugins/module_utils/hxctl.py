# Copyright: hxinfra
# MIT License (see LICENSE in the hxd repository)
"""What the modules share: running the node's hxctl with --json and turning its exit status into a result.

The modules are thin, as hxctl is: hxctl already knows the node's configuration, reads the environment file as
systemd does, follows hxd's jobs and prints one JSON object, so a module runs it and reports. The bus and the
configuration come from the environment hxctl reads (HXD_BUS, HXD_CONFIG; the play's ``environment:``), the same
way as for a person at the node's shell.
"""

from __future__ import annotations

import json
from typing import Any

from ansible.module_utils.basic import AnsibleModule

# hxctl(1), EXIT STATUS: what each status means, for the failure message.
EXIT_MEANING = {
    1: "failed or found problems",
    2: "bad command line or unusable input",
    3: "hxd cannot be reached",
    4: "not authorized by polkit (run as root, or grant the org.hxinfra.hxd1.* actions)",
    5: "refused; nothing was changed",
}

HXCTL_OPTION: dict[str, Any] = {"hxctl": {"type": "str", "default": "hxctl"}}


def run_hxctl(module: AnsibleModule, args: list[str], ok: tuple[int, ...] = (0,)) -> tuple[int, Any]:
    """Run ``hxctl ARGS --json``; return (exit status, decoded JSON). Fails the module when hxctl is missing,
    exits with a status not in ``ok``, or prints no JSON; the message names the command, the status's meaning
    and hxctl's last error line."""
    name = module.params["hxctl"]
    executable = name if "/" in name else module.get_bin_path(name, required=True)
    command = [executable, *args, "--json"]
    rc, out, err = module.run_command(command)
    shown = " ".join(["hxctl", *args, "--json"])
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if rc not in ok:
        meaning = EXIT_MEANING.get(rc, "unexpected exit status")
        because = f": {last}" if last else ""
        module.fail_json(msg=f"{shown}: exit status {rc}, {meaning}{because}", rc=rc, stdout=out, stderr=err)
    try:
        decoded = json.loads(out)
    except ValueError:
        decoded = None
    if not isinstance(decoded, (dict, list)):
        module.fail_json(msg=f"{shown}: exit status {rc} but no JSON on stdout: {last}", rc=rc, stdout=out, stderr=err)
    return rc, decoded
