"""Migration through hxd on the bus: jobs with progress, Finished, Busy, resume after an interruption, refusals.

systemd is the stand-in of hxsandbox.systemd on the private bus, starting and stopping the Ollama stub as
ollama.service; the end-to-end suite runs the same calls against the real systemd.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from busctl import call_manager, hxctl, hxctl_merged
from conftest import StartHxd, start_on_node
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from migrate_support import readable_models
from test_config import HOSTILE, hostile_value

from hxd.bus import names
from hxd.core.config import Config
from hxd.core.jobs import JobControl, JobState
from hxd.core.migrate import journal as journals
from hxd.core.migrate.runner import Migration
from hxsandbox.migrate import run_migration
from hxsandbox.samplestore import write_hostile_manifest
from hxsandbox.systemd import OllamaService
from hxsandbox.world import PrivateBus, wait_until

pytestmark = pytest.mark.usefixtures("ollama_account")


def follow(address: str, member: str, options: dict[str, Any]) -> tuple[str, JobState, list[str], list[Any]]:
    """Subscribe first, call, collect the job's PropertiesChanged and Finished until it ends."""

    async def run() -> tuple[str, JobState, list[str], list[Any]]:
        client = await MessageBus(bus_address=address).connect()
        signals: asyncio.Queue[Message] = asyncio.Queue()
        client.add_message_handler(lambda m: signals.put_nowait(m) if m.message_type == MessageType.SIGNAL else None)
        await client.call(
            Message(
                destination=names.DBUS_NAME,
                path=names.DBUS_PATH,
                interface=names.DBUS_INTERFACE,
                member="AddMatch",
                signature="s",
                body=[f"type='signal',path_namespace='{names.JOBS_PATH}'"],
            )
        )
        reply = await client.call(
            Message(
                destination=names.BUS_NAME,
                path=names.MANAGER_PATH,
                interface=names.MANAGER_INTERFACE,
                member=member,
                signature="a{sv}",
                body=[options],
            )
        )
        assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply and reply.body
        path = reply.body[0]
        phases: list[str] = []
        state = JobState(kind="")
        async with asyncio.timeout(60):
            while True:
                message = await signals.get()
                if message.path != path:
                    continue
                if message.member == "PropertiesChanged":
                    changed = {k: v.value for k, v in message.body[1].items()}
                    if "Phase" in changed:
                        phases.append(changed["Phase"])
                    state.state = changed.get("State", state.state)
                elif message.member == "Finished":
                    finished = list(message.body)
                    break
        result = await client.call(
            Message(
                destination=names.BUS_NAME,
                path=path,
                interface="org.freedesktop.DBus.Properties",
                member="Get",
                signature="ss",
                body=[names.JOB_INTERFACE, "Result"],
            )
        )
        assert result is not None
        state.result = {k: v.value for k, v in result.body[0].value.items()}
        client.disconnect()
        return path, state, phases, finished

    return asyncio.run(run())


def test_migrate_over_the_bus(bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService) -> None:
    start_on_node(start_hxd, node)
    before = readable_models(node.paths.legacy)
    plan = {k: v["data"] for k, v in call_manager(bus.address, "PlanMigration", "a{sv}", "0")[0].items()}
    assert plan["source"] == str(node.paths.legacy) and plan["same_filesystem"] is True
    path, state, phases, finished = follow(bus.address, "Migrate", {})
    assert finished[0] == "completed" and finished[1].startswith("committed: 6 blobs and 3 manifests"), finished
    assert path.startswith(names.JOBS_PATH + "/")
    assert phases[:4] == ["copy", "manifests", "verify", "stop"] and phases[-2:] == ["start", "post-check"]
    assert state.result["blobs"] == 6 and state.result["same_filesystem"] is True
    assert readable_models(node.paths.canonical) == before
    assert ollama.calls[-2:] == ["stop ollama.service", "start ollama.service"]
    status = call_manager(bus.address, "Status")[0]
    assert status["features"]["data"]["migrate"] == "ok"
    assert status["jobs"]["data"][path] == f"migrate completed: {finished[1]}"
    _, _, _, done = follow(bus.address, "Rollback", {})
    assert done[0] == "completed" and done[1].startswith("rolled back") and not node.paths.legacy.is_symlink()


