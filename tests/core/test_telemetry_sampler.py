"""The NVML sampler against hxd's fake pynvml (and the real one, where no driver is installed): nvidia-smi's header,
units and rounding from a real capture (docs/gpu-telemetry.md), unsupported fields, lost GPUs, NVML unavailable, MIG."""

from __future__ import annotations

import csv
import ctypes
import importlib
import inspect
import subprocess
import sys

import pytest

from hxd.core.errors import Failed
from hxd.core.telemetry import smi
from hxd.core.telemetry.sampler import LostGpu, Sampler, Unavailable
from hxsandbox.fakenvml import MIB, FakeGpu, FakeNvml, h100

pynvml = importlib.import_module("pynvml")

# docs/gpu-telemetry.md, "CSV format": header and row of a real H100 (driver 590.48.01), exactly as printed.
REFERENCE_HEADER = (
    "timestamp, index, name, uuid, pci.bus_id, driver_version, pstate, temperature.gpu, utilization.gpu [%], "
    "utilization.memory [%], memory.total [MiB], memory.used [MiB], memory.free [MiB], power.draw [W], "
    "power.limit [W], enforced.power.limit [W], clocks.current.sm [MHz], clocks.current.memory [MHz], fan.speed [%], "
    "clocks_event_reasons.active, ecc.errors.corrected.volatile.total"
)
REFERENCE_ROW = (
    "2026/07/14 08:12:53.353, 0, NVIDIA H100 80GB HBM3, GPU-0000…, 00000000:00:09.0, 590.48.01, P0, 59, 100 %, "
    "11 %, 81559 MiB, 19818 MiB, 61263 MiB, 631.95 W, 700.00 W, 700.00 W, 1980 MHz, 2619 MHz, [N/A], "
    "0x0000000000000000, 0"
)


def sample_of(*gpus: FakeGpu) -> tuple[Sampler, FakeNvml]:
    nvml = FakeNvml(list(gpus))
    return Sampler(nvml), nvml


def test_header_has_nvidia_smis_names_and_units() -> None:
    ours = smi.HEADER.split(", ")
    theirs = REFERENCE_HEADER.split(", ")
    assert set(theirs) <= set(ours)
    assert [column for column in ours if column not in theirs] == [
        "ecc.errors.uncorrected.volatile.total",
        "mig.mode.current",
    ]
    assert "memory.used [MiB]" in ours and "temperature.gpu" in ours  # no unit for the temperature, as nvidia-smi
    assert smi.QUERY.split(",") == [column.split(" [")[0] for column in ours]


def test_the_reference_h100_row_is_reproduced_cell_for_cell() -> None:
    sampler, _ = sample_of(h100(0))
    cells = sampler.sample().gpus[0].smi
    reference = dict(zip(REFERENCE_HEADER.split(", "), REFERENCE_ROW.split(", "), strict=True))
    for column, value in reference.items():
        name = column.split(" [")[0]
        if name not in ("timestamp", "uuid"):  # our timestamp is UTC ISO-8601; the capture elides the uuid
            assert cells[name] == value, name
    assert cells["timestamp"].endswith("Z") and cells["uuid"] == h100(0).uuid
    assert cells["mig.mode.current"] == "Disabled" and cells["ecc.errors.uncorrected.volatile.total"] == "0"


def test_raw_values_are_nvml_units() -> None:
    sampler, _ = sample_of(h100(0))
    gpu = sampler.sample().gpus[0]
    assert (gpu.memory_total_bytes, gpu.memory_used_bytes, gpu.memory_reserved_bytes) == (
        81559 * MIB,
        19818 * MIB,
        478 * MIB,
    )
    assert (gpu.power_draw_mw, gpu.enforced_power_limit_mw, gpu.sm_clock_mhz, gpu.temperature_c) == (
        631950,
        700000,
        1980,
        59,
    )
    assert gpu.fan_speed_pct is None and gpu.mig_enabled is False and gpu.pstate == 0


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 MiB"), (1, "1 MiB"), (MIB, "1 MiB"), (MIB + 1, "2 MiB"), (19817 * MIB + 1, "19818 MiB")],
)
def test_mib_rounds_up_like_nvidia_smi(count: int, text: str) -> None:
    assert smi.mib(count) == text


def test_other_spellings() -> None:
    assert [smi.watts(700000), smi.watts(631954), smi.watts(72), smi.watts(0)] == [
        "700.00 W",
        "631.95 W",
        "0.07 W",
        "0.00 W",
    ]
    assert (smi.mhz(1980), smi.percent(7), smi.pstate(8), smi.bitmask(0x44)) == (
        "1980 MHz",
        "7 %",
        "P8",
        "0x0000000000000044",
    )


