"""The Telemetry feature: samples from the sampler, appended to the CSV log (an hxd.core.logfile.AppendLog with
nvidia-smi's header), for the daemon and for ``hxctl --offline telemetry``.

What can go wrong is kept in the feature's state instead of raised or logged at every sample: NVML unavailable
(retried with back-off), a GPU lost, the disk full.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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

log = structlog.get_logger("hxd.telemetry")

# Retries while NVML is unavailable: one interval after the failure, then twice as long each time, up to this
# (or one interval, if that is longer).
MAX_BACKOFF_SEC = 3600.0
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

    Thread-safety: ``sample`` and ``read_now`` block (NVML, file I/O) and belong in a worker thread; attempts are
    serialized. ``due``, ``feature``, ``last``, ``view``, ``configure`` never block and are safe on the event
    loop while an attempt runs. Nothing here raises but ``read_now``.
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
        self._attempt = threading.Lock()
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
        """Whether a tick of the interval timer at ``now`` (monotonic) should call ``sample``.

        True at every tick while NVML works. While it is unavailable, true again one interval after the failure,
        then after 2, 4, 8 ... intervals, up to MAX_BACKOFF_SEC; ticks are matched with half an interval of slack,
        so a timer that fires every interval lands on these exactly. False while an attempt is still running, so a
        hung NVML call never piles up threads.
        """
        if self._attempt.locked():
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
        """The timer's sample: read the GPUs, append them to the CSV log, update the state. None when NVML is
        unavailable. Blocking; never raises."""
        try:
            return self._attempt_sample(record=True)
        except Unavailable:
            return None

    def read_now(self) -> Sample:
        """A sample for a caller (``SampleTelemetry()``, ``hxctl --offline telemetry``), not appended to the log.
        Tries NVML even during back-off; raises Unavailable (a Failed) with the reason. Blocking."""
        return self._attempt_sample(record=False)

    def close(self) -> None:
        """Shut NVML down, unless an attempt is still running (exit releases it then)."""
        if self._attempt.acquire(blocking=False):
            try:
                self._sampler.close()
            finally:
                self._attempt.release()

    def _attempt_sample(self, record: bool) -> Sample:
        with self._attempt:
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


def _lost(gpu: LostGpu) -> str:
    return f"GPU {gpu.index}{f' {gpu.uuid}' if gpu.uuid else ''}: {gpu.reason}"
