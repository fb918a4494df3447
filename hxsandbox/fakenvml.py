"""A fake ``pynvml`` for the tests, the benchmarks and the GPU self-check's tests: no GPU or driver needed.

Faked at the pynvml boundary, as gpustat's tests do: the real nvidia-ml-py module's error classes and constants
(so ``NVMLError(3)`` is the real ``NVMLError_NotSupported``), and the nvml* functions hxd's sampler calls,
with the real functions' parameter names, answered from ``FakeGpu`` records. Behaviour follows NVML as
docs/gpu-telemetry.md describes it: calls before ``nvmlInit`` raise Uninitialized; memory v1's
``used`` includes the reserved memory and v2's does not; utilization is NotSupported with MIG enabled; fan, ECC
and MIG mode are NotSupported where the board has none; a lost GPU raises GpuIsLost from every call. Arguments are
the ones docs/gpu-telemetry.md, "NVML calls" lists: clock types NVML_CLOCK_GRAPHICS, _SM and _MEM; ECC error
types CORRECTED and UNCORRECTED, each for the counters NVML_VOLATILE_ECC (since the last driver load) and
NVML_AGGREGATE_ECC (the board's lifetime); anything else raises InvalidArgument.

The defaults are the real H100 row of docs/gpu-telemetry.md, "CSV format" (driver 590.48.01), whose
``clocks.current.graphics`` equals ``clocks.current.sm`` and whose aggregate ECC totals are 0, as the volatile ones.

``python -m hxsandbox.fakenvml [--gpus N] [--hung] [--init-error CODE] -- HXD-ARGS`` runs hxd itself on this fake
(hxd imports ``pynvml`` at its first sample and finds the fake already imported), for the tests that need a daemon
whose NVML hangs or is refused, or whose GPUs hxsandbox.fakesmi prints as nvidia-smi would
(hxsandbox.world.HxdProcess's ``program``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType, SimpleNamespace

_real = importlib.import_module("pynvml")
MIB = 1024 * 1024


@dataclass
class FakeGpu:
    """One GPU's answers. ``None`` for fan, ECC or MIG means the board has none (NotSupported)."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = "00000000:00:09.0"
    pstate: int = 0
    temperature_c: int = 59
    utilization_pct: tuple[int, int] = (100, 11)  # gpu, memory
    memory_bytes: tuple[int, int, int, int] = (
        81559 * MIB,
        478 * MIB,
        19818 * MIB,
        61263 * MIB,
    )  # total, reserved, used, free
    power_mw: int = 631950
    power_limit_mw: int = 700000
    enforced_power_limit_mw: int = 700000
    clocks_mhz: tuple[int, int] = (1980, 2619)  # SM, memory
    graphics_clock_mhz: int = 1980  # the same as SM on Hopper (the capture's clocks.current.graphics)
    fan_pct: int | None = None  # H100 and H200 are passively cooled
    clocks_event_reasons: int = 0
    ecc_volatile: tuple[int, int] | None = (0, 0)  # corrected, uncorrected; None: no ECC, both counters NotSupported
    ecc_aggregate: tuple[int, int] = (0, 0)  # corrected, uncorrected over the board's life (>= the volatile ones)
    mig: bool | None = False
    errors: dict[str, int] = field(default_factory=dict)  # nvml function name -> NVML error code it raises
    lost: bool = False  # fell off the bus: every call with its handle raises GpuIsLost


def h100(index: int) -> FakeGpu:
    """The captured H100 (docs/gpu-telemetry.md, "CSV format"), with a uuid and bus id of its own."""
    return FakeGpu(uuid=f"GPU-{index:08x}-5f2c-4a1e-9b7d-0123456789ab", pci_bus_id=f"00000000:00:{0x09 + index:02X}.0")