def test_a_second_mutating_job_is_busy(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService
) -> None:
    hxd = start_on_node(start_hxd, node)
    ollama.stop_delay = 1.5
    first = call_manager(bus.address, "Migrate", "a{sv}", "0")[0]
    busy = call_manager(bus.address, "Rollback", "a{sv}", "0", check=False)
    number = first.rsplit("/", 1)[1]
    assert re.fullmatch(
        rf"Call failed: the node is busy: migrate job {number} of hxd \(pid {hxd.pid}\) has been running since "
        rf"\S+Z; wait for it \(hxctl jobs\) or cancel it \(hxctl cancel {number}\)",
        busy.stderr.strip(),
    ), busy.stderr

    def ended() -> bool:
        return not call_manager(bus.address, "Status")[0]["jobs"]["data"][first].startswith("migrate running")

    wait_until(ended, 30, f"the end of {first}")


def test_an_interrupted_migration_is_reported_and_resumed(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService
) -> None:
    holder: list[JobControl] = []

    def cancel_in_copy(state: JobState, changed: frozenset[str]) -> None:
        if state.phase == "copy":
            holder[0].cancel()

    control = JobControl("migrate", cancel_in_copy)
    holder.append(control)
    with pytest.raises(Exception, match="cancelled"):
        run_migration(Migration(node, ollama, control))
    start_on_node(start_hxd, node)
    reply = call_manager(bus.address, "Status")[0]
    assert reply["features"]["data"]["migrate"] == "interrupted"
    detail = reply["feature_details"]["data"]["migrate"]
    assert detail.startswith("migration ") and "interrupted (copying): run `hxctl migrate --resume`" in detail
    refused = hxctl("--bus", bus.address, "migrate")  # before any job exists: Error.Refused, exit 5
    assert refused.returncode == 5 and refused.stderr.strip().endswith(
        "was interrupted (copying): run hxctl migrate --resume, or hxctl rollback [Refused]"
    ), refused
    _, _, _, finished = follow(bus.address, "Migrate", {"resume": Variant("b", True)})
    assert finished[0] == "completed" and finished[1].startswith("committed")
    assert call_manager(bus.address, "Status")[0]["features"]["data"]["migrate"] == "ok"


def test_plan_refusals_reach_the_caller(bus: PrivateBus, start_hxd: StartHxd, node: Config) -> None:
    start_on_node(start_hxd, node)
    refused = call_manager(bus.address, "PlanMigration", "a{sv}", "1", "source", "s", "/nonexistent/store", check=False)
    assert refused.stderr.strip() == "Call failed: the source path /nonexistent/store does not exist"
    assert not os.path.lexists(node.paths.canonical)


@pytest.mark.parametrize(
    ("kind", "message"), [("million-layers", "larger than 4194304 bytes"), ("deep", "nests deeper")]
)
def test_a_hostile_manifest_is_refused_over_the_bus(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, kind: str, message: str
) -> None:
    """Issue 14: a manifest the store's owner made huge (157 MB, a million layers) or deep (100,000 levels) is
    Error.Refused naming it, for the plan and the migration alike; never Internal, and nothing is written."""
    start_on_node(start_hxd, node)
    path = write_hostile_manifest(node.paths.legacy, "evil:latest", kind)
    expected = f"Call failed: the source store has a manifest hxd cannot use: {path}: {message}"
    for member in ("PlanMigration", "Migrate"):
        refused = call_manager(bus.address, member, "a{sv}", "0", check=False)
        assert refused.returncode == 1 and refused.stderr.startswith(expected), (member, refused.stderr)
        assert refused.stderr.count("\n") == 1 and "re-pull the model if you need it" in refused.stderr
    cli = hxctl("--bus", bus.address, "migrate", "--dry-run")
    assert cli.returncode == 5 and cli.stderr.endswith("re-pull the model if you need it [Refused]\n"), cli.stderr
    assert not os.path.lexists(node.paths.canonical / "blobs") and not os.path.lexists(node.paths.bulk / "blobs")


def test_plan_refuses_hostile_paths_naming_the_option(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, tmp_path: Path
) -> None:
    """Issue 15's hostile paths, as PlanMigration's path options (and source's own): InvalidArgs naming the option,
    before anything is looked at."""
    start_on_node(start_hxd, node)
    cases = [*HOSTILE, ("source", "/", "is / itself"), ("source", "/tmp/../etc", "must not contain '..'")]
    for key, value, message in cases:
        refused = call_manager(
            bus.address, "PlanMigration", "a{sv}", "1", key, "s", hostile_value(value, tmp_path), check=False
        )
        assert refused.returncode == 1 and refused.stderr.startswith(f"Call failed: option {key}: "), refused.stderr
        assert message in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr
    cli = hxctl("--bus", bus.address, "migrate", "--dry-run", "--canonical", "/etc/default")
    assert cli.returncode == 2 and "option canonical: '/etc/default' is in /etc" in cli.stderr  # InvalidArgs
    assert not os.path.lexists(node.paths.canonical)


