"""Running, resuming, rolling back and pruning a migration. Blocking: the daemon runs these in a worker thread.

Phases and journal states:
1. ``copying``: blobs, then manifests, into bulk storage while Ollama keeps serving from the source;
2. ``verified``: every manifest's blobs present with the manifest's size, every blob hashed to its name (linked
   ones too);
3. ``stopping``, journaled before systemd is asked, then ``stopped``: Ollama's unit is down; what changed since
   phase 1 is copied and verified;
4. ``switching``: canonical symlinks, the legacy path, OLLAMA_MODELS (each step journaled before it is taken);
5. ``started``: the unit started again; then the post-check (the same models with the same digests in
   /api/tags), ``committed`` if it holds.
Every step is idempotent, so ``resume`` simply runs the remaining ones again after a crash. From ``stopping`` on,
any failure rolls the migration back, which starts Ollama again: it is never left down.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from hxd.core.atomic import remove_temps, replace_file
from hxd.core.config import Config
from hxd.core.envfile_writer import set_variable
from hxd.core.errors import Failed, HxdError, Refused
from hxd.core.jobs import JobControl
from hxd.core.migrate import journal as journals
from hxd.core.migrate.copy import Ownership, blob_in_place, copy_manifest, manifest_digest, place_blob, remove_tree
from hxd.core.migrate.journal import Journal, Phase
from hxd.core.migrate.plan import STAGING, Plan, Targets, changed_under, make_plan, targets
from hxd.core.migrate.switch import change, point, undo
from hxd.core.migrate.trees import Trees, enter_or_create, remove_beneath, sub_or_none
from hxd.core.modelref import parse_ref
from hxd.core.ollama_api import OllamaUnavailable, list_models
from hxd.core.ollama_env import env_api_url
from hxd.core.safefs import Dir, Unsafe
from hxd.core.schedule import iso
from hxd.core.service import ServiceController
from hxd.core.store import Store, StoreError

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
    workers: int = _WORKERS  # 1 makes the order of system calls repeatable (the kill-at-every-call test)

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
        try:
            journal, plan = self._journal(overrides, resume)
        except OSError as exc:
            raise changed_under(exc, self.config.paths.legacy) from None
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
        if journal.state == Phase.COPYING:
            with Trees.open(journal.targets, owner) as trees:
                self._copy(journal, plan, owner, trees)
            self._verify(journal)
            journal.state = Phase.VERIFIED
            journal.save(self.state_dir)
        self.control.point_of_no_return()  # from the stop on, the migration ends committed or rolled back
        try:
            if journal.state == Phase.VERIFIED:
                journal.state = Phase.STOPPING  # written ahead: from here on Ollama may be down
                journal.save(self.state_dir)
            if journal.state == Phase.STOPPING:
                self.control.update(phase="stop", message=f"stopping {journal.unit}")
                stop_time = time.monotonic()
                if journal.service_was_active:
                    self.controller.stop(journal.unit)
                journal.state = Phase.STOPPED
                journal.save(self.state_dir)
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
            problem = problem and f"post-check: {problem}"
        except Exception as exc:  # any failure past the stop: roll back, so that Ollama is started again
            if not isinstance(exc, HxdError | OSError):
                log.exception("migration failed after the stop")
            problem = _reason(exc)
        downtime = time.monotonic() - stop_time  # from the stop until the post-check got its answer
        if problem:
            self.rollback(journal, why=f"failed after {journal.unit} was stopped ({problem})")
            raise Failed(
                f"the migration failed after the stop, so it was rolled back and {journal.unit} "
                f"started again: {problem}"
            )
        journal.finish(self.state_dir, Phase.COMMITTED, "committed")
        try:  # leftovers only: the migration is committed whatever becomes of them (the next migrate retries)
            _remove_staging(journal.targets.bulk)
            _remove_temporaries(journal.targets, self.state_dir)
        except OSError as exc:
            log.warning("committed, but a temporary file could not be removed", error=_reason(exc))
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
            "backups": sorted(
                str(_step_path(journal, step)[0] / _backup_name(journal, step)) for step in journal.backups
            ),
        }

    def _journal(self, overrides: dict[str, str], resume: bool) -> tuple[Journal, Plan]:
        current = journals.load(self.state_dir)
        left = current.targets if current else targets(self.config, overrides)  # where a killed run left files
        _remove_temporaries(left, self.state_dir)
        if current is None or not current.interrupted:  # a kill after the commit may have left the staging area
            _remove_staging(left.bulk)
        if resume:
            if current is None or not current.interrupted:
                raise Refused("there is no interrupted migration to resume")
            if current.state == Phase.ROLLING_BACK:
                raise Refused(f"migration {current.id} was being rolled back: run hxctl rollback to finish that")
            log.info("resuming migration", id=current.id, state=current.state)
            return current, make_plan(self.config, current.targets, resuming=True)
        if current is not None and current.interrupted:
            raise Refused(
                f"migration {current.id} was interrupted ({current.state}): run hxctl migrate --resume, "
                "or hxctl rollback"
            )
        plan = make_plan(self.config, left if current is None else targets(self.config, overrides))
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

    def _copy(self, journal: Journal, plan: Plan, owner: Ownership, trees: Trees) -> None:
        journal.plan_names(sorted(plan.blobs), plan.manifests, self.state_dir)
        todo = {name: size for name, size in plan.blobs.items() if name not in journal.verified}
        self.control.update(
            phase="copy",
            bytes_total=sum(plan.blobs.values()),
            items_total=len(plan.blobs),
            bytes_done=sum(journal.verified.values()),
            items_done=len(journal.verified),
            message=f"{len(todo)} blobs to {'hash and link' if journal.same_fs else 'copy'}",
        )
        self._put_blobs(journal, owner, todo, trees)
        self.control.check()
        self.control.update(phase="manifests", message=f"{len(plan.manifests)} manifests")
        self._put_manifests(journal, owner, plan.manifests, trees)

    def _put_blobs(self, journal: Journal, owner: Ownership, todo: dict[str, int], trees: Trees) -> None:
        lock = threading.Lock()

        def one(name: str) -> None:
            if self.control.cancelled:
                return
            if blob_in_place(trees.blobs, name, todo[name]):
                self.control.advance(bytes_done=todo[name])  # left complete by an interrupted run
            else:
                place_blob(
                    trees.source_blobs, trees.staging, trees.blobs, name, owner, self.control, link=journal.same_fs
                )
                if self.control.cancelled:
                    return
            with lock:
                journal.verified[name] = todo[name]
                journal.save(self.state_dir)
            self.control.advance(items_done=1)

        _parallel(one, sorted(todo, key=lambda n: -todo[n]), self.workers)

    def _put_manifests(self, journal: Journal, owner: Ownership, manifests: list[str], trees: Trees) -> None:
        for relative in manifests:  # all were planned (journaled) already; a resume copies them all again
            journal.manifests[relative] = copy_manifest(
                trees.source_manifests, relative, trees.staging, trees.manifests, owner
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
        journal.plan_names(sorted(plan.blobs), plan.manifests, self.state_dir)
        with Trees.open(journal.targets, owner) as trees:
            todo = {name: size for name, size in plan.blobs.items() if name not in journal.verified}
            self._put_blobs(journal, owner, todo, trees)
            source = trees.source_manifests
            changed = [m for m in plan.manifests if journal.manifests.get(m) != manifest_digest(source, m)]
            self._put_manifests(journal, owner, changed, trees)  # only these: each copy is two fsyncs of downtime
            for gone in sorted(set(journal.manifests) - set(plan.manifests)):
                remove_beneath(trees.manifests, gone)
                del journal.manifests[gone]
        journal.save(self.state_dir)
        self._verify(journal)

    def _switch(self, journal: Journal, owner: Ownership) -> None:
        """Each step is written to the journal (with how it will be undone) before it is taken."""
        self.control.update(phase="switch", message="switching to the canonical layout")
        canonical, bulk, legacy = journal.targets.canonical, journal.targets.bulk, journal.targets.legacy
        if not os.path.lexists(canonical):
            self._record(journal, "canonical", "created-dir")
        with enter_or_create(canonical, owner) as directory:
            for part in ("blobs", "manifests"):
                backup = f".hxd-backup-{journal.id}-{part}"
                self._record(journal, f"canonical-{part}", change(directory, part, bulk / part), backup)
                point(directory, part, bulk / part, backup)
        if legacy != canonical:
            backup = f"{legacy.name}.hxd-backup-{journal.id}"
            with Dir.enter(legacy.parent) as parent:
                self._record(journal, "legacy", change(parent, legacy.name, canonical), backup)
                point(parent, legacy.name, canonical, backup)
        self._record(journal, "env", "set")
        set_variable(journal.targets.env_file, "OLLAMA_MODELS", str(canonical))

    def _record(self, journal: Journal, step: str, how: str, backup: str | None = None) -> None:
        """Journal a switch step and how to undo it, durably, before it is taken (once: a resume repeats steps).
        The backup is a name in the same directory as the step's path."""
        if any(done[0] == step for done in journal.switched):
            return
        journal.switched.append([step, how])
        if backup is not None:
            journal.backups[step] = backup
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
        """The migration a rollback would undo; Refused when there is none. Call it holding the node's lock.
        Temporary files of a migration killed before its journal existed are removed either way."""
        journal = journals.load(self.state_dir)
        _remove_temporaries(journal.targets if journal else targets(self.config, {}), self.state_dir)
        if journal is None or journal.state in (Phase.ROLLED_BACK, Phase.PRUNED):
            raise Refused(
                "there is no migration to roll back"
                if journal is None
                else f"migration {journal.id} is {journal.state}: nothing to roll back"
            )
        return journal

    def rollback(self, journal: Journal, why: str = "rolled back") -> dict[str, Any]:
        """Undo the switch (starting Ollama if it may be down), take back every name the migration created and
        its temporary files; safe to repeat after a crash at any point of a run or of an earlier rollback."""
        self.control.update(phase="rollback", message=f"rolling back migration {journal.id}")
        if journal.state != Phase.ROLLING_BACK:
            journal.rollback_from, journal.state = str(journal.state), Phase.ROLLING_BACK
            journal.save(self.state_dir)
        try:
            self._undo(journal)
            self._remove_copies(journal)
        except OSError as exc:
            raise Failed(
                f"{_reason(exc)}; the rollback of migration {journal.id} stopped there (see hxctl status): "
                "fix that, then hxctl rollback again"
            ) from None
        journal.finish(self.state_dir, Phase.ROLLED_BACK, why)
        _remove_temporaries(journal.targets, self.state_dir)
        undone = [step for step, _ in reversed(journal.switched)]
        return {"message": f"rolled back migration {journal.id}", "id": journal.id, "undone": undone}

    def _undo(self, journal: Journal) -> None:
        may_be_down = journal.stopped_ollama
        if may_be_down:
            self.controller.stop(journal.unit)  # the layout changes back under a stopped Ollama only
        for step, how in reversed(journal.switched):
            if step == "env":
                env = journal.targets.env_file
                replace_file(env.resolve(), Path(journal.env_backup).read_bytes(), like=env.stat())
                continue
            parent_path, name = _step_path(journal, step)
            try:
                parent = Dir.enter(parent_path)
            except FileNotFoundError:
                continue  # nothing of this step can be there
            with parent:
                if step == "canonical":
                    parent.rmdir(name)
                else:
                    undo(parent, name, _backup_name(journal, step), how)
        if may_be_down:
            self.controller.start(journal.unit)

    def _remove_copies(self, journal: Journal) -> None:
        """Take back what the migration put in bulk storage (the names the journal planned, nothing else), so the
        store is where it was and a later migration starts clean. Models pulled into bulk storage after the
        migration are not in the journal and stay, and a new migration refuses until someone decides about them.
        A name the owner of bulk storage turned into a symlink on the way is skipped, never followed."""
        try:
            bulk = Dir.enter(journal.targets.bulk)
        except FileNotFoundError:
            return
        with bulk:
            blobs = sub_or_none(bulk, "blobs")
            if blobs is not None:
                with blobs:
                    for name in sorted({*journal.planned_blobs, *journal.verified}):
                        blobs.unlink(name)
                    blobs.fsync()
            manifests = sub_or_none(bulk, "manifests")
            if manifests is not None:
                with manifests:
                    planned = {*journal.planned_manifests, *journal.manifests}
                    for relative in sorted(planned):
                        remove_beneath(manifests, relative)
                    parents = {str(Path(r).parents[i]) for r in planned for i in range(len(Path(r).parts) - 1)}
                    for directory in sorted(parents, key=lambda d: -d.count("/")):
                        remove_beneath(manifests, directory, is_dir=True)
            remove_tree(bulk, STAGING)
            bulk.rmdir("blobs")
            bulk.rmdir("manifests")
            bulk.fsync()

    def prune_journal(self) -> Journal:
        """The committed migration whose old store a prune would delete; Refused when there is none."""
        journal = journals.load(self.state_dir)
        if journal is None or journal.state != Phase.COMMITTED:
            raise Refused("--prune-source needs a committed migration (see hxctl status); nothing was deleted")
        return journal

    def prune_source(self, journal: Journal) -> dict[str, Any]:
        """After a committed migration: delete the old store (the backups the switch kept). Rollback ends here."""
        self.control.update(phase="prune", message="deleting the old store")
        doomed = [(*_step_path(journal, step)[:1], _backup_name(journal, step)) for step in journal.backups]
        t = journal.targets
        if t.source not in (t.legacy, t.canonical):
            doomed.append((t.source.parent, t.source.name))
        removed = []
        for parent_path, name in doomed:
            with Dir.enter(parent_path) as parent:
                if parent.lstat(name) is not None:
                    remove_tree(parent, name)
                    removed.append(str(parent_path / name))
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
    if journal.state == Phase.ROLLING_BACK:
        return f"the rollback of migration {journal.id} was interrupted: run `hxctl rollback`"
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


