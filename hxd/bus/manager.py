"""``org.hxinfra.hxd1.Manager`` at ``/org/hxinfra/hxd1``: hxd's state as properties, actions as methods.

Status() returns every fact in one call (one round trip for hxctl and scripts); the same facts are read-only
properties, and a change to any of them is sent as PropertiesChanged so clients can watch instead of poll.
"""

import asyncio
from typing import Annotated, Any, TypeVar

from dbus_fast import PropertyAccess, Variant
from dbus_fast.annotations import DBusDict, DBusObjectPath, DBusSignature, DBusStr, DBusUnixFd
from dbus_fast.service import dbus_property

from hxd.bus import names
from hxd.bus.auth import Authority
from hxd.bus.connection import current_message
from hxd.bus.jobs import JobExporter, job_path, to_variants
from hxd.bus.methods import HxdInterface, method, parse_options
from hxd.bus.replies import MarshalledBody
from hxd.core.audit_report import AuditResult
from hxd.core.engine import Engine
from hxd.core.errors import InvalidArgs, InvalidConfig
from hxd.core.modelref import BadReference, parse_ref
from hxd.core.runner import Job
from hxd.core.schedule import iso
from hxd.core.telemetry.recorder import rows
from hxd.core.validate import Options, Report

T = TypeVar("T")

StrMap = Annotated[dict[str, str], DBusSignature("a{ss}")]
# (file, loads, findings); a finding is (code, severity, line, key, message, hint).
ValidateReply = Annotated[tuple[str, bool, list[tuple[str, str, int, str, str, str]]], DBusSignature("sba(ssusss)")]
VALIDATE_OPTIONS = {"strict": "b", "store": "b", "deep": "b", "server": "b"}
# (findings, changes): a finding is (code, severity, path, message, hint), a change (path, what, from, to).
AuditReply = Annotated[
    tuple[list[tuple[str, str, str, str, str]], list[tuple[str, str, str, str]]], DBusSignature("a(sssss)a(ssss)")
]
Rows = Annotated[list[dict[str, Variant]], DBusSignature("aa{sv}")]
# Per-call overrides of the configured paths (hxd.toml [paths]) for PlanMigration and Migrate.
MIGRATE_PATHS = {"source": "s", "canonical": "s", "bulk": "s", "legacy": "s", "env_file": "s"}

# Status() keys that are not strings -> their D-Bus signature.
_STATUS_SIGNATURES = {
    "features": "a{ss}",
    "feature_details": "a{ss}",
    "timers": "a{ss}",
    "paths": "a{ss}",
    "jobs": "a{ss}",
    "last_audit": "a{sv}",
    "uptime_sec": "d",
}
# Engine fact -> property name.
_PROPERTIES = {
    "version": "Version",
    "node": "Node",
    "config_path": "ConfigPath",
    "state": "State",
    "state_message": "StateMessage",
    "start_time": "StartTime",
    "features": "Features",
    "feature_details": "FeatureDetails",
    "timers": "Timers",
    "paths": "Paths",
    "jobs": "Jobs",
    "last_audit": "LastAudit",
    "telemetry": "LastTelemetry",
    "last_smoke": "LastSmoke",
}


