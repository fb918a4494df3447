#!/usr/bin/python
# Copyright: hxinfra
# MIT License (see LICENSE in the hxd repository)
"""hxd_validate: ``hxctl validate --json``; the task fails when hxd finds an error, as hxctl exits 1 then."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hxd_validate
short_description: Validate Ollama's environment file, store and server with hxd
version_added: "0.1.0"
description:
  - Runs C(hxctl validate --json) on the node - hxd reads Ollama's environment file exactly as systemd does and
    checks the model variables, C(OLLAMA_MODELS) against the canonical layout and, on request, the store and what
    Ollama serves.
  - The task fails when there is an error finding (hxctl's exit status 1) or the file cannot be read (2); warnings
    and notes are returned and do not fail it. It never changes anything.
  - A gate for a rollout - after the migration, O(store) and O(server) check that the node serves every model from
    the canonical layout.
options:
  file:
    description:
      - The environment file to check; hxctl opens it and hands it to hxd.
      - Default C(paths.env_file) of hxd.toml.
    type: path
  store:
    description: Check each model's manifest and blobs (presence, size, digest pin) in the store.
    type: bool
    default: false
  deep:
    description: As O(store), and recompute every blob's sha256 (reads every byte).
    type: bool
    default: false
  server:
    description: Check the models against what Ollama serves (C(GET /api/tags)).
    type: bool
    default: false
  strict:
    description: A model without a tag or with the tag C(latest) and no digest pin is an error, not a warning.
    type: bool
    default: false
extends_documentation_fragment:
  - hxinfra.hxd.hxctl
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - hxinfra
notes:
  - Needs the polkit action C(org.hxinfra.hxd1.validate), which root has.
"""

EXAMPLES = r"""
- name: Validate the environment file, the store and what Ollama serves
  hxinfra.hxd.hxd_validate:
    store: true
    server: true
"""

RETURN = r"""
validation:
  description: The report as C(hxctl validate --json) prints it - file, loads (whether systemd would load the file
    at all), findings (each with code, severity, line, key, message, hint; hxctl(1), FINDINGS) and the counts
    errors, warnings, infos.
  returned: always
  type: dict
  sample:
    file: /opt/hx-infrastructure/llm-01/config/ollama/ollama.env
    loads: true
    findings: []
    errors: 0
    warnings: 0
    infos: 0
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hxinfra.hxd.plugins.module_utils.hxctl import HXCTL_OPTION, run_hxctl

FLAGS = ("store", "deep", "server", "strict")
ARGUMENT_SPEC = dict(
    file=dict(type="path"), **{flag: dict(type="bool", default=False) for flag in FLAGS}, **HXCTL_OPTION
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    args = ["validate", *(f"--{flag}" for flag in FLAGS if module.params[flag])]
    if module.params["file"]:
        args.append(module.params["file"])
    rc, report = run_hxctl(module, args, ok=(0, 1))
    if rc == 1:
        errors = [f for f in report["findings"] if f["severity"] == "error"]
        listed = "; ".join(f"{f['code']} line {f['line']}: {f['message']}" for f in errors)
        module.fail_json(
            msg=f"{report['file']}: {report['errors']} error(s): {listed}", changed=False, validation=report
        )
    module.exit_json(changed=False, validation=report)


if __name__ == "__main__":
    main()