def _remove_staging(bulk: Path) -> None:
    """The staging area a kill after the commit left; nothing where bulk storage cannot be entered (the plan says
    why)."""
    try:
        directory = Dir.enter(bulk)
    except (FileNotFoundError, NotADirectoryError, Unsafe):
        return
    with directory:
        remove_tree(directory, STAGING)


def _remove_temporaries(t: Targets, state_dir: Path) -> None:
    """The temporary files of replace_file that a kill left beside the env file, the journal and the env file's
    backup (migrations run one at a time, under the node's lock: none of these is being written now)."""
    env = t.env_file.resolve()
    remove_temps(env.parent, f"{env.name}.")
    remove_temps(state_dir, "migration")


def _step_path(journal: Journal, step: str) -> tuple[Path, str]:
    """The directory holding a switch step's path, and the path's name there."""
    t = journal.targets
    if step == "legacy":
        return t.legacy.parent, t.legacy.name
    if step == "canonical":
        return t.canonical.parent, t.canonical.name
    return t.canonical, step.removeprefix("canonical-")


def _backup_name(journal: Journal, step: str) -> str:
    return Path(journal.backups[step]).name  # journals before 0.2 kept the whole path


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename or 'a file'}: {exc.strerror}"
    return " ".join(str(exc).split())


def _parallel(work: Callable[[str], None], items: list[str], workers: int) -> None:
    """Run ``work`` on every item with a few threads; the first exception is raised once all have stopped.
    One worker runs them in the calling thread."""
    if workers == 1:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="hxd-migrate") as pool:
        futures = [pool.submit(work, item) for item in items]
    for future in futures:
        future.result()