def test_hxctl_migrate_and_rollback(bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService) -> None:
    hxd = start_on_node(start_hxd, node)
    plan = hxctl("--bus", bus.address, "migrate", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.startswith("plan (nothing was changed)\n") and "same_filesystem" in plan.stdout
    assert not os.path.lexists(node.paths.canonical / "blobs")
    migrated = hxctl("--bus", bus.address, "migrate", "--json")
    assert migrated.returncode == 0, migrated.stderr
    result = json.loads(migrated.stdout)
    assert result["blobs"] == 6 and isinstance(result["backups"], list) and result["changed"] is True
    assert "copy" in migrated.stderr and "post-check" in migrated.stderr  # progress, one line per phase
    # Already aligned is success, as `systemctl enable` of an enabled unit: online and offline, plan and run.
    aligned = f"already aligned: {node.paths.canonical} is the canonical layout (its blobs are in {node.paths.bulk})"
    for where in (("--bus", bus.address), ("--offline", "--config", str(hxd.config))):
        for dry_run in ((), ("--dry-run",)):
            again = hxctl(*where, "migrate", *dry_run)
            assert (again.returncode, again.stderr) == (0, ""), (where, dry_run, again.stderr)
            assert again.stdout == f"{aligned}; nothing to do\n"
        as_json = json.loads(hxctl(*where, "migrate", "--json").stdout)
        assert as_json == {"changed": False, "message": f"{aligned}; nothing to do"}
    rolled = hxctl("--bus", bus.address, "rollback", "--json")
    assert rolled.returncode == 0, rolled.stderr
    assert json.loads(rolled.stdout)["undone"][0] == "env"
    assert not node.paths.legacy.is_symlink()


def test_hxctl_progress_comes_before_the_result_and_counts_only_its_phase(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService
) -> None:
    """stderr and stdout through one pipe, as in a log: every progress line before the result, and a phase shows a
    counter only while it counts (copy: blobs), not the count of a phase done before it."""
    start_on_node(start_hxd, node)
    merged = hxctl_merged("--bus", bus.address, "migrate")
    assert merged.returncode == 0, merged.stdout
    lines = merged.stdout.splitlines()
    result = lines.index(next(line for line in lines if line.startswith("  message ")))
    assert lines[result - 1] == "  comparing the served models with the list from before"  # post-check's message
    phases = [line for line in lines[:result] if not line.startswith("  ")]
    assert phases == [
        "[0/6] copy",
        "manifests",
        "verify",
        "stop",
        "catch-up",
        "verify",
        "switch",
        "start",
        "post-check",
    ]


class Crash(BaseException):
    """hxd dying mid-migration, as far as the migration can tell: nothing of it runs after this."""


def test_hxd_rolls_back_at_start_a_migration_a_crash_left_with_ollama_stopped(
    bus: PrivateBus, start_hxd: StartHxd, node: Config, ollama: OllamaService
) -> None:
    def crash_after_the_stop(state: JobState, changed: frozenset[str]) -> None:
        if state.phase == "catch-up":
            raise Crash

    env_before = node.paths.env_file.read_bytes()
    with pytest.raises(Crash):
        run_migration(Migration(node, ollama, JobControl("migrate", crash_after_the_stop)))
    assert journals.load(node.paths.state_dir).state == "stopped"  # type: ignore[union-attr]
    assert ollama.calls[-1] == "stop ollama.service"
    start_on_node(start_hxd, node)

    def rolled_back() -> bool:
        journal = journals.load(node.paths.state_dir)
        return journal is not None and journal.state == "rolled-back"

    wait_until(rolled_back, 30, "hxd's rollback at start")
    assert ollama.calls[-2:] == ["stop ollama.service", "start ollama.service"]
    assert node.paths.env_file.read_bytes() == env_before and not node.paths.legacy.is_symlink()
    assert call_manager(bus.address, "Status")[0]["features"]["data"]["migrate"] == "ok"
