"""GPU facts spelled the way ``nvidia-smi --query-gpu=... --format=csv`` spells them.

The CSV log replaces a cron'd nvidia-smi, so its header, units, rounding and absent-value tokens are nvidia-smi's
(docs/gpu-telemetry.md, "CSV format" and "Absent values", nvidia_gpu_exporter's byte-verified spelling): existing
parsers keep working and ``hxctl telemetry --compare`` can compare the two cell by cell. One deliberate difference: the
``timestamp`` is UTC ISO-8601 (``2026-07-14T08:12:53Z``), since nvidia-smi's zoneless local time is ambiguous.
"""

from __future__ import annotations

from collections.abc import Mapping

# (field, unit) in column order: the fields of the telemetry issue, then mig.mode.current ("MIG mode noted").
FIELDS: tuple[tuple[str, str], ...] = (
    ("timestamp", ""),
    ("index", ""),
    ("uuid", ""),
    ("name", ""),
    ("pci.bus_id", ""),
    ("driver_version", ""),
    ("pstate", ""),
    ("temperature.gpu", ""),  # nvidia-smi prints no unit for it, in the header or the value
    ("utilization.gpu", "%"),
    ("utilization.memory", "%"),
    ("memory.total", "MiB"),
    ("memory.used", "MiB"),
    ("memory.free", "MiB"),
    ("power.draw", "W"),
    ("power.limit", "W"),
    ("enforced.power.limit", "W"),
    ("clocks.current.sm", "MHz"),
    ("clocks.current.memory", "MHz"),
    ("fan.speed", "%"),
    ("clocks_event_reasons.active", ""),
    ("ecc.errors.corrected.volatile.total", ""),
    ("ecc.errors.uncorrected.volatile.total", ""),
    ("mig.mode.current", ""),
)
NAMES = tuple(name for name, _ in FIELDS)
# The header line, e.g. ``..., memory.used [MiB], ...``; also what nvidia-smi prints for QUERY.
HEADER = ", ".join(f"{name} [{unit}]" if unit else name for name, unit in FIELDS)
# The argument of ``nvidia-smi --query-gpu=`` that asks for the same columns.
QUERY = ",".join(NAMES)

NOT_AVAILABLE = "[N/A]"
# What nvidia-smi prints in a cell whose NVML call failed, by pynvml's error class (nvidia_gpu_exporter's tok());
# any other error prints UNKNOWN_ERROR.
TOKENS = {
    "NVMLError_NotSupported": NOT_AVAILABLE,
    "NVMLError_NoPermission": "[Insufficient Permissions]",
    "NVMLError_Deprecated": "[Requested functionality has been deprecated]",
    "NVMLError_FunctionNotFound": "[Function Not Found]",
}
UNKNOWN_ERROR = "[Unknown Error]"

_MIB = 1024 * 1024


def mib(count: int) -> str:
    """Bytes as nvidia-smi prints MiB: rounded up, so total, used and free need not add up."""
    return f"{-(-count // _MIB)} MiB"


def watts(milliwatts: int) -> str:
    return f"{milliwatts / 1000:.2f} W"


def mhz(value: int) -> str:
    return f"{value} MHz"


def percent(value: int) -> str:
    return f"{value} %"


def pstate(value: int) -> str:
    return f"P{value}"


def bitmask(value: int) -> str:
    return f"0x{value:016x}"


def mig_mode(enabled: bool) -> str:
    return "Enabled" if enabled else "Disabled"


def csv_row(cells: Mapping[str, str]) -> str:
    """One line of ``cells`` in NAMES order, joined with nvidia-smi's ``", "``.

    nvidia-smi never quotes; a cell that would break the line (a comma or quote in a GPU name) is quoted the RFC
    4180 way, which ``csv.reader(..., skipinitialspace=True)`` reads back.
    """
    return ", ".join(_cell(cells[name]) for name in NAMES)


def _cell(value: str) -> str:
    if any(ch in value for ch in ',"\r\n') or value[:1].isspace():
        return '"' + value.replace('"', '""') + '"'
    return value
