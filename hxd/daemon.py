"""``hxd``: the daemon entry. Lifecycle only: bus, sd_notify, signals, timers.

Everything hxd knows lives in the engine (hxd.core) and everything it says on the bus in the adapter (hxd.bus);
this module connects them, owns ``org.hxinfra.hxd1``, tells systemd how it is doing, and stops cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sdnotify
import structlog
from dbus_fast import DBusError, NameFlag, RequestNameReply

from hxd import __version__
from hxd import log as hxd_log
from hxd.bus import names
from hxd.bus.auth import Authority
from hxd.bus.connection import BUS_HELP, HxdBus, bus_spec, call_method, connect, describe
from hxd.bus.jobs import JobExporter
from hxd.bus.manager import Manager
from hxd.bus.systemd import SystemdController
from hxd.core.config import DEFAULT_CONFIG_PATH, dump_config, load_config
from hxd.core.engine import Engine, Timer, stamp_path
from hxd.core.errors import Busy, HxdError, InvalidConfig
from hxd.core.features import FeatureState
from hxd.core.jobs import JobSummary
from hxd.core.schedule import Calendar, Interval, write_stamp
from hxd.core.smoke import last_smoke
from hxd.core.telemetry.sampler import Unavailable
from hxd.metrics.gpus import metric_lines
from hxd.metrics.page import render
from hxd.metrics.server import bind, listen_fds, serve

log = structlog.get_logger("hxd")

# How long shutdown waits for in-flight calls before it stops anyway (systemd's TimeoutStopSec is 90 s).
_DRAIN_TIMEOUT_SEC = 20.0
# How long shutdown waits for running jobs to stop after cancelling them (a migration past its point of no return
# completes or rolls back first); keep it under systemd's TimeoutStopSec.
_JOB_STOP_TIMEOUT_SEC = 60.0


class Notifier:
    """sd_notify(3) through the sdnotify package; a no-op when not started by systemd (no NOTIFY_SOCKET)."""

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None

    def __call__(self, *assignments: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(assignments))

    @staticmethod
    def watchdog_period() -> float | None:
        """Half of ``WATCHDOG_USEC`` (sd_watchdog_enabled(3)), or None when systemd asked for no watchdog."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2_000_000


