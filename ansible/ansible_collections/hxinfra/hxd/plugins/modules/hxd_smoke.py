#!/usr/bin/python
# Copyright: hxinfra
# MIT License (see LICENSE in the hxd repository)
"""hxd_smoke: ``hxctl smoke --json``; the task fails when a model failed or regressed, as hxctl exits 1 then."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: hxd_smoke
short_description: Run hxd's smoke tests against Ollama
version_added: "0.1.0"
description:
  - Runs C(hxctl smoke --json) on the node - per model a warm-up load, then a short fixed prompt timed to the first
    token; then concurrent requests to the first model that passed.
  - The task fails when a model failed or regressed, a concurrent request failed, or no model passed (hxctl's exit
    status 1); the report is returned either way.
  - It reports no change; hxd appends the run to its smoke log, which is its history, not the node's configuration.
  - In check mode nothing runs (a run loads every model and becomes part of the history regressions are measured
    against) and the task is skipped.
options:
  models:
    description:
      - The models to test, as C([host/][namespace/]model[:tag]) with an optional C(@sha256:PREFIX) pin.
      - Default C(smoke.models) of hxd.toml, else every C(OLLAMA_MODEL_*) of the environment file.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - hxinfra.hxd.hxctl
attributes:
  check_mode:
    support: partial
    details: The smoke run is skipped.
  diff_mode:
    support: none
author:
  - hxinfra
notes:
  - Needs the polkit action C(org.hxinfra.hxd1.smoke), which root has.
"""

EXAMPLES = r"""
- name: Smoke-test every model of the node
  hxinfra.hxd.hxd_smoke:

- name: Smoke-test one model
  hxinfra.hxd.hxd_smoke:
    models:
      - qwen3:1.7b
"""

RETURN = r"""
smoke:
  description: The run as C(hxctl smoke --json) prints it - ok, node, time, url, duration_sec, models (each with
    ok, failure, reason, first_token_sec, baseline_sec, regression, ...) and concurrency.
  returned: unless skipped
  type: dict
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hxinfra.hxd.plugins.module_utils.hxctl import HXCTL_OPTION, run_hxctl

ARGUMENT_SPEC = dict(models=dict(type="list", elements="str", default=[]), **HXCTL_OPTION)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if module.check_mode:
        module.exit_json(changed=False, skipped=True, msg="check mode: the smoke tests were not run")
    args = ["smoke", *(part for name in module.params["models"] for part in ("--model", name))]
    rc, report = run_hxctl(module, args, ok=(0, 1))
    if rc == 1:
        module.fail_json(msg=f"smoke tests failed on {report['node']}: {_why(report)}", changed=False, smoke=report)
    module.exit_json(changed=False, smoke=report)


def _why(report: dict[str, Any]) -> str:
    reasons = [
        f"{m['name'] or m['model']}: {m['failure'] or 'regression'}: {m['reason']}"
        for m in report["models"]
        if not m["ok"] or m["regression"]
    ]
    concurrency = report["concurrency"]
    if concurrency is None:
        reasons.append("no model passed")
    elif not concurrency["ok"]:
        reasons.append(f"concurrency: {concurrency['reason']}")
    return "; ".join(reasons)


if __name__ == "__main__":
    main()