class FakeNvml(ModuleType):
    """The fake module: pass it where hxd takes ``nvml``. ``init_error`` (an NVML error code) makes nvmlInit fail,
    as on a machine without the library or the driver; ``calls`` counts the device calls answered. ``hung`` makes
    every call block until ``release()``, as a driver stuck in the kernel does; ``hung_calls`` counts the calls that
    found it so."""

    def __init__(
        self,
        gpus: Sequence[FakeGpu] = (),
        driver_version: str = "590.48.01",
        init_error: int | None = None,
        hung: bool = False,
    ):
        super().__init__("pynvml", "hxd's fake pynvml")
        for name in dir(_real):
            if name.startswith(("NVML", "nvmlMemory_v")):  # constants and error classes, the real ones
                setattr(self, name, getattr(_real, name))
        self.gpus = list(gpus)
        self.driver_version = driver_version
        self.init_error = init_error
        self.refcount = 0
        self.calls = 0
        self.hung_calls = 0
        self._answering = threading.Event()
        if not hung:
            self._answering.set()

    def release(self) -> None:
        """Let blocked calls, and the calls after them, through."""
        self._answering.set()

    def _gate(self) -> None:
        if not self._answering.is_set():
            self.hung_calls += 1
            self._answering.wait()

    def _error(self, code: int) -> Exception:
        error: Exception = _real.NVMLError(code)
        return error

    def _check(self) -> None:
        self._gate()
        if self.refcount == 0:
            raise self._error(_real.NVML_ERROR_UNINITIALIZED)

    def _answer(self, handle: FakeGpu, function: str) -> FakeGpu:
        self._check()
        self.calls += 1
        if handle.lost:
            raise self._error(_real.NVML_ERROR_GPU_IS_LOST)
        if function in handle.errors:
            raise self._error(handle.errors[function])
        return handle

    def nvmlInit(self) -> None:
        self._gate()
        if self.init_error is not None:
            raise self._error(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self._check()
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check()
        if not 0 <= index < len(self.gpus):
            raise self._error(_real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if "nvmlDeviceGetHandleByIndex" in gpu.errors:
            raise self._error(gpu.errors["nvmlDeviceGetHandleByIndex"])
        return gpu

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return self._answer(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return self._answer(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetPciInfo(self, handle: FakeGpu) -> SimpleNamespace:
        return SimpleNamespace(busId=self._answer(handle, "nvmlDeviceGetPciInfo").pci_bus_id)

    def nvmlDeviceGetPerformanceState(self, handle: FakeGpu) -> int:
        return self._answer(handle, "nvmlDeviceGetPerformanceState").pstate

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        gpu = self._answer(handle, "nvmlDeviceGetTemperature")
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise self._error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature_c

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> SimpleNamespace:
        gpu = self._answer(handle, "nvmlDeviceGetUtilizationRates")
        if gpu.mig:  # "On MIG-enabled GPUs, querying device utilization rates is not currently supported"
            raise self._error(_real.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=gpu.utilization_pct[0], memory=gpu.utilization_pct[1])

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu, version: int | None = None) -> SimpleNamespace:
        total, reserved, used, free = self._answer(handle, "nvmlDeviceGetMemoryInfo").memory_bytes
        if version == _real.nvmlMemory_v2:
            return SimpleNamespace(version=version, total=total, reserved=reserved, free=free, used=used)
        return SimpleNamespace(total=total, free=free, used=used + reserved)  # v1 on R510+ drivers

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return self._answer(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeGpu) -> int:
        return self._answer(handle, "nvmlDeviceGetPowerManagementLimit").power_limit_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu) -> int:
        return self._answer(handle, "nvmlDeviceGetEnforcedPowerLimit").enforced_power_limit_mw

    def nvmlDeviceGetClockInfo(self, handle: FakeGpu, type: int) -> int:
        gpu = self._answer(handle, "nvmlDeviceGetClockInfo")
        clocks = {
            _real.NVML_CLOCK_GRAPHICS: gpu.graphics_clock_mhz,
            _real.NVML_CLOCK_SM: gpu.clocks_mhz[0],
            _real.NVML_CLOCK_MEM: gpu.clocks_mhz[1],
        }
        if type not in clocks:
            raise self._error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return clocks[type]

    def nvmlDeviceGetFanSpeed(self, handle: FakeGpu) -> int:
        gpu = self._answer(handle, "nvmlDeviceGetFanSpeed")
        if gpu.fan_pct is None:
            raise self._error(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.fan_pct

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeGpu) -> int:
        return self._answer(handle, "nvmlDeviceGetCurrentClocksEventReasons").clocks_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeGpu, errorType: int, counterType: int) -> int:
        gpu = self._answer(handle, "nvmlDeviceGetTotalEccErrors")
        if gpu.ecc_volatile is None:
            raise self._error(_real.NVML_ERROR_NOT_SUPPORTED)
        counters = {_real.NVML_VOLATILE_ECC: gpu.ecc_volatile, _real.NVML_AGGREGATE_ECC: gpu.ecc_aggregate}
        kinds = (_real.NVML_MEMORY_ERROR_TYPE_CORRECTED, _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        if counterType not in counters or errorType not in kinds:
            raise self._error(_real.NVML_ERROR_INVALID_ARGUMENT)
        return counters[counterType][errorType]

    def nvmlDeviceGetMigMode(self, device: FakeGpu) -> list[int]:
        gpu = self._answer(device, "nvmlDeviceGetMigMode")
        if gpu.mig is None:
            raise self._error(_real.NVML_ERROR_NOT_SUPPORTED)
        mode = _real.NVML_DEVICE_MIG_ENABLE if gpu.mig else _real.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]


def main(argv: list[str] | None = None) -> int:
    """Run hxd (the arguments after ``--``) with this fake installed as ``pynvml``."""
    parser = argparse.ArgumentParser(prog="python -m hxsandbox.fakenvml", description="hxd on a fake NVML")
    parser.add_argument("--gpus", type=int, default=1, help="how many captured H100s (default 1)")
    parser.add_argument("--hung", action="store_true", help="every NVML call blocks forever")
    parser.add_argument(
        "--init-error",
        type=int,
        metavar="CODE",
        help="nvmlInit fails with this NVML error code (999 Unknown Error: what a device cgroup's refusal gives)",
    )
    parser.add_argument("hxd", nargs=argparse.REMAINDER, help="-- and hxd's arguments")
    args = parser.parse_args(argv)
    gpus = [h100(index) for index in range(args.gpus)]
    sys.modules["pynvml"] = FakeNvml(gpus, hung=args.hung, init_error=args.init_error)
    from hxd.daemon import main as hxd_main  # after the fake is in place: nothing of hxd's has imported pynvml yet

    return hxd_main(args.hxd[1:] if args.hxd[:1] == ["--"] else args.hxd)


if __name__ == "__main__":
    sys.exit(main())
