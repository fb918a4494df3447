"""Running, resuming, rolling back and pruning a migration. Blocking: the daemon runs these in a worker thread.

Phases and journal states:
1. ``copying``: blobs, then manifests, into bulk storage while Ollama keeps serving from the source;
2. ``verified``: every manifest's blobs present with the manifest's size, every copied blob hashed to its name;
3. ``stopped``: Ollama's unit stopped; what changed since phase 1 is copied and verified;
4. ``switching``: canonical symlinks, the legacy path, OLLAMA_MODELS (each step journaled before it is taken);
5. ``started``: the unit started again; then the post-check (the same models with the same digests in
   /api/tags), ``committed`` if it holds, an automatic rollback if it does not.
Every step is idempotent, so ``resume`` simply runs the remaining ones again after a crash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from hxd.core.atomic import replace_file
from hxd.core.config import Config
from hxd.core.envfile_writer import set_variable
from hxd.core.errors import Cancelled, Failed, Refused
from hxd.core.jobs import JobControl
from hxd.core.migrate import journal as journals
from hxd.core.migrate.copy import Ownership, copy_blob, copy_manifest, ensure_dir, link_blob
from hxd.core.migrate.journal import AFTER_STOP, Journal, Phase
from hxd.core.migrate.plan import STAGING, Plan, make_plan, targets
from hxd.core.migrate.switch import change, point, undo
from hxd.core.modelref import parse_ref
from hxd.core.ollama_api import OllamaUnavailable, list_models
from hxd.core.ollama_env import env_api_url
from hxd.core.schedule import iso
from hxd.core.service import ServiceController
from hxd.core.store import Store, StoreError, sha256_file

log = structlog.get_logger("hxd.migrate")

_WORKERS = 2  # blob copies in parallel: hashing releases the GIL, and these machines have two cores
_POST_CHECK_TIMEOUT_SEC = 120.0


@dataclass(frozen=True)
class Prepared:
    """A migration ready to run: its journal (written), its one plan, and when the job began (for the timings)."""

    journal: Journal
    plan: Plan
    started: float


@dataclass
class Migration:
    """One node's migration state directory and the means to act: config, service controller, job control."""

    config: Config
    controller: ServiceController
    control: JobControl

    @property
    def state_dir(self) -> Path:
        return self.config.paths.state_dir

    # --- plan and run ---------------------------------------------------------------------------------------

    def plan(self, overrides: dict[str, str]) -> Plan:
        current = journals.load(self.state_dir)
        if current is not None and current.interrupted:
            return make_plan(self.config, current.targets, resuming=True)
        return make_plan(self.config, targets(self.config, overrides))

    def prepare(self, overrides: dict[str, str], *, resume: bool) -> Prepared:
        """Refuse early (Refused), before the job starts: the journal to work on (a new one is written) and its
        plan, made once. Call it holding the node's lock, and hand the result to ``run``."""
        journal, plan = self._journal(overrides, resume)
        return Prepared(journal, plan, time.monotonic())

    def run(self, prepared: Prepared) -> dict[str, Any]:
        journal, plan = prepared.journal, prepared.plan
        owner = _ownership(self.config, plan)
        try:
            return self._run(journal, plan, owner, prepared.started)
        except OSError as exc:
            where = exc.filename or journal.targets.bulk
            raise Failed(
                f"{where}: {exc.strerror}; migration {journal.id} stopped in phase {journal.state} "
                "(see hxctl status): fix that, then hxctl migrate --resume or hxctl rollback"
            ) from None

    def _run(self, journal: Journal, plan: Plan, owner: Ownership, started: float) -> dict[str, Any]:
        stop_time = started  # a resumed run past the stop cannot know when Ollama went down: from the resume on
        try:
            if journal.state == Phase.COPYING:
                self._copy(journal, plan, owner)
                self._verify(journal)
                journal.state = Phase.VERIFIED
                journal.save(self.state_dir)
            if journal.state == Phase.VERIFIED:
                self.control.point_of_no_return()  # from the stop on, the migration ends committed or rolled back
                self.control.update(phase="stop", message=f"stopping {journal.unit}")
                stop_time = time.monotonic()
                if journal.service_was_active:
                    self.controller.stop(journal.unit)
                journal.state = Phase.STOPPED
                journal.save(self.state_dir)
        except (Failed, Cancelled) as exc:
            if journal.state in (Phase.COPYING, Phase.VERIFIED):  # nothing switched: the source serves as before
                log.warning("migration stopped before the switch", error=str(exc))
            raise
        self.control.point_of_no_return()  # a resumed run past the stop, too
        if journal.state == Phase.STOPPED:
            self._catch_up(journal, owner)
            journal.state = Phase.SWITCHING
            journal.save(self.state_dir)
        if journal.state == Phase.SWITCHING:
            self._switch(journal, owner)
            if journal.service_was_active:
                self.control.update(phase="start", message=f"starting {journal.unit}")
                self.controller.start(journal.unit)
            journal.state = Phase.STARTED
            journal.save(self.state_dir)
        problem = self._post_check(journal)
        downtime = time.monotonic() - stop_time  # from the stop until the post-check got its answer
        if problem:
            self._undo(journal)
            journal.finish(self.state_dir, Phase.ROLLED_BACK, f"post-check failed, rolled back: {problem}")
            raise Failed(f"post-check failed, so the migration was rolled back: {problem}")
        shutil.rmtree(journal.targets.bulk / STAGING, ignore_errors=True)
        journal.finish(self.state_dir, Phase.COMMITTED, "committed")
        message = (
            f"committed: {len(journal.verified)} blobs and {len(journal.manifests)} manifests in "
            f"{journal.targets.bulk}; {journal.unit} was down {downtime:.2f} s"
        )
        return {
            "changed": True,
            "message": message,
            "id": journal.id,
            "blobs": len(journal.verified),
            "manifests": len(journal.manifests),
            "bytes": sum(journal.verified.values()),
            "same_filesystem": journal.same_fs,
            "seconds": round(time.monotonic() - started, 3),
            "service_down_seconds": round(downtime, 3),
            "canonical": str(journal.targets.canonical),
            "backups": sorted(journal.backups.values()),
        }

    def _journal(self, overrides: dict[str, str], resume: bool) -> tuple[Journal, Plan]:
        current = journals.load(self.state_dir)
        if resume:
            if current is None or not current.interrupted:
                raise Refused("there is no interrupted migration to resume")
            log.info("resuming migration", id=current.id, state=current.state)
            return current, make_plan(self.config, current.targets, resuming=True)
        if current is not None and current.interrupted:
            raise Refused(
                f"migration {current.id} was interrupted ({current.state}): run hxctl migrate --resume, "
                "or hxctl rollback"
            )
        plan = make_plan(self.config, targets(self.config, overrides))
        if current is not None:
            journals.archive(self.state_dir, current)
        t = plan.targets
        journal = Journal(
            id=journals.new_id(),
            state=Phase.COPYING,
            targets=dataclasses.replace(t, source=Path(os.path.realpath(t.source))),
            unit=self.config.ollama.unit,
            same_fs=plan.same_fs,
            started=iso(datetime.now(UTC)),
            service_was_active=self.controller.is_active(self.config.ollama.unit),
        )
        journal.tags_before, journal.tags_from = self._tags_before(journal)
        journal.env_backup = self._backup_env(journal)
        journal.save(self.state_dir)
        return journal, plan

    def _tags_before(self, journal: Journal) -> tuple[dict[str, str], str]:
        """What the post-check expects, and from where: the server's list if it answers, else the source store's."""
        if journal.service_was_active:
            try:
                return list_models(env_api_url(self.config, journal.targets.env_file)), "server"
            except OllamaUnavailable as exc:
                log.warning("Ollama does not list its models; the post-check will compare stores", error=str(exc))
        return _store_tags(Store(journal.targets.source)), "store"

    def _backup_env(self, journal: Journal) -> str:
        env = journal.targets.env_file
        backup = self.state_dir / f"migration-{journal.id}-{env.name}"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        replace_file(backup, env.read_bytes(), like=env.stat())
        return str(backup)

    # --- phases 1 and 2 -------------------------------------------------------------------------------------------

    def _copy(self, journal: Journal, plan: Plan, owner: Ownership) -> None:
        bulk = journal.targets.bulk
        for directory in (bulk / "blobs", bulk / "manifests", bulk / STAGING):
            ensure_dir(directory, owner)
        todo = {name: size for name, size in plan.blobs.items() if name not in journal.verified}
        self.control.update(
            phase="copy",
            bytes_total=sum(plan.blobs.values()),
            items_total=len(plan.blobs),
            bytes_done=sum(journal.verified.values()),
            items_done=len(journal.verified),
            message=f"{len(todo)} blobs to {'link' if journal.same_fs else 'copy'}",
        )
        self._put_blobs(journal, owner, todo, plan.present)
        self.control.check()
        self.control.update(phase="manifests", message=f"{len(plan.manifests)} manifests")
        self._put_manifests(journal, owner, plan.manifests)

    def _put_blobs(self, journal: Journal, owner: Ownership, todo: dict[str, int], present: dict[str, int]) -> None:
        source, bulk = journal.targets.source / "blobs", journal.targets.bulk
        lock = threading.Lock()

        def one(name: str) -> None:
            if self.control.cancelled:
                return
            target = bulk / "blobs" / name
            if journal.same_fs:
                link_blob(source / name, bulk / "blobs", name, owner)
                self.control.advance(bytes_done=todo[name])
            elif name in present and sha256_file(target) == name.removeprefix("sha256-"):
                self.control.advance(bytes_done=todo[name])  # left complete by an interrupted run
            else:
                copy_blob(source / name, bulk / STAGING, bulk / "blobs", name, owner, self.control)
                if self.control.cancelled:
                    return
            with lock:
                journal.verified[name] = todo[name]
                journal.save(self.state_dir)
            self.control.advance(items_done=1)

        _parallel(one, sorted(todo, key=lambda n: -todo[n]))

    def _put_manifests(self, journal: Journal, owner: Ownership, manifests: list[str]) -> None:
        source, bulk = journal.targets.source / "manifests", journal.targets.bulk
        for relative in manifests:
            journal.manifests[relative] = copy_manifest(
                source / relative, bulk / STAGING, bulk / "manifests" / relative, owner
            )
        journal.save(self.state_dir)

    def _verify(self, journal: Journal) -> None:
        """Every manifest in bulk storage has all its blobs, with the manifest's sizes (their hashes were checked)."""
        self.control.update(phase="verify", message="checking that every model is complete")
        store = Store(journal.targets.bulk)
        for path in store.manifest_files():
            try:
                manifest = store.read_manifest(path)
            except StoreError as exc:
                raise Failed(f"verify: {exc}") from None
            for layer in manifest.layers:
                if journal.verified.get(layer.blob_name) != layer.size:
                    raise Failed(
                        f"verify: {manifest.name} needs {layer.blob_name} ({layer.size} bytes), which was "
                        "not copied and verified; nothing was switched"
                    )

    # --- phases 3 and 4 -------------------------------------------------------------------------------------------

    def _catch_up(self, journal: Journal, owner: Ownership) -> None:
        """With Ollama stopped, bring over what changed while it served: new blobs, new or changed manifests."""
        self.control.update(phase="catch-up", message="copying what changed while Ollama served")
        plan = make_plan(self.config, journal.targets, resuming=True)
        todo = {name: size for name, size in plan.blobs.items() if name not in journal.verified}
        self._put_blobs(journal, owner, todo, plan.present)
        source = Store(journal.targets.source)
        changed = [m for m in plan.manifests if journal.manifests.get(m) != sha256_file(source.manifests_dir / m)]
        self._put_manifests(journal, owner, changed)
        for gone in sorted(set(journal.manifests) - set(plan.manifests)):
            (journal.targets.bulk / "manifests" / gone).unlink(missing_ok=True)
            del journal.manifests[gone]
        journal.save(self.state_dir)
        self._verify(journal)

    def _switch(self, journal: Journal, owner: Ownership) -> None:
        """Each step is written to the journal (with how it will be undone) before it is taken."""
        self.control.update(phase="switch", message="switching to the canonical layout")
        canonical, bulk, legacy = journal.targets.canonical, journal.targets.bulk, journal.targets.legacy
        if not canonical.exists():
            self._record(journal, "canonical", "created-dir")
            ensure_dir(canonical, owner)
        for part in ("blobs", "manifests"):
            link, backup = canonical / part, canonical / f".hxd-backup-{journal.id}-{part}"
            self._record(journal, f"canonical-{part}", change(link, bulk / part), backup)
            point(link, bulk / part, backup)
        if legacy != canonical:
            backup = legacy.with_name(f"{legacy.name}.hxd-backup-{journal.id}")
            self._record(journal, "legacy", change(legacy, canonical), backup)
            point(legacy, canonical, backup)
        self._record(journal, "env", "set")
        set_variable(journal.targets.env_file, "OLLAMA_MODELS", str(canonical))

    def _record(self, journal: Journal, step: str, how: str, backup: Path | None = None) -> None:
        """Journal a switch step and how to undo it, durably, before it is taken (once: a resume repeats steps)."""
        if any(done[0] == step for done in journal.switched):
            return
        journal.switched.append([step, how])
        if backup is not None:
            journal.backups[step] = str(backup)
        journal.save(self.state_dir)

    # --- phase 5 ----------------------------------------------------------------------------------------------

    def _post_check(self, journal: Journal) -> str:
        """'' when the new layout serves the same models with the same digests, else what differs."""
        self.control.update(phase="post-check", message="comparing the served models with the list from before")
        expected = journal.tags_before
        if journal.tags_from == "store":
            actual = _store_tags(Store(journal.targets.canonical))
        else:
            deadline = time.monotonic() + _POST_CHECK_TIMEOUT_SEC
            while True:
                try:
                    actual = list_models(env_api_url(self.config, journal.targets.env_file))
                    break
                except OllamaUnavailable as exc:
                    if time.monotonic() > deadline:
                        return f"Ollama did not answer within {_POST_CHECK_TIMEOUT_SEC:.0f} s ({exc})"
                    time.sleep(0.2)
        if actual == expected:
            return ""
        missing = sorted(set(expected) - set(actual))
        changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
        return f"missing {missing or 'none'}, changed digests {changed or 'none'}"

    # --- rollback and prune -----------------------------------------------------------------------------------

    def rollback_journal(self) -> Journal:
        """The migration a rollback would undo; Refused when there is none. Call it holding the node's lock."""
        journal = journals.load(self.state_dir)
        if journal is None or journal.state in (Phase.ROLLED_BACK, Phase.PRUNED):
            raise Refused(
                "there is no migration to roll back"
                if journal is None
                else f"migration {journal.id} is {journal.state}: nothing to roll back"
            )
        return journal

    def rollback(self, journal: Journal) -> dict[str, Any]:
        self.control.update(phase="rollback", message=f"rolling back migration {journal.id}")
        self._undo(journal)
        self._remove_copies(journal)
        journal.finish(self.state_dir, Phase.ROLLED_BACK, "rolled back")
        undone = [step for step, _ in reversed(journal.switched)]
        return {"message": f"rolled back migration {journal.id}", "id": journal.id, "undone": undone}

    def _undo(self, journal: Journal) -> None:
        stopped = journal.state in AFTER_STOP
        if journal.switched and journal.service_was_active:
            self.controller.stop(journal.unit)
        for step, how in reversed(journal.switched):
            if step == "env":
                env = journal.targets.env_file
                replace_file(env, Path(journal.env_backup).read_bytes(), like=env.stat())
            elif step == "canonical":
                _remove_if_empty(journal.targets.canonical)
            else:
                link = journal.targets.legacy if step == "legacy" else journal.targets.canonical / step.split("-", 1)[1]
                undo(link, Path(journal.backups[step]), how)
        if stopped and journal.service_was_active:
            self.controller.start(journal.unit)

    def _remove_copies(self, journal: Journal) -> None:
        """Take back what the migration put in bulk storage (the names the journal lists, nothing else), so the
        store is where it was and a later migration starts clean. Models pulled into bulk storage after the
        migration are not in the journal and stay, and a new migration refuses until someone decides about them."""
        bulk = journal.targets.bulk
        for name in journal.verified:
            (bulk / "blobs" / name).unlink(missing_ok=True)
        for relative in journal.manifests:
            (bulk / "manifests" / relative).unlink(missing_ok=True)
        shutil.rmtree(bulk / STAGING, ignore_errors=True)
        for directory in sorted((bulk / "manifests").glob("**/"), key=lambda d: -len(d.parts)):
            _remove_if_empty(directory)
        _remove_if_empty(bulk / "blobs")

    def prune_journal(self) -> Journal:
        """The committed migration whose old store a prune would delete; Refused when there is none."""
        journal = journals.load(self.state_dir)
        if journal is None or journal.state != Phase.COMMITTED:
            raise Refused("--prune-source needs a committed migration (see hxctl status); nothing was deleted")
        return journal

    def prune_source(self, journal: Journal) -> dict[str, Any]:
        """After a committed migration: delete the old store (the backups the switch kept). Rollback ends here."""
        self.control.update(phase="prune", message="deleting the old store")
        removed = [path for path in journal.backups.values() if os.path.lexists(path)]
        if journal.targets.source not in (journal.targets.legacy, journal.targets.canonical) and os.path.isdir(
            journal.targets.source
        ):
            removed.append(str(journal.targets.source))
        for path in removed:
            if os.path.islink(path):
                os.unlink(path)
            else:
                shutil.rmtree(path)
        journal.finish(self.state_dir, Phase.PRUNED, f"pruned {len(removed)} paths")
        return {"message": f"removed the old store: {', '.join(removed)}", "id": journal.id, "removed": removed}


def interrupted(state_dir: Path) -> str:
    """'' or a line for Status(): an interrupted migration and what to run."""
    try:
        journal = journals.load(state_dir)
    except Failed as exc:
        return str(exc)
    if journal is None or not journal.interrupted:
        return ""
    return f"migration {journal.id} interrupted ({journal.state}): run `hxctl migrate --resume` or `hxctl rollback`"


def _ownership(config: Config, plan: Plan) -> Ownership:
    _, _, uid, gid = plan.owner
    return Ownership(uid, gid, config.audit.file_mode, config.audit.dir_mode)


def _store_tags(store: Store) -> dict[str, str]:
    tags: dict[str, str] = {}
    for path in store.manifest_files():
        try:
            manifest = store.read_manifest(path)
        except StoreError:
            continue
        tags[parse_ref(manifest.name, stored=True).key] = manifest.digest
    return tags


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):
        directory.rmdir()


def _parallel(work: Callable[[str], None], items: list[str]) -> None:
    """Run ``work`` on every item with a few threads; the first exception is raised once all have stopped."""
    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="hxd-migrate") as pool:
        futures = [pool.submit(work, item) for item in items]
    for future in futures:
        future.result()
