"""The Telemetry feature: samples from the sampler, appended to the CSV log (an hxd.core.logfile.AppendLog with
nvidia-smi's header), for the daemon and for ``hxctl --offline telemetry``.

What can go wrong is kept in the feature's state instead of raised or logged at every sample: NVML unavailable
(retried with back-off), a GPU lost, the disk full.

Samples are single-flight: one sampling thread at most, ever. Whoever asks while a sample is being taken (the
timer, any number of ``SampleTelemetry()`` callers) gets that sample when it comes, and a hung NVML call holds that
one thread only: every caller gives up after SAMPLE_TIMEOUT_SEC with ``Unavailable``, and no new sample starts
until the hung one returns.

Sampling is the one timed operation that is not a hxd.core.runner job, on purpose: a sample is well under a
millisecond of NVML reads (docs/benchmarks.md), writes only the telemetry CSV (no job touches it), cannot stop
halfway, and must go on while a migration holds the node-wide lock. A job (lock record, thread, D-Bus object) per
sample would cost more than the sample; single-flight gives it the runner's rule that matters here, one at a time.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import structlog

from hxd.core.config import Config, TelemetryConfig
from hxd.core.features import Feature, FeatureState
from hxd.core.logfile import AppendLog
from hxd.core.schedule import iso
from hxd.core.telemetry import smi
from hxd.core.telemetry.sampler import LostGpu, Sample, Sampler, Unavailable
from hxd.core.threads import Shared

log = structlog.get_logger("hxd.telemetry")

# Retries while NVML is unavailable: one interval after the failure, then twice as long each time, up to this
# (or one interval, if that is longer).
MAX_BACKOFF_SEC = 3600.0
# How long a caller waits for a sample before it gets Unavailable. A healthy NVML answers 8 GPUs in milliseconds
# (nvmlInit without persistence mode: a few seconds); a hung driver never does. Well under the 25 s that D-Bus
# clients (busctl, sd-bus, dbus-fast) wait for a reply, so a caller gets hxd's error rather than NoReply.
SAMPLE_TIMEOUT_SEC = 10.0
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def csv_path(config: Config) -> Path:
    """Where the daemon keeps the GPU log."""
    return config.paths.log_dir / "gpu" / "telemetry.csv"


def rows(sample: Sample) -> list[dict[str, str]]:
    """One dict per GPU for D-Bus (``aa{sv}``, every value a string), JSON and tables: the CSV row's cells keyed by
    field name (``memory.used`` -> ``"19818 MiB"``) and ``state``: ``ok``, or ``lost: <reason>`` for a lost GPU
    (whose row has only timestamp, index, uuid, name and driver_version)."""
    stamp = iso(sample.time)
    return [
        *({**gpu.smi, "state": "ok"} for gpu in sample.gpus),
        *(
            {
                "timestamp": stamp,
                "index": str(gpu.index),
                "uuid": gpu.uuid,
                "name": gpu.name,
                "driver_version": sample.driver_version,
                "state": f"lost: {gpu.reason}",
            }
            for gpu in sample.lost
        ),
    ]


@dataclass
class _Flight:
    """One sample being taken (or, for the timer, queued behind one that is): whether it goes to the CSV log, when
    it was asked for, and what its callers get, the sample or why there is none."""

    record: bool
    asked: float = field(default_factory=time.monotonic)
    outcome: Shared[Sample | str] = field(default_factory=Shared)


@dataclass(frozen=True)
class View:
    """What readers see (Status, /metrics); replaced whole after each attempt, so the event loop reads it without a
    lock."""

    feature: Feature
    last: Sample | None = None
    up: bool = False
    log_writable: bool = True


class Telemetry:
    """Samples the GPUs when the daemon asks, appends them to the CSV log and keeps a one-line state.

    Thread-safety: samples are taken in hxd's one sampling thread (``hxd-nvml``), single-flight (see the module);
    ``sample`` and ``read_now`` block until theirs comes, ``read`` awaits it. ``due``, ``feature``, ``last``,
    ``view``, ``configure`` and ``close`` never block and are safe on the event loop while a sample runs. Nothing
    here raises but ``read_now`` and ``read``.
    """

    def __init__(
        self,
        path: Path,
        settings: TelemetryConfig,
        nvml: ModuleType | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sampler = Sampler(nvml)
        self._clock = clock
        self._flights = threading.Lock()  # guards the two below
        self._running: _Flight | None = None  # the sample the sampling thread is taking
        self._queued: _Flight | None = None  # the timer's, when it asked while a caller's sample was running
        self._failures = 0
        self._next_try: float | None = None  # monotonic; None while NVML works: due at every tick
        self._next_try_wall = datetime.now(UTC)
        self._reason = ""  # why NVML is unavailable; "" when it works
        self._announced = ""  # the reason last logged, and the GPUs last logged as lost (by index)
        self._announced_lost: frozenset[int] = frozenset()
        self._write_error = ""  # why the last append failed; "" when it worked
        self._write_error_since = ""
        self._unwritten = 0
        self._view = View(Feature(FeatureState.UNCHECKED, "waiting for the first sample"))
        self.configure(path, settings)

    def configure(self, path: Path, settings: TelemetryConfig) -> None:
        """Take a reloaded configuration; the next attempt uses it."""
        self._interval = float(settings.interval_sec)
        self._log = AppendLog(
            path,
            max_bytes=settings.rotate_size_mb * 1024 * 1024,
            keep=settings.keep,
            header=smi.HEADER,
            max_age=timedelta(days=settings.rotate_age_days),
        )

    def due(self, now: float) -> bool:
        """Whether a tick of the interval timer at ``now`` (monotonic) should ask for the timer's sample.

        True at every tick while NVML works. While it is unavailable, true again one interval after the failure,
        then after 2, 4, 8 ... intervals, up to MAX_BACKOFF_SEC; ticks are matched with half an interval of slack,
        so a timer that fires every interval lands on these exactly. False while the timer's previous sample is
        still running or queued (a hung NVML call): the timer skips ticks rather than queue them.
        """
        with self._flights:
            if self._queued is not None or (self._running is not None and self._running.record):
                return False
        next_try = self._next_try
        return next_try is None or now >= next_try - self._interval / 2

    @property
    def feature(self) -> Feature:
        """Its state for Status(), with a line: ``ok`` (8 GPUs; last sample <iso>), ``degraded`` (7 GPUs; lost GPU 3
        ...; or the log cannot be written: <path>: ...), ``unavailable`` (<reason>; next try <iso>)."""
        return self._view.feature

    @property
    def last(self) -> Sample | None:
        """The last successful sample (kept while NVML is unavailable; its ``time`` says how old it is)."""
        return self._view.last

    @property
    def view(self) -> View:
        """The last attempt's outcome as one object: the feature, the last sample, whether NVML was up and the log
        writable (what /metrics shows); never samples."""
        return self._view

    def sample(self) -> Sample | None:
        """The timer's sample, blocking: read the GPUs, append them to the CSV log, update the state. None when NVML
        is unavailable or does not answer in time; never raises. The daemon awaits ``read(record=True)`` instead."""
        try:
            return self.read_now(record=True)
        except Unavailable:
            return None

    def read_now(self, *, record: bool = False) -> Sample:
        """A sample for a caller that may block (``hxctl --offline telemetry``), not appended to the log unless
        ``record``. Tries NVML even during back-off; raises Unavailable (a Failed) with the reason, or when no sample
        comes within SAMPLE_TIMEOUT_SEC."""
        flight = self._join(record)
        try:
            return _sample_or_raise(flight.outcome.wait(SAMPLE_TIMEOUT_SEC))
        except TimeoutError:
            raise _hung(flight) from None

    async def read(self, *, record: bool = False) -> Sample:
        """``read_now`` for the event loop (``SampleTelemetry()``, and the timer with ``record``): awaits the sample
        without a thread of its own."""
        flight = self._join(record)
        try:
            return _sample_or_raise(await flight.outcome.wait_async(SAMPLE_TIMEOUT_SEC))
        except TimeoutError:
            raise _hung(flight) from None

    def close(self) -> None:
        """hxd is stopping (or hxctl is done): callers still waiting get Unavailable at once, so none holds up the
        stop, and NVML is shut down unless a sample is still running (exit releases it then)."""
        with self._flights:
            waiting = [flight for flight in (self._running, self._queued) if flight is not None]
            if not waiting:
                self._sampler.close()
        for flight in waiting:
            flight.outcome.set("hxd is stopping; no sample was taken")

    def _join(self, record: bool) -> _Flight:
        """The sample to wait for: the one being taken; or, for the timer (``record``) while a caller's runs, the one
        queued behind it; or a new one, in a new sampling thread when none is running."""
        with self._flights:
            running = self._running
            if running is None:
                self._running = flight = _Flight(record)
                threading.Thread(target=self._take, args=(flight,), name="hxd-nvml", daemon=True).start()
                return flight
            if running.record or not record:
                return running
            if self._queued is None:
                self._queued = _Flight(record=True)
            return self._queued

    def _take(self, first: _Flight) -> None:
        """The sampling thread: takes ``first``, then the one queued meanwhile if there is one, then ends."""
        flight: _Flight | None = first
        while flight is not None:
            try:
                outcome: Sample | str = self._attempt_sample(flight.record)
            except Unavailable as exc:
                outcome = str(exc)
            except Exception as exc:  # a bug here: its callers are told, and the next sample gets a thread again
                log.exception("GPU sample failed inside hxd")
                outcome = f"hxd failed while sampling ({type(exc).__name__}); see `journalctl -u hxd`"
            with self._flights:  # done before its callers wake, so that what they do next sees it done
                self._running, self._queued = self._queued, None
                taken, flight = flight, self._running
            taken.outcome.set(outcome)

    def _attempt_sample(self, record: bool) -> Sample:
        now = self._clock()
        try:
            sample = self._sampler.sample()
        except Exception as exc:  # a broken nvidia-ml-py or a bug here must not stop the daemon's timer either
            unexpected = None if isinstance(exc, Unavailable) else exc
            if unexpected:
                self._sampler.close()
            reason = f"unexpected {type(exc).__name__} while sampling: {exc}" if unexpected else str(exc)
            self._failed(reason, now)
            if record:
                self._announce(reason, None, unexpected)
            raise Unavailable(reason) from None
        self._reason, self._failures, self._next_try = "", 0, None
        if record:
            self._announce("", sample)
            self._record(sample)
        self._publish(sample)
        return sample

    def _failed(self, reason: str, now: float) -> None:
        self._failures += 1
        delay = min(self._interval * 2 ** min(self._failures - 1, 32), max(MAX_BACKOFF_SEC, self._interval))
        self._next_try = now + delay
        self._next_try_wall = datetime.now(UTC) + timedelta(seconds=delay)
        self._reason = reason
        self._publish(self._view.last)

    def _announce(self, reason: str, sample: Sample | None, exc: Exception | None = None) -> None:
        """Log what changed since the timer's previous attempt: once per reason or lost GPU, never once per cycle.
        Only the timer's attempts log; a caller of ``read_now`` gets the answer (or the error) itself."""
        if reason and reason != self._announced:
            log.warning("GPU telemetry unavailable; retrying with back-off", reason=reason, exc_info=exc)
        elif not reason and self._announced:
            log.info("GPU telemetry available again", gpus=len(sample.gpus) if sample else 0)
        self._announced = reason
        if sample is None:
            return
        lost = {gpu.index: gpu for gpu in sample.lost}
        for index, gpu in lost.items():
            if index not in self._announced_lost:
                log.warning("GPU lost; skipped until it answers again", index=index, uuid=gpu.uuid, reason=gpu.reason)
        for index in sorted(self._announced_lost - lost.keys()):
            log.info("GPU answers again", index=index)
        self._announced_lost = frozenset(lost)

    def _record(self, sample: Sample) -> None:
        path = self._log.path
        try:
            self._log.append([smi.csv_row(gpu.smi) for gpu in sample.gpus], sample.time)
        except OSError as exc:
            self._unwritten += 1
            what = "disk full" if exc.errno in _DISK_FULL else "cannot write the log"
            if not self._write_error:
                self._write_error_since = iso(sample.time)
                log.error("cannot append to the GPU log; retrying at every sample", path=str(path), error=exc.strerror)
            self._write_error = f"{what}: {exc.filename or path}: {exc.strerror}"
            return
        if self._write_error:
            log.info("the GPU log is writable again", path=str(path), samples_not_written=self._unwritten)
        self._write_error, self._unwritten = "", 0

    def _publish(self, last: Sample | None) -> None:
        up = not self._reason and last is not None
        if self._reason:
            feature = Feature(FeatureState.UNAVAILABLE, f"{self._reason} (next try {iso(self._next_try_wall)})")
        elif last is None:
            feature = self._view.feature
        else:
            summary = "; ".join(
                [
                    f"{len(last.gpus)} GPU{'s' * (len(last.gpus) != 1)}",
                    *(f"lost {_lost(gpu)}" for gpu in last.lost),
                    f"last sample {iso(last.time)}",
                ]
            )
            if self._write_error:
                unwritten = f"{self._unwritten} sample{'s' * (self._unwritten != 1)} not written"
                detail = f"{self._write_error} (since {self._write_error_since}, {unwritten}; {summary})"
                feature = Feature(FeatureState.DEGRADED, detail)
            else:
                feature = Feature(FeatureState.DEGRADED if last.lost else FeatureState.OK, summary)
        self._view = View(feature, last, up, not self._write_error)


def _sample_or_raise(outcome: Sample | str) -> Sample:
    if isinstance(outcome, str):
        raise Unavailable(outcome)
    return outcome


def _hung(flight: _Flight) -> Unavailable:
    """What a caller gets when the sample it waits for does not come in time: NVML is hung, most likely."""
    age = time.monotonic() - flight.asked
    return Unavailable(
        f"NVML did not answer within {SAMPLE_TIMEOUT_SEC:g} s (the sample in progress was asked for {age:.0f} s "
        "ago; no other starts until it returns); check `nvidia-smi` and `dmesg` for a hung driver"
    )


def _lost(gpu: LostGpu) -> str:
    return f"GPU {gpu.index}{f' {gpu.uuid}' if gpu.uuid else ''}: {gpu.reason}"