def test_memory_comes_from_the_v2_call_so_reserved_is_not_used() -> None:
    gpu = h100(0)
    gpu.memory_bytes = (16 * 1024 * MIB, 300 * MIB, 0, 16 * 1024 * MIB - 300 * MIB)  # idle: nothing allocated
    sampler, _ = sample_of(gpu)
    sample = sampler.sample().gpus[0]
    assert sample.memory_used_bytes == 0 and sample.smi["memory.used"] == "0 MiB"  # v1 would say 300 MiB


def test_zero_gpus() -> None:
    sampler, _ = sample_of()
    sample = sampler.sample()
    assert sample.gpus == () and sample.lost == () and sample.driver_version == "590.48.01"


def test_eight_gpus_in_index_order() -> None:
    sampler, _ = sample_of(*(h100(index) for index in range(8)))
    gpus = sampler.sample().gpus
    assert [gpu.index for gpu in gpus] == list(range(8))
    assert len({gpu.uuid for gpu in gpus}) == 8
    assert [gpu.smi["index"] for gpu in gpus] == [str(index) for index in range(8)]
    assert all(list(gpu.smi) == list(smi.NAMES) for gpu in gpus)


def test_unsupported_fields_are_na_and_the_rest_is_read() -> None:
    gpu = h100(0)
    gpu.ecc_volatile = None  # consumer board: no ECC
    gpu.mig = None  # and no MIG
    gpu.fan_pct = None  # passively cooled
    gpu.errors = {
        "nvmlDeviceGetPowerManagementLimit": pynvml.NVML_ERROR_NO_PERMISSION,
        "nvmlDeviceGetCurrentClocksEventReasons": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        "nvmlDeviceGetTemperature": pynvml.NVML_ERROR_UNKNOWN,
        "nvmlDeviceGetClockInfo": pynvml.NVML_ERROR_DEPRECATED,
        "nvmlDeviceGetPciInfo": pynvml.NVML_ERROR_NOT_SUPPORTED,
    }
    sampler, _ = sample_of(gpu)
    sample = sampler.sample().gpus[0]
    cells = sample.smi
    assert [cells[name] for name in ("fan.speed", "mig.mode.current")] == ["[N/A]", "[N/A]"]
    assert cells["ecc.errors.corrected.volatile.total"] == cells["ecc.errors.uncorrected.volatile.total"] == "[N/A]"
    assert cells["power.limit"] == "[Insufficient Permissions]"
    assert cells["clocks_event_reasons.active"] == "[Function Not Found]"
    assert cells["temperature.gpu"] == "[Unknown Error]"
    assert (
        cells["clocks.current.sm"] == cells["clocks.current.memory"] == "[Requested functionality has been deprecated]"
    )
    assert (sample.fan_speed_pct, sample.ecc_corrected_volatile, sample.power_limit_mw, sample.temperature_c) == (
        None,
        None,
        None,
        None,
    )
    assert sample.pci_bus_id == "" and cells["pci.bus_id"] == "[N/A]"
    assert cells["memory.used"] == "19818 MiB" and cells["power.draw"] == "631.95 W"  # the rest is still read


def test_unknown_pstate_is_na() -> None:
    gpu = h100(0)
    gpu.pstate = pynvml.NVML_PSTATE_UNKNOWN
    sampler, _ = sample_of(gpu)
    sample = sampler.sample().gpus[0]
    assert sample.pstate is None and sample.smi["pstate"] == "[N/A]"


def test_mig_enabled_is_noted_and_utilization_is_na() -> None:
    gpu = h100(0)
    gpu.mig = True
    sampler, _ = sample_of(gpu, h100(1))
    mig, plain = sampler.sample().gpus
    assert mig.mig_enabled is True and mig.smi["mig.mode.current"] == "Enabled"
    assert mig.smi["utilization.gpu"] == mig.smi["utilization.memory"] == "[N/A]"
    assert mig.utilization_gpu_pct is None and mig.smi["memory.used"] == "19818 MiB"
    assert plain.mig_enabled is False and plain.smi["utilization.gpu"] == "100 %"


def test_a_lost_gpu_is_skipped_and_named_from_the_last_sample() -> None:
    gpus = [h100(index) for index in range(8)]
    sampler, nvml = sample_of(*gpus)
    sampler.sample()
    gpus[3].lost = True
    sample = sampler.sample()
    assert [gpu.index for gpu in sample.gpus] == [0, 1, 2, 4, 5, 6, 7]
    assert sample.lost == (LostGpu(3, "GPU is lost", gpus[3].uuid, gpus[3].name),)
    gpus[3].lost = False
    assert len(sampler.sample().gpus) == 8 and nvml.refcount == 1


def test_a_lost_gpu_is_not_called_again_in_the_same_sample() -> None:
    gpu = h100(0)
    gpu.lost = True
    sampler, nvml = sample_of(gpu)
    sample = sampler.sample()
    assert sample.gpus == () and sample.lost == (LostGpu(0, "GPU is lost"),)
    assert nvml.calls == 1


