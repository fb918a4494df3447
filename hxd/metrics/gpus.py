"""The last GPU sample as Prometheus metrics: base units (bytes, watts, celsius, hertz, ratio 0-1), one series per
GPU labelled ``uuid``, ``index`` and ``name``; a field the GPU does not support has no series.

Rendering reads the last sample; a scrape never starts an NVML sample. GPU series are left out while NVML is
unavailable, so Prometheus sees them go stale instead of a frozen value; ``hxd_telemetry_last_sample_timestamp_seconds``
says how old the data is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from hxd.core.telemetry.recorder import View
from hxd.core.telemetry.sampler import GpuSample, LostGpu
from hxd.metrics.exposition import family


@dataclass(frozen=True)
class _Series:
    """One per-GPU metric: the raw value times ``multiply`` over ``divide`` is the value in base units (one
    division, so 57 % is 0.57 and not 0.5700000000000001)."""

    name: str
    help: str
    raw: Callable[[GpuSample], int | bool | None]
    multiply: int = 1
    divide: int = 1
    kind: Literal["gauge", "counter"] = "gauge"

    def samples(self, gpus: tuple[GpuSample, ...]) -> list[tuple[dict[str, str], float]]:
        values = ((gpu, self.raw(gpu)) for gpu in gpus)
        return [(_labels(gpu), int(raw) * self.multiply / self.divide) for gpu, raw in values if raw is not None]


_SERIES = (
    _Series("hxd_gpu_temperature_celsius", "GPU core temperature.", lambda g: g.temperature_c),
    _Series(
        "hxd_gpu_utilization_ratio",
        "Fraction of the last sample period (1/6 s to 1 s) a kernel ran on the GPU (utilization.gpu).",
        lambda g: g.utilization_gpu_pct,
        divide=100,
    ),
    _Series(
        "hxd_gpu_memory_utilization_ratio",
        "Fraction of the last sample period device memory was read or written (utilization.memory).",
        lambda g: g.utilization_memory_pct,
        divide=100,
    ),
    _Series("hxd_gpu_memory_total_bytes", "Device memory in total.", lambda g: g.memory_total_bytes),
    _Series(
        "hxd_gpu_memory_reserved_bytes",
        "Device memory the driver reserves for itself (not counted as used).",
        lambda g: g.memory_reserved_bytes,
    ),
    _Series("hxd_gpu_memory_used_bytes", "Device memory allocated.", lambda g: g.memory_used_bytes),
    _Series("hxd_gpu_memory_free_bytes", "Device memory free.", lambda g: g.memory_free_bytes),
    _Series(
        "hxd_gpu_power_draw_watts",
        "Power draw (a 1 s average on Ampere and newer).",
        lambda g: g.power_draw_mw,
        divide=1000,
    ),
    _Series("hxd_gpu_power_limit_watts", "Power management limit.", lambda g: g.power_limit_mw, divide=1000),
    _Series(
        "hxd_gpu_enforced_power_limit_watts",
        "Power limit the GPU enforces (the lowest of all limits).",
        lambda g: g.enforced_power_limit_mw,
        divide=1000,
    ),
    _Series("hxd_gpu_sm_clock_hertz", "Current SM clock.", lambda g: g.sm_clock_mhz, multiply=1_000_000),
    _Series("hxd_gpu_memory_clock_hertz", "Current memory clock.", lambda g: g.memory_clock_mhz, multiply=1_000_000),
    _Series(
        "hxd_gpu_fan_speed_ratio",
        "Fan speed as a fraction of its maximum (may exceed 1).",
        lambda g: g.fan_speed_pct,
        divide=100,
    ),
    _Series("hxd_gpu_pstate", "Performance state: 0 (P0, fastest) to 15.", lambda g: g.pstate),
    _Series(
        "hxd_gpu_clocks_event_reasons",
        "Bit mask of why clocks are held down (0x1 idle, 0x4 power cap, 0x8 HW slowdown, 0x20/0x40 thermal).",
        lambda g: g.clocks_event_reasons,
    ),
    _Series("hxd_gpu_mig_enabled", "1 when MIG mode is enabled on the GPU.", lambda g: g.mig_enabled),
    # Volatile ECC counts restart at 0 when the driver reloads, which rate() takes as a counter reset.
    _Series(
        "hxd_gpu_ecc_corrected_errors_total",
        "Corrected ECC errors since the driver loaded.",
        lambda g: g.ecc_corrected_volatile,
        kind="counter",
    ),
    _Series(
        "hxd_gpu_ecc_uncorrected_errors_total",
        "Uncorrected ECC errors since the driver loaded.",
        lambda g: g.ecc_uncorrected_volatile,
        kind="counter",
    ),
)


def _labels(gpu: GpuSample | LostGpu) -> dict[str, str]:
    return {"uuid": gpu.uuid, "index": str(gpu.index), "name": gpu.name}


def metric_lines(view: View) -> list[str]:
    """The telemetry part of /metrics: whether it works, and the GPUs of the last sample while NVML is up."""
    sample, up, log_writable = view.last, view.up, view.log_writable
    lines = [
        *family(
            "hxd_telemetry_up", "1 when the last GPU sample succeeded, 0 when NVML is unavailable.", [({}, float(up))]
        ),
        *family(
            "hxd_telemetry_log_writable",
            "1 when the last append to the GPU telemetry CSV succeeded (see hxctl status).",
            [({}, float(log_writable))],
        ),
    ]
    if sample is None:
        return lines
    lines += family(
        "hxd_telemetry_last_sample_timestamp_seconds",
        "When the last successful GPU sample was taken (Unix time).",
        [({}, sample.time.timestamp())],
    )
    if not up:
        return lines
    info = {"driver_version": sample.driver_version}
    lines += family(
        "hxd_gpu_info",
        "GPU identity; value 1.",
        [({**_labels(gpu), "pci_bus_id": gpu.pci_bus_id, **info}, 1.0) for gpu in sample.gpus],
    )
    lines += family(
        "hxd_gpu_up",
        "1 when the GPU was read in the last sample, 0 when it was lost (fell off the bus).",
        [*((_labels(gpu), 1.0) for gpu in sample.gpus), *((_labels(gpu), 0.0) for gpu in sample.lost)],
    )
    for series in _SERIES:
        lines += family(series.name, series.help, series.samples(sample.gpus), series.kind)
    return lines
