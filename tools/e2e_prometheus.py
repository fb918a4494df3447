"""The Prometheus of tools/e2e: Debian's prometheus package on llm-01, scraping both nodes' hxd.socket over their
private network, with the rules and the dashboard the package ships.

What is here is what does not need a container: the scrape configuration, the rules made fast enough for a test
(every ``for:`` shortened; the expressions as shipped), the query script run on llm-01 against Prometheus's HTTP API,
and the dashboard's queries with Grafana's variables filled in. Stdlib only: tools/e2e runs on Debian's python3.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from debroot import REPO

PACKAGES = ("prometheus",)  # installed on llm-01 from the cached archives, without its Recommends
RULES = REPO / "packaging/prometheus/hxd-rules.yml"  # the shipped rules
DASHBOARD = REPO / "packaging/grafana/hxd-fleet.json"  # the shipped dashboard
CONFIG = "/etc/prometheus/prometheus.yml"  # Debian's prometheus.service reads it
RULES_IN_NODE = "/etc/prometheus/hxd-rules.yml"
API = "http://127.0.0.1:9090/api/v1"
PORT = 9464  # hxd.socket's
INTERVAL_SEC = 1  # scrape and evaluation interval
FOR_SEC = 3  # every alert's `for:` in the e2e (the shipped ones are minutes)


def config(targets: dict[str, str], rules: bool) -> str:
    """prometheus.yml: job hxd, one target per node at ADDRESS:9464 with instance = the node's name."""
    static = "".join(
        f"      - targets: ['{address}:{PORT}']\n        labels:\n          instance: {name}\n"
        for name, address in targets.items()
    )
    rule_files = f"rule_files:\n  - {RULES_IN_NODE}\n" if rules else ""
    return (
        f"global:\n  scrape_interval: {INTERVAL_SEC}s\n  evaluation_interval: {INTERVAL_SEC}s\n{rule_files}"
        f"scrape_configs:\n  - job_name: hxd\n    static_configs:\n{static}"
    )


def fast_rules(text: str) -> str:
    """The shipped rules with every alert's ``for:`` set to FOR_SEC, so that a fault fires within seconds."""
    return re.sub(r"^(\s+)for: \S+\s*$", rf"\g<1>for: {FOR_SEC}s", text, flags=re.M)


# Run by llm-01's python3: argv[1] is the API path with its query string; prints the JSON answer's "data".
QUERY_SCRIPT = f"""\
import json, sys, urllib.request
with urllib.request.urlopen('{API}/' + sys.argv[1], timeout=10) as answer:
    reply = json.load(answer)
if reply.get('status') != 'success':
    raise SystemExit(reply.get('error', reply))
print(json.dumps(reply['data']))
"""


def firing(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(alertname, instance) of each firing alert of /api/v1/alerts."""
    return {(a["labels"]["alertname"], a["labels"].get("instance", "")) for a in alerts if a.get("state") == "firing"}


# Grafana's variables, filled in for a query outside Grafana: intervals get one that covers a few scrapes, and a
# variable selecting nodes matches them all.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "5m", "__range_s": "300"}


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel, rows' panels included, variables filled in."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        panels += [panel, *panel.get("panels", [])]
    queries = []
    for panel in panels:
        for target in panel.get("targets", []):
            if expr := target.get("expr"):
                queries.append((panel.get("title", "?"), _fill(expr)))
    return queries


def _fill(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return GRAFANA_VARIABLES.get(name, ".+")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