class StartupError(Exception):
    """hxd cannot start; the message and details are logged and hxd exits 1 (systemd's Restart= takes over)."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details


class Daemon:
    """One run of hxd: from connecting to the bus to releasing the name."""

    def __init__(self, engine: Engine, spec: str) -> None:
        self.engine = engine
        self.spec = spec
        self.notify = Notifier()
        self.stop = asyncio.Event()
        self.rng = random.Random()
        self.timer_tasks: list[asyncio.Task[None]] = []
        self.scheduled: dict[str, Timer] = {}
        self.reloads: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references to tasks

    async def run(self) -> int:
        try:
            metrics_sockets = self._metrics_sockets()
            bus = await self._connect()
            authority = Authority(bus)
            jobs = JobExporter(bus, authority, self.engine.runner, lambda: self._jobs_changed(jobs))
            self.engine.controller = SystemdController(bus, asyncio.get_running_loop())
            manager = Manager(self.engine, authority, jobs)
            self.manager = manager
            bus.export(names.MANAGER_PATH, manager)
            # Everything serves before the name is owned: a bus-activated start answers the call that woke it.
            self.engine.set_state("running")
            await self._own_name(bus)
        except StartupError as exc:
            log.error(str(exc), **exc.details)
            return 1
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        metrics = (
            serve(metrics_sockets, lambda: render(self.engine.status(), metric_lines(self.engine.telemetry.view)))
            if metrics_sockets
            else None
        )
        self.engine.observers.append(self._facts_changed)
        watchdog = asyncio.create_task(self._watchdog())
        self._schedule()
        history = asyncio.create_task(self._load_smoke_history())
        self.notify("READY=1", f"STATUS=hxd {__version__}: running")
        log.info(
            "hxd ready",
            version=__version__,
            bus=describe(self.spec),
            config=str(self.engine.config_path),
            metrics=_socket_names(metrics_sockets),
        )
        await self._recover_migration()
        disconnected = asyncio.create_task(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        stopping = asyncio.create_task(self.stop.wait())
        await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (watchdog, history, *self.timer_tasks):
            task.cancel()
        if metrics is not None:
            metrics.close()
        if disconnected.done():
            log.error("lost the connection to the bus; exiting so systemd restarts hxd")
            return 1
        return await self._shutdown(bus, manager)

    async def _recover_migration(self) -> None:
        """A crash past a migration's stop may have left Ollama down: the engine rolls it back now. In a thread, as
        every job's preparation: it reads the journal and the store's directories."""
        try:
            job = await asyncio.to_thread(self.engine.recover_migration)
        except HxdError as exc:
            log.error("cannot roll back the interrupted migration now", error=str(exc))
            return
        if job is None and (migrate := self.engine.features["migrate"]).state != FeatureState.OK:
            log.warning("an interrupted migration needs attention", detail=migrate.detail)

    def _metrics_sockets(self) -> list[socket.socket]:
        """systemd's sockets (hxd.socket: every ListenStream=), else one bound to metrics.listen, else none."""
        passed = listen_fds()
        if passed:
            return passed
        listen = self.engine.config.metrics.listen
        if not listen:
            return []
        try:
            return [bind(listen)]
        except OSError as exc:
            raise StartupError("cannot listen for /metrics", listen=listen, error=exc.strerror) from None

    async def _connect(self) -> HxdBus:
        try:
            return await connect(self.spec)
        except Exception as exc:
            raise StartupError(
                "cannot connect to the bus", bus=describe(self.spec), error=str(exc) or type(exc).__name__
            ) from None

    async def _own_name(self, bus: HxdBus) -> None:
        try:
            reply = await bus.request_name(names.BUS_NAME, NameFlag.DO_NOT_QUEUE)
        except DBusError as exc:
            raise StartupError(
                "the bus refused the name; is dbus/org.hxinfra.hxd1.conf installed and the bus reloaded?",
                name=names.BUS_NAME,
                error=exc.text,
            ) from None
        if reply != RequestNameReply.PRIMARY_OWNER:
            raise StartupError("another process owns the name; is hxd already running?", name=names.BUS_NAME)

    async def _shutdown(self, bus: HxdBus, manager: Manager) -> int:
        """Release the name first (no new callers reach us), then let calls already received finish."""
        self.engine.set_state("stopping")
        self.notify("STOPPING=1")
        log.info("stopping", inflight=manager.inflight, jobs=len(manager.jobs.running()))
        await self._stop_jobs(manager.jobs)
        await bus.release_name(names.BUS_NAME)
        self.engine.telemetry.close()  # callers waiting for a (hung) sample are answered now, not after the drain
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT_SEC):
                await manager.idle.wait()
        except TimeoutError:
            log.warning("in-flight calls did not finish in time", inflight=manager.inflight)
        # A finished call's reply is queued by a callback that runs after its handler returns; one loop turn lets
        # it queue, and a round trip to the bus after it proves it was written before we disconnect.
        await asyncio.sleep(0)
        await call_method(bus, names.DBUS_NAME, names.DBUS_PATH, "org.freedesktop.DBus.Peer", "Ping")
        bus.disconnect()
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
        log.info("stopped")
        return 0

    async def _stop_jobs(self, jobs: JobExporter) -> None:
        """Cancel what runs and wait for the work to stop (a migration past its point of no return finishes or
        rolls back first, which is why this can take a while)."""
        self.engine.runner.cancel_all()
        running = [job.ended.wait() for job in jobs.running()]
        if running:
            await asyncio.wait([asyncio.ensure_future(wait) for wait in running], timeout=_JOB_STOP_TIMEOUT_SEC)
        jobs.close()

    def _jobs_changed(self, jobs: JobExporter) -> None:
        self.engine.set_jobs({path: JobSummary.of(job.state) for path, job in jobs.jobs.items()})

    def _reload(self) -> None:
        """SIGHUP: reload as Reload() does, in a task (reading the config must not block the loop)."""
        task = asyncio.get_running_loop().create_task(self._reload_quietly())
        self.reloads.add(task)
        task.add_done_callback(self.reloads.discard)

    async def _reload_quietly(self) -> None:
        # On failure the engine logs why and shows it in Status(); hxd keeps serving with the old config.
        with contextlib.suppress(InvalidConfig):
            await self.manager.reload()

    def _facts_changed(self, facts: frozenset[str]) -> None:
        if "state" in facts or "state_message" in facts:
            message = self.engine.state_message
            self.notify(f"STATUS=hxd {__version__}: {self.engine.state}" + (f" ({message})" if message else ""))
        if self.engine.timers is not self.scheduled and self.engine.state != "stopping":
            self._schedule()

    async def _load_smoke_history(self) -> None:
        """LastSmoke from the results file (up to smoke.rotate_size_mb of JSON lines: read in a thread)."""
        try:
            self.engine.last_smoke = await asyncio.to_thread(last_smoke, self.engine.config)
            self.engine.notify("last_smoke")
        except HxdError as exc:
            log.warning("cannot read the smoke history", error=str(exc))

    async def _fire(self, name: str) -> None:
        """What each timer does: the core's jobs, in worker threads; a busy node (a job of hxd's, or of an offline
        hxctl) skips a run rather than queue it."""
        if name == "telemetry":
            telemetry = self.engine.telemetry
            if telemetry.due(time.monotonic()):  # False while NVML is backing off, or the last sample still runs
                with contextlib.suppress(Unavailable):  # the feature's state says why
                    await telemetry.read(record=True)
                self.engine.record_telemetry()
            return
        start = (lambda: self.engine.audit(fix=False)) if name == "audit" else (lambda: self.engine.smoke(None))
        try:
            job = await asyncio.to_thread(start)
        except Busy as exc:
            log.info("scheduled run skipped: the node is busy", timer=name, reason=str(exc))
            return
        except HxdError as exc:
            log.warning("scheduled run failed", timer=name, error=str(exc))
            return
        await self.manager.jobs.outcome(job)

    async def _watchdog(self) -> None:
        """Ping systemd from the event loop itself, so a blocked loop stops the pings and gets hxd restarted."""
        period = self.notify.watchdog_period()
        if period is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(period)

    def _schedule(self) -> None:
        for task in self.timer_tasks:
            task.cancel()
        self.scheduled = self.engine.timers
        self.timer_tasks = [asyncio.create_task(self._run_timer(timer)) for timer in self.scheduled.values()]

    async def _run_timer(self, timer: Timer) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        runs = 0
        while True:
            if isinstance(timer.schedule, Interval):
                delay = start + runs * timer.schedule.seconds - loop.time()
                timer.next_run = datetime.now(UTC) + timedelta(seconds=max(delay, 0))
            else:
                timer.next_run = timer.plan_calendar(datetime.now(UTC), self.rng)
                delay = (timer.next_run - datetime.now(UTC)).total_seconds()
            self.engine.notify("timers")
            await asyncio.sleep(max(delay, 0))
            timer.last_run = datetime.now(UTC)
            if isinstance(timer.schedule, Calendar):  # stamped before the run, as systemd stamps its timers
                try:
                    await asyncio.to_thread(write_stamp, stamp_path(self.engine.config, timer.name), timer.last_run)
                except OSError as exc:
                    log.warning(
                        "cannot record the timer's run; a restart may run it again",
                        timer=timer.name,
                        error=exc.strerror,
                    )
            await self._fire(timer.name)
            if isinstance(timer.schedule, Interval):
                # Skip runs missed while the loop was busy instead of firing them in a burst.
                runs = max(runs + 1, math.floor((loop.time() - start) / timer.schedule.seconds) + 1)


