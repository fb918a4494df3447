#!/usr/bin/python
# Copyright: hxinfra
# MIT License (see LICENSE in the hxd repository)
"""hxd_migrate: the migration to the canonical layout; check mode is ``hxctl migrate --dry-run``, the plan."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hxd_migrate
short_description: Move an hxd node's model store to the canonical layout
version_added: "0.1.0"
description:
  - Asks hxd for the migration's plan (C(hxctl migrate --dry-run --json)). On a node already aligned the plan says
    so and the task reports no change. Otherwise, outside check mode, runs the migration (C(hxctl migrate --json))
    - blobs copied into bulk storage while Ollama serves and verified, Ollama's unit stopped, the canonical symlinks,
    the legacy path and C(OLLAMA_MODELS) switched, Ollama started, and the same models with the same digests checked;
    a failed check rolls back by itself.
  - Check mode runs only the plan, which is every check the migration makes before it changes anything; a reason to
    refuse (too little free space, a missing source, ...) fails the task there too.
  - Diff mode shows the layout and C(OLLAMA_MODELS) before and after, and the plan's steps.
  - The paths are hxd.toml's C([paths]) on the node, the same for every node of an aligned fleet.
extends_documentation_fragment:
  - hxinfra.hxd.hxctl
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - hxinfra
notes:
  - Needs the polkit action C(org.hxinfra.hxd1.migrate), which root has.
  - One changing job at a time on a node; a migration, rollback or audit fix already running fails the task (Busy).
"""

EXAMPLES = r"""
- name: Migrate the model store to the canonical layout
  hxinfra.hxd.hxd_migrate:
  register: migration

- name: What the migration would do, changing nothing
  hxinfra.hxd.hxd_migrate:
  check_mode: true
  diff: true
"""

RETURN = r"""
plan:
  description: The plan as C(hxctl migrate --dry-run --json) prints it - source, canonical, bulk, legacy, env_file,
    same_filesystem, blobs, manifests, bytes_to_copy, free_bytes, owner, steps, ...; on an aligned node only
    changed (false) and message.
  returned: always
  type: dict
result:
  description: The migration's result as C(hxctl migrate --json) prints it - blobs, manifests, bytes,
    service_down_seconds, backups, message.
  returned: when the migration ran
  type: dict
msg:
  description: What was done, or why nothing was.
  returned: always
  type: str
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hxinfra.hxd.plugins.module_utils.hxctl import HXCTL_OPTION, run_hxctl

ARGUMENT_SPEC = dict(HXCTL_OPTION)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    _, plan = run_hxctl(module, ["migrate", "--dry-run"])
    if not plan["changed"]:
        module.exit_json(changed=False, plan=plan, msg=plan["message"])
    diff = _diff(module, plan) if module._diff else {}  # an hxctl inventory more: only when asked
    if module.check_mode:
        msg = f"would migrate {plan['blobs']} blobs and {plan['manifests']} manifests from {plan['source']}"
        module.exit_json(changed=True, plan=plan, diff=diff, msg=msg)
    _, result = run_hxctl(module, ["migrate"])
    module.exit_json(changed=result["changed"], plan=plan, result=result, diff=diff, msg=result["message"])


def _diff(module: AnsibleModule, plan: dict[str, Any]) -> dict[str, str]:
    """The layout now (from ``hxctl inventory``, which reads the same hxd.toml) and as the plan leaves it."""
    _, facts = run_hxctl(module, ["inventory"])
    layout, environment = facts["layout"], facts["environment"]
    canonical, bulk, legacy, env_file = (plan[key] for key in ("canonical", "bulk", "legacy", "env_file"))
    before = {
        f"OLLAMA_MODELS in {env_file}": environment.get("OLLAMA_MODELS", "(not set or unreadable)"),
        canonical: layout["canonical"],
        f"{canonical}/blobs": layout["canonical/blobs"],
        f"{canonical}/manifests": layout["canonical/manifests"],
        legacy: layout["legacy"],
    }
    after = {
        f"OLLAMA_MODELS in {env_file}": canonical,
        canonical: "directory",
        f"{canonical}/blobs": f"-> {bulk}/blobs",
        f"{canonical}/manifests": f"-> {bulk}/manifests",
        legacy: f"-> {canonical} (the old directory kept as a backup)",
    }
    steps = "".join(f"  {number}. {step}\n" for number, step in enumerate(plan["steps"], 1))
    return {
        "before_header": "layout now",
        "after_header": "layout after the migration",
        "before": "".join(f"{key}: {value}\n" for key, value in before.items()),
        "after": "".join(f"{key}: {value}\n" for key, value in after.items()),
        "prepared": f"the plan ({plan['source']}):\n{steps}",
    }


if __name__ == "__main__":
    main()
