"""The Prometheus rules hxd ships (packaging/prometheus/hxd-rules.yml), checked by Debian's promtool: they load,
their unit tests pass, every alert has a test where it fires and one where it does not (a rule that never fires fails
the tests), and every alert has a summary and a runbook section in docs/runbooks.md that the package ships."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_docs import headings

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "packaging/prometheus/hxd-rules.yml"
TESTS = REPO / "packaging/prometheus/hxd-rules.test.yml"
RUNBOOKS = REPO / "docs/runbooks.md"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (make deps installs it)"
    return found


def alerts(text: str) -> dict[str, str]:
    """Alert name -> its rule's lines, from the rules file (one ``- alert:`` item per rule, as the file is written)."""
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=      - (?:alert|record): )", text):
        match = re.match(r"      - alert: (\w+)\n", block)
        if match:
            found[match[1]] = block
    return found


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(RULES.read_text())) + 7} rules found" in result.stdout  # 7 recording rules


def test_promtool_unit_tests_pass() -> None:
    result = subprocess.run([promtool(), "test", "rules", str(TESTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has an ``exp_alerts: []`` case and one with alerts; and it is the rule that the firing case
    checks: with the rule's expression replaced by one that never fires, promtool's tests fail."""
    text, tests = RULES.read_text(), TESTS.read_text()
    cases = re.findall(r"- alertname: (\w+)\n\s+eval_time: \w+\n\s+exp_alerts:( \[\])?", tests)
    names = alerts(text)
    assert len(names) == 14
    for name in names:
        kinds = {bool(empty) for alert, empty in cases if alert == name}
        assert kinds == {True, False}, f"{name}: needs a case where it fires and one where it does not"


@pytest.mark.parametrize("name", sorted(alerts(RULES.read_text())))
def test_an_alert_that_never_fires_fails_the_tests(name: str, tmp_path: Path) -> None:
    text = RULES.read_text()
    rule = alerts(text)[name]
    silenced = re.sub(r"(?m)^        expr: .*$", "        expr: vector(1) == 0", rule, count=1)
    assert silenced != rule
    (tmp_path / RULES.name).write_text(text.replace(rule, silenced))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    result = subprocess.run([promtool(), "test", "rules", str(tmp_path / TESTS.name)], capture_output=True, text=True)
    assert result.returncode == 1 and f"alertname: {name}," in result.stderr, result.stdout + result.stderr


def test_every_alert_has_a_summary_and_a_runbook_section_that_ships() -> None:
    sections = {heading.lower(): heading for heading in headings(RUNBOOKS.read_text())}
    for name, rule in alerts(RULES.read_text()).items():
        for annotation in ("summary", "description"):
            assert re.search(rf'\n          {annotation}: "(?:[^"\\]|\\.)+"\n', rule), (name, annotation)
        assert re.search(r"\n          severity: (critical|warning)\n", rule), name
        assert f'runbook_url: "file:///usr/share/hxd/runbooks.md#{name.lower()}"' in rule, name
        assert sections.get(name.lower()) == name, f"docs/runbooks.md has no section {name}"
    shipped = (REPO / "packaging/debian/hxd.install").read_text().splitlines()
    assert "docs/runbooks.md usr/share/hxd/" in shipped
    assert "packaging/prometheus/hxd-rules.yml usr/share/hxd/prometheus/" in shipped