class Manager(HxdInterface):
    """The daemon's main object."""

    default_action = names.ACTION_RELOAD

    def __init__(self, engine: Engine, authority: Authority, jobs: JobExporter) -> None:
        super().__init__(names.MANAGER_INTERFACE, authority)
        self.engine = engine
        self.jobs = jobs
        # Status() is the hot path: its reply is marshalled once per change of the facts, not once per call.
        self._status_body: MarshalledBody | None = None
        engine.observers.append(self._facts_changed)

    def _facts_changed(self, facts: frozenset[str]) -> None:
        self._status_body = None
        names_ = [_PROPERTIES[f] for f in facts if f in _PROPERTIES]
        self.emit_properties_changed({name: getattr(self, name) for name in names_})

    def _values(self) -> dict[str, Any]:
        status = self.engine.status()
        return {
            "version": status.version,
            "node": status.node,
            "config_path": status.config_path,
            "state": status.state,
            "state_message": status.state_message,
            "start_time": iso(status.start_time),
            "features": {name: str(state) for name, state in status.features.items()},
            "feature_details": status.feature_details,
            "timers": {name: iso(when) for name, when in status.timers.items()},
            "paths": status.paths,
            "jobs": {path: job.text for path, job in status.jobs.items()},
            "last_audit": {k: Variant("s" if isinstance(v, str) else "t", v) for k, v in status.last_audit.items()},
            "uptime_sec": status.uptime_sec,
        }

    @method(public=True)
    def Status(self) -> DBusDict:
        """Every fact in one reply: version, node, state, uptime_sec, config_path, features, timers, paths, ...

        Returns the reply's wire bytes with the current uptime patched in (hxd.bus.replies), typed as the dict
        they encode."""
        if self._status_body is None:
            values = {key: Variant(_STATUS_SIGNATURES.get(key, "s"), value) for key, value in self._values().items()}
            self._status_body = MarshalledBody(values, last_key="uptime_sec")
        return self._status_body.with_last(self.engine.uptime_sec())  # type: ignore[return-value]

    @method()
    async def Reload(self) -> None:
        """Re-read the config file; a broken file keeps the old config and fails with InvalidConfig."""
        await self.reload()

    async def reload(self) -> None:
        """Read the config in a thread (it stats every configured path, which a hung mount can stall), then switch
        to it on the event loop; SIGHUP calls this too."""
        try:
            loaded = await asyncio.to_thread(self.engine.load)
        except InvalidConfig as exc:
            self.engine.reload_failed(exc)
            raise
        self.engine.apply(loaded)

    @method(action=names.ACTION_VALIDATE)
    async def Validate(self, options: DBusDict) -> ValidateReply:
        """Validate the configured env file; options strict, store, deep, server (all b)."""
        values = Options(**parse_options(options, VALIDATE_OPTIONS))
        return self._reply(await asyncio.to_thread(self.engine.validate, values))

    @method(action=names.ACTION_VALIDATE)
    async def ValidateFile(self, file: DBusUnixFd, options: DBusDict) -> ValidateReply:
        """Validate the file the caller opened and passed (so hxd reads nothing the caller could not); options as
        Validate, plus name (s) to show in the report. The descriptor is the call's: HxdBus closes it when the
        call ends."""
        if file not in current_message.get().unix_fds:
            # dbus-fast passes the raw index when no descriptor came with the message: never read hxd's own fds.
            raise InvalidArgs("the file must come as an attached file descriptor (type h), not a number")
        values = parse_options(options, {**VALIDATE_OPTIONS, "name": "s"})
        name = values.pop("name", "")
        return self._reply(await asyncio.to_thread(self.engine.validate, Options(**values), file, name))

    def _reply(self, report: Report) -> tuple[str, bool, list[tuple[str, str, int, str, str, str]]]:
        self.engine.record_validation(report)
        findings = [(f.code, str(f.severity), f.line, f.key, f.message, f.hint) for f in report.findings]
        return report.file, report.loads, findings

    @method(action=names.ACTION_MIGRATE)
    async def PlanMigration(self, options: DBusDict) -> DBusDict:
        """What Migrate would do, and every reason it would refuse (Error.Refused); writes nothing."""
        overrides = parse_options(options, MIGRATE_PATHS)
        plan = await asyncio.to_thread(self.engine.plan_migration, overrides)
        return to_variants(plan)

    @method(action=names.ACTION_MIGRATE)
    async def Migrate(self, options: DBusDict) -> DBusObjectPath:
        """Start the migration (or, with resume b, finish an interrupted one) as a job; returns its path. A
        refusal (the plan's, or an interrupted migration) is Error.Refused, before any job exists."""
        values = parse_options(options, {**MIGRATE_PATHS, "resume": "b"})
        resume = bool(values.pop("resume", False))
        return job_path(await asyncio.to_thread(self.engine.migrate, values, resume=resume))

    @method(action=names.ACTION_MIGRATE)
    async def Rollback(self, options: DBusDict) -> DBusObjectPath:
        """Undo the last migration (interrupted or committed, until its source is pruned) as a job."""
        parse_options(options, {})
        return job_path(await asyncio.to_thread(self.engine.rollback))

    @method(action=names.ACTION_MIGRATE)
    async def PruneSource(self, options: DBusDict) -> DBusObjectPath:
        """After a committed migration, delete the old store it kept as a backup, as a job. No rollback after."""
        parse_options(options, {})
        return job_path(await asyncio.to_thread(self.engine.prune))

    @method(action=names.ACTION_AUDIT)
    async def Audit(self, options: DBusDict) -> AuditReply:
        """Audit ownership and permissions (as a job, for progress) and answer with the findings; with fix b, also
        repair what is safe, which needs org.hxinfra.hxd1.audit-fix as well."""
        fix = bool(parse_options(options, {"fix": "b"}).get("fix", False))
        if fix:
            await self.authority.check(current_message.get(), names.ACTION_AUDIT_FIX)
        job = await self.jobs.outcome(await asyncio.to_thread(self.engine.audit, fix))
        result = job_value(job, AuditResult)
        findings = [(f.code, str(f.severity), f.path, f.message, f.hint) for f in result.report.findings]
        return findings, [(c.path, c.what, c.before, c.after) for c in result.changes]

    @method(public=True)
    async def SampleTelemetry(self) -> Rows:
        """Sample the GPUs now (not written to the CSV log): one dict per GPU, nvidia-smi's field names as keys and
        its formatted values as strings, plus state (ok, or lost: reason). Fails with Failed when NVML is not
        available or does not answer within 10 s (the message says why). Concurrent callers share one sample."""
        sample = await self.engine.telemetry.read()
        self.engine.record_telemetry()
        return [{k: Variant("s", v) for k, v in row.items()} for row in rows(sample)]

    @method(action=names.ACTION_SMOKE)
    async def RunSmoke(self, options: DBusDict) -> DBusObjectPath:
        """Run the smoke tests now, as a job; option models (as) replaces the configured models. The job's Result
        has runs (s): the run as JSON, as `hxctl smoke --json` prints it."""
        try:
            models = [parse_ref(n) for n in parse_options(options, {"models": "as"}).get("models", [])]
        except BadReference as exc:
            raise InvalidArgs(f"option models: {exc}") from None
        return job_path(await asyncio.to_thread(self.engine.smoke, models or None))

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> DBusStr:
        return str(self._values()["version"])

    @dbus_property(access=PropertyAccess.READ)
    def Node(self) -> DBusStr:
        return str(self._values()["node"])

    @dbus_property(access=PropertyAccess.READ)
    def ConfigPath(self) -> DBusStr:
        return str(self._values()["config_path"])

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return str(self._values()["state"])

    @dbus_property(access=PropertyAccess.READ)
    def StateMessage(self) -> DBusStr:
        return str(self._values()["state_message"])

    @dbus_property(access=PropertyAccess.READ)
    def StartTime(self) -> DBusStr:
        return str(self._values()["start_time"])

    @dbus_property(access=PropertyAccess.READ)
    def Features(self) -> StrMap:
        return dict(self._values()["features"])

    @dbus_property(access=PropertyAccess.READ)
    def FeatureDetails(self) -> StrMap:
        return dict(self._values()["feature_details"])

    @dbus_property(access=PropertyAccess.READ)
    def Timers(self) -> StrMap:
        return dict(self._values()["timers"])

    @dbus_property(access=PropertyAccess.READ)
    def Paths(self) -> StrMap:
        return dict(self._values()["paths"])

    @dbus_property(access=PropertyAccess.READ)
    def Jobs(self) -> StrMap:
        return dict(self._values()["jobs"])

    @dbus_property(access=PropertyAccess.READ)
    def LastAudit(self) -> DBusDict:
        return dict(self._values()["last_audit"])

    @dbus_property(access=PropertyAccess.READ)
    def LastTelemetry(self) -> Rows:
        last = self.engine.telemetry.last
        return [] if last is None else [{k: Variant("s", v) for k, v in row.items()} for row in rows(last)]

    @dbus_property(access=PropertyAccess.READ)
    def LastSmoke(self) -> DBusDict:
        return to_variants(self.engine.last_smoke)


def job_value(job: Job, kind: type[T]) -> T:
    """The typed value a completed job returned; the job's own error (Cancelled, Failed, ...) when it did not
    complete, so the caller gets the same error name it would have got from the work itself."""
    if job.error is not None:
        raise job.error
    assert job.outcome is not None and isinstance(job.outcome.value, kind)
    return job.outcome.value
