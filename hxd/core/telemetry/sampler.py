"""One NVML sample of every GPU, with raw values and nvidia-smi's spelling of them.

NVML (nvidia-ml-py, imported as ``pynvml``) rather than a spawned nvidia-smi: NVIDIA documents the bindings as
the stable interface and nvidia-smi's output as not, and a sample costs microseconds instead of a process.
``pynvml`` is imported on the first sample, not at hxd's start (it is a 6000-line module and most hxd processes,
hxctl among them, never sample), and is a parameter so tests and benchmarks pass a fake (hxsandbox.fakenvml).

Errors follow docs/gpu-telemetry.md, "NVML errors": a field NVML does not support is nvidia-smi's ``[N/A]``
(other per-field errors get nvidia-smi's other tokens); a GPU that is lost is skipped for the sample and listed in
``Sample.lost``; an NVML that cannot start or stops working raises ``Unavailable`` and is initialized again on the
next sample. Not thread-safe: one sample at a time (``Telemetry`` serializes them).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from hxd.core.errors import Failed
from hxd.core.schedule import iso
from hxd.core.telemetry import smi

# Errors that mean this GPU is gone (fell off the bus): skip it for the sample and flag it. Never call NVML again
# with its handle in that sample (nvitop#139 segfaulted doing so).
_LOST = frozenset({"NVMLError_GpuIsLost", "NVMLError_GpuNotFound"})
# Errors that mean NVML itself is gone: the sample fails and NVML is initialized again next time.
_LIFECYCLE = frozenset(
    {
        "NVMLError_Uninitialized",
        "NVMLError_DriverNotLoaded",
        "NVMLError_LibRmVersionMismatch",
        "NVMLError_LibraryNotFound",
    }
)
# What to do when NVML cannot start, by error class; the reason says what NVML said first.
_ADVICE = {
    "NVMLError_LibraryNotFound": "libnvidia-ml.so.1 was not found; install the NVIDIA driver",
    "NVMLError_DriverNotLoaded": "the NVIDIA kernel driver is not loaded; check `nvidia-smi` and `dmesg`",
    "NVMLError_LibRmVersionMismatch": "the driver was upgraded but the old kernel module is loaded; reboot the node",
    "NVMLError_NoPermission": "hxd cannot open /dev/nvidia*; check DeviceAllow= in hxd.service",
}


class Unavailable(Failed):
    """NVML cannot be used (nvidia-ml-py missing, no driver, driver mismatch); the message says why and what to do."""


@dataclass(frozen=True)
class GpuSample:
    """One GPU in one sample: raw NVML values in NVML's units (None when NVML could not say) and ``smi``, every
    column of the CSV row as nvidia-smi prints it (``"19818 MiB"``, ``"[N/A]"``), keyed by field name."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    pstate: int | None
    temperature_c: int | None
    utilization_gpu_pct: int | None
    utilization_memory_pct: int | None
    memory_total_bytes: int | None
    memory_reserved_bytes: int | None
    memory_used_bytes: int | None
    memory_free_bytes: int | None
    power_draw_mw: int | None
    power_limit_mw: int | None
    enforced_power_limit_mw: int | None
    sm_clock_mhz: int | None
    memory_clock_mhz: int | None
    fan_speed_pct: int | None
    clocks_event_reasons: int | None
    ecc_corrected_volatile: int | None
    ecc_uncorrected_volatile: int | None
    mig_enabled: bool | None
    smi: Mapping[str, str]


@dataclass(frozen=True)
class LostGpu:
    """A GPU skipped in a sample: its index, why, and its uuid and name when an earlier sample saw them."""

    index: int
    reason: str
    uuid: str = ""
    name: str = ""


@dataclass(frozen=True)
class Sample:
    """Every GPU at one moment (UTC, taken when the sample started)."""

    time: datetime
    driver_version: str
    gpus: tuple[GpuSample, ...]
    lost: tuple[LostGpu, ...]