def test_a_gpu_without_a_handle_is_skipped() -> None:
    broken = h100(1)
    broken.errors = {"nvmlDeviceGetHandleByIndex": pynvml.NVML_ERROR_UNKNOWN}
    sampler, _ = sample_of(h100(0), broken)
    sample = sampler.sample()
    assert [gpu.index for gpu in sample.gpus] == [0] and sample.lost == (LostGpu(1, "Unknown Error"),)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML: NVML Shared Library Not Found; libnvidia-ml.so.1 was not found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "NVML: Driver Not Loaded; the NVIDIA kernel driver is not loaded"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "reboot the node"),
    ],
)
def test_nvml_that_cannot_start_is_unavailable_with_the_reason(code: int, words: str) -> None:
    nvml = FakeNvml([h100(0)], init_error=code)
    with pytest.raises(Unavailable, match=words) as caught:
        Sampler(nvml).sample()
    assert isinstance(caught.value, Failed) and "\n" not in str(caught.value)


def test_the_driver_going_away_mid_sample_shuts_nvml_down_for_a_fresh_start() -> None:
    gpu = h100(0)
    sampler, nvml = sample_of(gpu)
    sampler.sample()
    gpu.errors = {"nvmlDeviceGetName": pynvml.NVML_ERROR_DRIVER_NOT_LOADED}
    with pytest.raises(Unavailable, match="Driver Not Loaded"):
        sampler.sample()
    assert nvml.refcount == 0
    gpu.errors = {}
    assert len(sampler.sample().gpus) == 1 and nvml.refcount == 1


def test_nvml_is_initialized_once_and_shut_down_on_close() -> None:
    sampler, nvml = sample_of(h100(0))
    sampler.sample()
    sampler.sample()
    assert nvml.refcount == 1
    sampler.close()
    sampler.close()
    assert nvml.refcount == 0


def test_the_real_pynvml_without_a_driver_says_the_library_is_missing() -> None:
    """On a machine with the driver this samples for real; here (no driver) it must fail cleanly."""
    sampler = Sampler()
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        with pytest.raises(Unavailable, match="NVML Shared Library Not Found"):
            sampler.sample()
    else:
        gpus = sampler.sample().gpus
        assert gpus and all(gpu.uuid for gpu in gpus), gpus
    sampler.close()


def test_nvidia_ml_py_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(Unavailable, match=r"cannot import pynvml .*install nvidia-ml-py"):
        Sampler().sample()


def test_importing_telemetry_does_not_import_pynvml() -> None:
    code = "import sys, hxd.core.telemetry, hxd.cli.telemetry; assert 'pynvml' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_fake_matches_the_real_pynvml() -> None:
    """Every function the fake answers exists in nvidia-ml-py with the same parameters; constants are the real ones."""
    fake = FakeNvml()
    functions = [name for name in vars(FakeNvml) if name.startswith("nvml")]
    assert len(functions) == 20
    for name in functions:
        real = inspect.signature(getattr(pynvml, name)).parameters
        assert list(inspect.signature(getattr(fake, name)).parameters) == list(real), name
    assert fake.NVMLError_NotSupported is pynvml.NVMLError_NotSupported
    assert type(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)) is fake.NVMLError_GpuIsLost


def test_a_cell_that_would_break_the_line_is_quoted() -> None:
    cells = dict.fromkeys(smi.NAMES, "1")
    cells["name"] = 'Odd, "GPU"'
    line = smi.csv_row(cells)
    assert next(csv.reader([line], skipinitialspace=True))[3] == 'Odd, "GPU"'
    assert smi.csv_row(dict.fromkeys(smi.NAMES, "[N/A]")) == ", ".join(["[N/A]"] * len(smi.NAMES))


def test_the_fake_answers_every_clock_and_ecc_counter_the_docs_list() -> None:
    """docs/gpu-telemetry.md, "NVML calls": graphics, SM and memory clocks; both ECC error types, volatile and
    aggregate counters."""
    gpu = h100(0)
    gpu.ecc_volatile, gpu.ecc_aggregate = (1, 0), (7, 2)
    nvml = FakeNvml([gpu])
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    clocks = [pynvml.NVML_CLOCK_GRAPHICS, pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM]
    assert [nvml.nvmlDeviceGetClockInfo(handle, kind) for kind in clocks] == [1980, 1980, 2619]
    corrected, uncorrected = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    counts = {
        (counter, kind): nvml.nvmlDeviceGetTotalEccErrors(handle, kind, counter)
        for counter in (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC)
        for kind in (corrected, uncorrected)
    }
    assert list(counts.values()) == [1, 0, 7, 2]
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_VIDEO)
    gpu.ecc_volatile = None  # a board without ECC: both counters are NotSupported
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetTotalEccErrors(handle, corrected, pynvml.NVML_AGGREGATE_ECC)
