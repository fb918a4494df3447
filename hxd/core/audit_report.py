"""What an audit hands back: findings with their stable codes, the repairs ``--fix`` may make, the changes it made.

These types are shared by the walk (``hxd.core.audit``), the checks (``audit_checks``) and the repairs
(``audit_repair``), and travel to the bus and to hxctl as a job's result. The report also keeps its own bound: it
lists at most ``MAX_FINDINGS`` findings, counts the rest by severity and sums them up in one HX293, so that a tree
full of faults cannot make a report (or a D-Bus reply) without end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning", "info"]

# The report lists at most this many findings; HX293 counts the rest, and --fix repairs only the listed ones.
MAX_FINDINGS = 10_000


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    path: str
    message: str
    hint: str


@dataclass(frozen=True)
class Repair:
    """What ``repair`` may change on one entry, and the entry as the audit saw it; it refuses if that differs."""

    path: str
    root: str  # the real path of the managed path the entry was found under, at audit time
    parts: tuple[str, ...]  # the components from ``root`` down to the entry
    dev: int
    ino: int
    mode: int  # st_mode, file type included
    uid: int
    gid: int
    new_mode: int | None  # permission bits to set, or None
    new_owner: tuple[int, int] | None  # (uid, gid) to set, or None


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    repairs: list[Repair] = field(default_factory=list)
    scanned: int = 0  # entries looked at (lstat'd), symlinks and the managed paths themselves included
    # Findings by severity, those beyond MAX_FINDINGS included.
    counts: dict[str, int] = field(default_factory=lambda: {"error": 0, "warning": 0, "info": 0})

    @property
    def errors(self) -> int:
        return self.counts["error"]

    @property
    def warnings(self) -> int:
        return self.counts["warning"]

    @property
    def infos(self) -> int:
        return self.counts["info"]

    def add(self, code: str, severity: Severity, path: str, message: str, hint: str, *, always: bool = False) -> bool:
        """Count a finding and list it while there is room (``always``: regardless); True when it was listed."""
        self.counts[severity] += 1
        if len(self.findings) >= MAX_FINDINGS and not always:
            return False
        self.findings.append(Finding(code, severity, path, message, hint))
        return True

    def add_unlisted(self, path: str) -> None:
        """HX293 at ``path`` for the findings counted but not listed, with the worst severity among them."""
        if len(self.findings) < MAX_FINDINGS:
            return
        listed = {severity: 0 for severity in self.counts}
        for finding in self.findings:
            listed[finding.severity] += 1
        more = {severity: count - listed[severity] for severity, count in self.counts.items()}
        total = sum(more.values())
        if not total:
            return
        worst: Severity = "error" if more["error"] else "warning" if more["warning"] else "info"
        self.counts[worst] += 1
        self.findings.append(
            Finding(
                "HX293",
                worst,
                path,
                f"{total} more findings ({more['error']} errors, {more['warning']} warnings) are not listed: the "
                f"report keeps the first {MAX_FINDINGS}",
                "fix the listed ones (hxctl audit --fix repairs what it can), then audit again",
            )
        )


@dataclass(frozen=True)
class Change:
    """One change ``repair`` made (``error`` empty) or tried and did not make (``error`` says why)."""

    path: str
    what: Literal["mode", "owner"]
    before: str  # "0666", or "user:group"
    after: str
    error: str = ""


@dataclass(frozen=True)
class AuditResult:
    """An audit (with ``fix``: the one after the repairs, plus HX294 for each change not made) and the changes."""

    report: AuditReport
    changes: list[Change]

    def summary(self) -> dict[str, int]:
        """The counts for ``LastAudit`` and the feature state."""
        report = self.report
        return {
            "errors": report.errors,
            "warnings": report.warnings,
            "infos": report.infos,
            "scanned": report.scanned,
            "changes": len(self.changes),
        }