class _Lost(Exception):
    """This GPU was lost while it was being read."""


class _Reader:
    """Reads one GPU: each failed NVML call puts nvidia-smi's token in the cells it feeds and returns None."""

    def __init__(self, nvml: ModuleType, handle: Any, cells: dict[str, str]) -> None:
        self.nvml = nvml
        self.handle = handle
        self.cells = cells

    def call(self, cells: tuple[str, ...], function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(self.handle, *args, **kwargs)
        except self.nvml.NVMLError as exc:
            error = type(exc).__name__
            if error in _LOST:
                raise _Lost(str(exc)) from None
            if error in _LIFECYCLE:
                raise
            for cell in cells:
                self.cells[cell] = smi.TOKENS.get(error, smi.UNKNOWN_ERROR)
            return None

    def value(self, cell: str, function: Callable[..., Any], *args: Any, fmt: Callable[[int], str] = str) -> int | None:
        """One integer field, e.g. the temperature; ``fmt`` spells it as nvidia-smi does."""
        raw = self.call((cell,), function, *args)
        return None if raw is None else self.put(cell, raw, fmt)

    def put(self, cell: str, raw: Any, fmt: Callable[[int], str]) -> int:
        value = int(raw)
        self.cells[cell] = fmt(value)
        return value


class Sampler:
    """NVML, initialized on the first sample and kept until ``close`` (or until NVML fails)."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml = nvml
        self._initialized = False
        self._known: dict[int, tuple[str, str]] = {}  # index -> (uuid, name), to name a GPU once it is lost

    def sample(self) -> Sample:
        """Read every GPU. Raises Unavailable when NVML cannot be used; a lost GPU is in ``Sample.lost``."""
        nvml = self._module()
        if not self._initialized:
            try:
                nvml.nvmlInit()
            except nvml.NVMLError as exc:
                raise Unavailable(_describe(exc)) from None
            self._initialized = True
        try:
            return self._sample(nvml)
        except nvml.NVMLError as exc:
            self.close()
            raise Unavailable(_describe(exc)) from None

    def close(self) -> None:
        """Shut NVML down (pynvml counts nvmlInit calls); the next sample initializes it again."""
        if self._initialized and self._nvml is not None:
            self._initialized = False
            with contextlib.suppress(self._nvml.NVMLError):  # when the driver is gone there is nothing to release
                self._nvml.nvmlShutdown()

    def _module(self) -> ModuleType:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise Unavailable(
                    f"cannot import pynvml ({exc}); install nvidia-ml-py, the NVML bindings hxd depends on"
                ) from None
        return self._nvml

    def _sample(self, nvml: ModuleType) -> Sample:
        now = datetime.now(UTC)
        driver = str(nvml.nvmlSystemGetDriverVersion())
        gpus: list[GpuSample] = []
        lost: list[LostGpu] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            common = {"timestamp": iso(now), "index": str(index), "driver_version": driver}
            try:
                gpu = self._gpu(nvml, index, common)
            except _Lost as exc:
                lost.append(LostGpu(index, str(exc), *self._known.get(index, ("", ""))))
                continue
            self._known[index] = (gpu.uuid, gpu.name)
            gpus.append(gpu)
        return Sample(now, driver, tuple(gpus), tuple(lost))

    def _gpu(self, nvml: ModuleType, index: int, cells: dict[str, str]) -> GpuSample:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError as exc:
            if type(exc).__name__ in _LIFECYCLE:
                raise
            # No handle, no GPU (gpustat#125: "Unable to determine the device handle ...: Unknown Error").
            raise _Lost(str(exc)) from None
        read = _Reader(nvml, handle, cells)
        uuid = read.call(("uuid",), nvml.nvmlDeviceGetUUID)
        name = read.call(("name",), nvml.nvmlDeviceGetName)
        pci = read.call(("pci.bus_id",), nvml.nvmlDeviceGetPciInfo)
        bus_id = None if pci is None else pci.busId
        identity = {"uuid": uuid, "name": name, "pci.bus_id": bus_id}
        cells.update({cell: str(text) for cell, text in identity.items() if text is not None})

        state = read.call(("pstate",), nvml.nvmlDeviceGetPerformanceState)
        if state == nvml.NVML_PSTATE_UNKNOWN:  # how nvidia-smi prints it is not in the captures; N/A is honest
            state, cells["pstate"] = None, smi.NOT_AVAILABLE
        elif state is not None:
            state = read.put("pstate", state, smi.pstate)

        use = read.call(("utilization.gpu", "utilization.memory"), nvml.nvmlDeviceGetUtilizationRates)
        # v2: on R510+ drivers v1's "used" includes the driver's reserved memory (gpustat#141); nvidia-smi's doesn't.
        memory = read.call(
            ("memory.total", "memory.used", "memory.free"), nvml.nvmlDeviceGetMemoryInfo, version=nvml.nvmlMemory_v2
        )
        mig = read.call(("mig.mode.current",), nvml.nvmlDeviceGetMigMode)  # [current, pending]
        mig_enabled = None if mig is None else mig[0] == nvml.NVML_DEVICE_MIG_ENABLE
        if mig_enabled is not None:
            cells["mig.mode.current"] = smi.mig_mode(mig_enabled)
        ecc = (nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        return GpuSample(
            index=index,
            uuid=str(uuid or ""),
            name=str(name or ""),
            pci_bus_id=str(bus_id or ""),
            pstate=state,
            temperature_c=read.value("temperature.gpu", nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU),
            utilization_gpu_pct=None if use is None else read.put("utilization.gpu", use.gpu, smi.percent),
            utilization_memory_pct=None if use is None else read.put("utilization.memory", use.memory, smi.percent),
            memory_total_bytes=None if memory is None else read.put("memory.total", memory.total, smi.mib),
            memory_reserved_bytes=None if memory is None else int(memory.reserved),
            memory_used_bytes=None if memory is None else read.put("memory.used", memory.used, smi.mib),
            memory_free_bytes=None if memory is None else read.put("memory.free", memory.free, smi.mib),
            power_draw_mw=read.value("power.draw", nvml.nvmlDeviceGetPowerUsage, fmt=smi.watts),
            power_limit_mw=read.value("power.limit", nvml.nvmlDeviceGetPowerManagementLimit, fmt=smi.watts),
            enforced_power_limit_mw=read.value(
                "enforced.power.limit", nvml.nvmlDeviceGetEnforcedPowerLimit, fmt=smi.watts
            ),
            sm_clock_mhz=read.value("clocks.current.sm", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM, fmt=smi.mhz),
            memory_clock_mhz=read.value(
                "clocks.current.memory", nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM, fmt=smi.mhz
            ),
            fan_speed_pct=read.value("fan.speed", nvml.nvmlDeviceGetFanSpeed, fmt=smi.percent),
            clocks_event_reasons=read.value(
                "clocks_event_reasons.active", nvml.nvmlDeviceGetCurrentClocksEventReasons, fmt=smi.bitmask
            ),
            ecc_corrected_volatile=read.value(
                "ecc.errors.corrected.volatile.total", nvml.nvmlDeviceGetTotalEccErrors, ecc[0], nvml.NVML_VOLATILE_ECC
            ),
            ecc_uncorrected_volatile=read.value(
                "ecc.errors.uncorrected.volatile.total",
                nvml.nvmlDeviceGetTotalEccErrors,
                ecc[1],
                nvml.NVML_VOLATILE_ECC,
            ),
            mig_enabled=mig_enabled,
            smi={name: cells[name] for name in smi.NAMES},
        )


def _describe(exc: Exception) -> str:
    """``NVML: <what NVML said>; <what to do>``, e.g. ``NVML: Driver Not Loaded; the NVIDIA kernel driver ...``."""
    advice = _ADVICE.get(type(exc).__name__)
    return f"NVML: {exc}" + (f"; {advice}" if advice else "")
