#!/usr/bin/python
# Copyright: hxinfra
# MIT License (see LICENSE in the hxd repository)
"""hxd_facts: the node's facts as ``hxctl inventory --json`` reads them, under ``ansible_facts.hxd``."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hxd_facts
short_description: Facts about an hxd node from hxctl inventory
version_added: "0.1.0"
description:
  - Runs C(hxctl inventory --json) on the node and returns its object as the fact C(hxd) -
    the same facts C(hxctl fleet diff) compares.
  - hxd's configuration, the store's layout and its state (C(canonical), C(legacy) or C(mixed)), the environment
    systemd passes Ollama, the models with their manifest digests, the digest pins, Ollama's unit, and hxd's
    C(Status) (or why hxd could not be asked, in C(hxd_error)).
  - Parts hxctl could not read are listed in C(errors) and given as warnings; they do not fail the task.
  - hxctl reads the bus and the configuration from the environment (C(HXD_BUS), C(HXD_CONFIG)); set them with the
    play's C(environment) keyword for a node where they are not the defaults.
extends_documentation_fragment:
  - hxinfra.hxd.hxctl
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
author:
  - hxinfra
"""

EXAMPLES = r"""
- name: Read the node's facts
  hxinfra.hxd.hxd_facts:

- name: Say where the store stands
  ansible.builtin.debug:
    msg: "{{ ansible_facts.hxd.layout.state }} with {{ ansible_facts.hxd.models | length }} models"
"""

RETURN = r"""
ansible_facts:
  description: The facts.
  returned: always
  type: dict
  contains:
    hxd:
      description: C(hxctl inventory --json) as hxctl(1) describes it.
      returned: always
      type: dict
      sample:
        node: llm-01
        version: 0.1.0
        layout:
          canonical: directory
          canonical/blobs: "-> /data/llm_bulk_storage/blobs"
          canonical/manifests: "-> /data/llm_bulk_storage/manifests"
          legacy: "-> /mnt/active_llm_models"
          state: canonical
        ollama_unit: active
        errors: []
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hxinfra.hxd.plugins.module_utils.hxctl import HXCTL_OPTION, run_hxctl

ARGUMENT_SPEC = dict(HXCTL_OPTION)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    _, inventory = run_hxctl(module, ["inventory"])
    for error in inventory.get("errors", []):
        module.warn(f"hxctl inventory: {error}")
    module.exit_json(changed=False, ansible_facts={"hxd": inventory})


if __name__ == "__main__":
    main()