def _socket_names(socks: list[socket.socket]) -> str:
    addresses = [sock.getsockname() for sock in socks]
    return ", ".join(":".join(map(str, n[:2])) if isinstance(n, tuple) else str(n) for n in addresses) or "off"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hxd",
        description="hxd keeps an Ollama GPU node correct and observable; it serves org.hxinfra.hxd1 on D-Bus.",
        epilog="Exit status: 0 clean stop or valid config, 1 error (the message says which).",
    )
    parser.add_argument("--version", action="version", version=f"hxd {__version__}")
    parser.add_argument("--config", type=Path, help=f"config file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--bus", help=BUS_HELP)
    parser.add_argument(
        "--log-format",
        choices=hxd_log.LOG_FORMATS,
        default="auto",
        help="auto: journal under systemd, console otherwise",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=("run", "check-config", "dump-config"),
        help="run the daemon (default), check the config (exit 0/1), or print the effective config",
    )
    return parser


def _check_result(path: Path) -> str:
    """check-config's verdict on a config that loaded: a valid file, or no file at all (only the default path may be
    absent), which is other news: none of the operator's settings apply."""
    if path.exists():
        return "configuration is valid"
    return "no such file; the defaults are in force (hxd dump-config shows them)"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    hxd_log.configure(args.log_format, args.log_level)
    config_path: Path = (args.config or DEFAULT_CONFIG_PATH).absolute()
    try:
        config = load_config(config_path, must_exist=args.config is not None)
    except InvalidConfig as exc:
        print(f"hxd: {exc}", file=sys.stderr)
        return 1
    if args.command == "check-config":
        print(f"hxd: {config_path}: {_check_result(config_path)}")
        return 0
    if args.command == "dump-config":
        sys.stdout.write(dump_config(config))
        return 0
    return asyncio.run(Daemon(Engine(config_path, config), bus_spec(args.bus)).run())


if __name__ == "__main__":
    sys.exit(main())
