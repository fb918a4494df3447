"""The engine: hxd's state and the operations on it, shared by the daemon and ``hxctl --offline``.

It knows nothing of D-Bus. The daemon wraps it in the bus adapter and drives its timers; the offline client uses it
directly. Observers (the bus adapter's PropertiesChanged) are told which facts changed, by name.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from hxd import __version__
from hxd.core.audit import run_audit
from hxd.core.audit_report import AuditResult
from hxd.core.config import Config, load_config
from hxd.core.envfile_reader import read_envfile, read_envfile_fd
from hxd.core.errors import InvalidConfig
from hxd.core.features import FEATURES, Feature, FeatureState
from hxd.core.jobs import JobControl, JobSummary
from hxd.core.migrate import journal as journals
from hxd.core.migrate.plan import AlreadyAligned
from hxd.core.migrate.runner import Migration, interrupted
from hxd.core.modelref import ModelRef
from hxd.core.paths import check_paths
from hxd.core.runner import Job, JobRunner, Outcome
from hxd.core.schedule import Calendar, Interval, iso, next_run, read_stamp
from hxd.core.service import ServiceController
from hxd.core.smoke import SmokeRun, run_smoke
from hxd.core.systemctl import SystemctlController
from hxd.core.telemetry.recorder import Telemetry, csv_path
from hxd.core.validate import Options, Report, validate

log = structlog.get_logger("hxd.engine")

# Names of the facts an observer can be told about; the bus adapter maps each to a property.
FACTS = (
    "version",
    "node",
    "config_path",
    "state",
    "state_message",
    "start_time",
    "features",
    "feature_details",
    "timers",
    "paths",
    "jobs",
)
STATES = ("starting", "running", "degraded", "stopping", "offline")

Observer = Callable[[frozenset[str]], None]
# A prepared migration step: run it and get its Result.
MigrationWork = Callable[[], dict[str, Any]]


@dataclass
class Timer:
    """A recurring task and when it runs next (wall clock, for display; intervals run on the monotonic clock)."""

    name: str
    schedule: Calendar | Interval
    randomized_delay_sec: int = 0
    next_run: datetime | None = None
    last_run: datetime | None = None

    def plan_calendar(self, now: datetime, rng: random.Random) -> datetime:
        """Next wall-clock run of a calendar timer: randomized like ``RandomizedDelaySec=``, and caught up once
        after a run missed while hxd was down, like ``Persistent=true``."""
        assert isinstance(self.schedule, Calendar)
        return next_run(self.schedule, self.last_run, now, self.randomized_delay_sec, rng)


@dataclass(frozen=True)
class Loaded:
    """A config read and checked off the event loop, ready for ``Engine.apply``."""

    config: Config
    timers: dict[str, Timer]
    paths: dict[str, str]


@dataclass(frozen=True)
class Status:
    """Everything ``Status()`` reports; also what ``hxctl --offline status`` prints."""

    version: str
    node: str
    state: str
    state_message: str
    config_path: str
    start_time: datetime
    uptime_sec: float
    features: dict[str, FeatureState]
    feature_details: dict[str, str]
    timers: dict[str, datetime]
    paths: dict[str, str]
    jobs: dict[str, JobSummary]
    last_audit: dict[str, int | str]
    last_validation: dict[str, int | str]
    last_smoke: dict[str, Any]


@dataclass
class Engine:
    """hxd's state. ``state`` is ``starting``, ``running``, ``degraded`` (config reload failed), ``stopping``."""

    config_path: Path
    config: Config
    state: str = "starting"
    config_error: str = ""
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_monotonic: float = field(default_factory=time.monotonic)
    features: dict[str, Feature] = field(
        default_factory=lambda: dict.fromkeys(FEATURES, Feature(FeatureState.UNCHECKED, "not run since hxd started"))
    )
    timers: dict[str, Timer] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, JobSummary] = field(default_factory=dict)  # by job path
    last_audit: dict[str, int | str] = field(default_factory=dict)  # time, errors, warnings, infos, scanned, changes
    last_validation: dict[str, int | str] = field(default_factory=dict)  # time, file, errors, warnings
    last_smoke: dict[str, Any] = field(default_factory=dict)  # SmokeRun.summary() of the last run
    observers: list[Observer] = field(default_factory=list)
    # Who runs the jobs, for the node lock's records: hxd (its jobs are numbered D-Bus objects) or an offline hxctl.
    program: str = "hxd"
    # How Ollama's unit is stopped and started: systemctl here; the daemon puts its D-Bus client to systemd instead.
    controller: ServiceController = field(default_factory=SystemctlController)

    def __post_init__(self) -> None:
        self.runner = JobRunner(self.program, lambda: self.config.paths.state_dir, numbered=self.program == "hxd")
        self.timers = build_timers(self.config)
        self.paths = check_paths(self.config)
        # pynvml is imported on the first sample, not here: hxd's start and idle memory stay small.
        self.telemetry = Telemetry(csv_path(self.config), self.config.telemetry)
        self.record_telemetry()
        self.refresh_migration()

    def record_telemetry(self) -> None:
        """Show telemetry's state (after each sample, on the event loop: observers emit signals)."""
        disabled = Feature(FeatureState.DISABLED, "telemetry.enabled = false")
        if self._set_feature("telemetry", self.telemetry.feature if self.config.telemetry.enabled else disabled):
            self.notify("telemetry")

    def refresh_migration(self) -> None:
        """The migrate feature's state from the journal: an interrupted migration says what to run."""
        problem = interrupted(self.config.paths.state_dir)
        self._set_feature(
            "migrate", Feature(FeatureState.INTERRUPTED, problem) if problem else Feature(FeatureState.OK)
        )

    def _set_feature(self, name: str, feature: Feature) -> bool:
        """Change a feature's state and tell the observers; False when it was already so."""
        if self.features.get(name) == feature:
            return False
        self.features[name] = feature
        self.notify("features")
        return True

    def set_jobs(self, jobs: dict[str, JobSummary]) -> None:
        if jobs != self.jobs:
            self.jobs = jobs
            self.notify("jobs")

    def notify(self, *facts: str) -> None:
        changed = frozenset(facts)
        for observer in self.observers:
            observer(changed)

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.notify("state")

    @property
    def state_message(self) -> str:
        if self.config_error:
            return f"configuration not reloaded, still using the previous one: {self.config_error}"
        return ""

    def load(self) -> Loaded:
        """Read the config file and look at what it names (stamps, every path). Blocking, and touching no state:
        the daemon calls it in a worker thread, then ``apply`` (or ``reload_failed``) on the event loop. Raises
        InvalidConfig."""
        config = load_config(self.config_path)
        return Loaded(config, build_timers(config), check_paths(config))

    def reload_failed(self, exc: InvalidConfig) -> None:
        """A broken file keeps the old config and marks hxd degraded, with the reason in Status()."""
        self.config_error = str(exc)
        log.error("config reload failed; keeping the previous configuration", error=self.config_error)
        self.state = "degraded"
        self.notify("state", "state_message")

    def apply(self, loaded: Loaded) -> None:
        """Switch to a config that ``load`` read."""
        config = loaded.config
        self.config = config
        self.config_error = ""
        self.timers = loaded.timers
        self.paths = loaded.paths
        self.telemetry.configure(csv_path(config), config.telemetry)
        self.record_telemetry()
        self.state = "running"
        log.info("configuration reloaded", config_path=str(self.config_path))
        self.notify("state", "state_message", "node", "timers", "paths")

    def validate(self, options: Options, fd: int | None = None, name: str = "") -> Report:
        """Validate the configured env file, or the file open on ``fd`` (called ``name`` in the report).

        Blocking (file reads, hashing, HTTP): the daemon calls it in a worker thread, then ``record_validation``.
        """
        if fd is None:
            path = self.config.paths.env_file
            return validate(read_envfile(path), str(path), self.config, options)
        label = name or f"fd {fd}"
        return validate(read_envfile_fd(fd, Path(label)), label, self.config, options)

    def record_validation(self, report: Report) -> None:
        """Show the last validation in the feature state; called on the event loop, since observers emit signals."""
        now = iso(datetime.now(UTC))
        self.last_validation = {"time": now, "file": report.file, "errors": report.errors, "warnings": report.warnings}
        state = FeatureState.PROBLEMS if report.errors else FeatureState.OK
        detail = f"last run {now}: {report.file}: {report.errors} errors, {report.warnings} warnings"
        self._set_feature("validate", Feature(state, detail))

    # --- jobs: each takes the node's lock first (Busy when another process or job holds it), then runs in a
    # worker thread of the runner. Blocking (lock files, plans, journals): the daemon calls these in a thread.

    def audit(self, fix: bool) -> Job:
        """Audit (and with ``fix`` repair) the managed trees; a repair changes files, so it runs alone."""
        job = self.runner.reserve("audit", exclusive=fix)

        def work(control: JobControl) -> Outcome:
            result = run_audit(self.config, control, fix=fix)
            return Outcome("audit finished", result.summary(), result)

        return self.runner.start(job, work, self._audit_ended)

    def _audit_ended(self, job: Job) -> None:
        if job.outcome is not None:
            assert isinstance(job.outcome.value, AuditResult)
            self.record_audit(job.outcome.value)

    def record_audit(self, result: AuditResult) -> None:
        now = iso(datetime.now(UTC))
        summary = result.summary()
        self.last_audit = {"time": now, **summary}
        made = f", {summary['changes']} changes made" if result.changes else ""
        state = FeatureState.PROBLEMS if summary["errors"] else FeatureState.OK
        detail = f"last run {now}: {summary['errors']} errors, {summary['warnings']} warnings{made}"
        log.info("audit finished", **summary)
        self._set_feature("audit", Feature(state, detail))
        self.notify("last_audit")

    def smoke(self, models: list[ModelRef] | None) -> Job:
        """Run the smoke tests (``models``, else the configured ones); one smoke run at a time on the node."""
        job = self.runner.reserve("smoke", exclusive=False)

        def work(control: JobControl) -> Outcome:
            run = run_smoke(self.config, models, control, datetime.now(UTC))
            return Outcome(run.describe(), {"runs": json.dumps(run.to_json())}, run)

        return self.runner.start(job, work, self._smoke_ended)

    def _smoke_ended(self, job: Job) -> None:
        if job.outcome is not None:
            assert isinstance(job.outcome.value, SmokeRun)
            self.record_smoke(job.outcome.value)

    def plan_migration(self, overrides: dict[str, str]) -> dict[str, object]:
        """What ``migrate`` would do (the plan's summary, or AlreadyAligned's outcome), or Refused with why not;
        writes nothing, takes no lock."""
        try:
            return Migration(self.config, self.controller, JobControl("plan")).plan(overrides).summary()
        except AlreadyAligned as exc:
            return exc.outcome

    def migrate(self, overrides: dict[str, str], *, resume: bool) -> Job:
        """Start (or resume) the migration; refusals come before the job exists, as Refused."""

        def prepare(migration: Migration) -> MigrationWork:
            try:
                prepared = migration.prepare(overrides, resume=resume)
            except AlreadyAligned as exc:  # nothing to do: a job that completes at once, changing nothing
                outcome = exc.outcome
                return lambda: outcome
            return lambda: migration.run(prepared)

        return self._migration_job("migrate", prepare)

    def rollback(self) -> Job:
        """Undo the last migration (interrupted, or committed and not pruned)."""

        def prepare(migration: Migration) -> MigrationWork:
            journal = migration.rollback_journal()
            return lambda: migration.rollback(journal)

        return self._migration_job("rollback", prepare)

    def recover_migration(self) -> Job | None:
        """At start: roll back a migration that a crash interrupted after Ollama may have been stopped (or in its
        rollback), so that the node serves again without waiting for an operator (docs/migration.md, "Crashes").
        Returns the rollback job, or None when there is nothing to recover."""
        journal = journals.load(self.config.paths.state_dir)
        if journal is None or not journal.needs_recovery:
            return None
        log.warning("rolling back an interrupted migration", id=journal.id, state=str(journal.state))
        return self.rollback()

    def prune(self) -> Job:
        """After a committed migration, delete the old store it kept (no rollback after this)."""

        def prepare(migration: Migration) -> MigrationWork:
            journal = migration.prune_journal()
            return lambda: migration.prune_source(journal)

        return self._migration_job("prune", prepare)

    def _migration_job(self, kind: str, prepare: Callable[[Migration], MigrationWork]) -> Job:
        """A migration step as a job: ``prepare`` refuses or readies it under the node's lock (the lock is given
        back if it refuses); when the job ends, the migrate feature's state is read again from the journal."""
        job = self.runner.reserve(kind, exclusive=True)
        try:
            work = prepare(Migration(self.config, self.controller, job.control))
        except BaseException:
            self.runner.abandon(job)
            raise

        def outcome(_control: JobControl) -> Outcome:
            result = work()
            return Outcome(str(result["message"]), result)

        return self.runner.start(job, outcome, lambda _job: self.refresh_migration())

    def record_smoke(self, run: SmokeRun) -> None:
        self.last_smoke = run.summary()
        state = FeatureState.OK if run.ok else FeatureState.PROBLEMS
        self._set_feature("smoke", Feature(state, f"last run {iso(run.time)}: {run.describe()}"))
        for m in run.models:
            if not m.ok:
                log.warning("smoke test failed", model=m.name or m.model, failure=m.failure, reason=m.reason)
            elif m.regression:
                log.warning(
                    "first-token latency regression",
                    model=m.name,
                    first_token_sec=m.first_token_sec,
                    median7_sec=m.baseline_sec,
                )
        log.info("smoke run finished", summary=run.describe())
        self.notify("last_smoke")

    def uptime_sec(self) -> float:
        return time.monotonic() - self.started_monotonic

    def status(self) -> Status:
        return Status(
            version=__version__,
            node=self.config.node_name,
            state=self.state,
            state_message=self.state_message,
            config_path=str(self.config_path),
            start_time=self.start_time,
            uptime_sec=self.uptime_sec(),
            features={name: feature.state for name, feature in self.features.items()},
            feature_details={name: feature.detail for name, feature in self.features.items()},
            timers={name: t.next_run for name, t in self.timers.items() if t.next_run is not None},
            paths=dict(self.paths),
            jobs=dict(self.jobs),
            last_audit=dict(self.last_audit),
            last_validation=dict(self.last_validation),
            last_smoke=dict(self.last_smoke),
        )


def stamp_path(config: Config, timer: str) -> Path:
    """Where a calendar timer's last run is kept (written when it fires), for the catch-up after downtime."""
    return config.paths.state_dir / f"{timer}.last"


def build_timers(config: Config) -> dict[str, Timer]:
    """The timers the config asks for; disabled features have none."""
    timers: dict[str, Timer] = {}
    if config.telemetry.enabled:
        timers["telemetry"] = Timer("telemetry", Interval(config.telemetry.interval_sec))
    if config.audit.enabled:
        timers["audit"] = _calendar_timer(config, "audit", config.audit.schedule, config.audit.randomized_delay_sec)
    if config.smoke.enabled:
        timers["smoke"] = _calendar_timer(config, "smoke", config.smoke.schedule, config.smoke.randomized_delay_sec)
    return timers


def _calendar_timer(config: Config, name: str, schedule: str, delay_sec: int) -> Timer:
    """A calendar timer that knows its last run (its stamp), so a run missed while hxd was down is caught up."""
    return Timer(name, Calendar.parse(schedule), delay_sec, last_run=read_stamp(stamp_path(config, name)))
