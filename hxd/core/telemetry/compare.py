"""hxd's GPU sample against nvidia-smi's, field by field, and what to suspect when only nvidia-smi can sample.

``hxctl telemetry --compare`` compares what hxd reads inside its sandbox (SampleTelemetry) with nvidia-smi run
outside it; ``hxctl --offline telemetry --compare`` compares this process's sample; tools/gpu-sandbox-check
compares a sample taken under an emulation of the unit's sandbox. All three use the rules here, so a field agrees or
differs for the same reason everywhere.

- The header must be identical: column names and units, nvidia-smi's against hxd's CSV header.
- Compared exactly (they do not change between two reads): index, uuid, name, pci.bus_id, driver_version,
  memory.total, power.limit, enforced.power.limit, the ECC counts, mig.mode.current, and every ``[N/A]``-like
  token (a field one side supports and the other does not is a difference).
- Compared with a tolerance, since the two reads are a fraction of a second apart and these move (TOLERANCES):
  temperature.gpu +-2, utilization.* +-10 points, memory.used/free +-32 MiB (less than any GPU's reserved memory,
  so counting reserved memory as used still shows), power.draw +-10 % or 10 W, clocks +-10 %, fan.speed +-5
  points. Meant for an idle or steadily loaded GPU.
- Shown, not compared: timestamp (hxd writes UTC ISO-8601, nvidia-smi local time), pstate and
  clocks_event_reasons.active (both follow the load from one moment to the next).

When NVML fails inside hxd and nvidia-smi works outside, the NVML error names the kind of refusal, and ``suspects``
says which of hxd.service's settings can cause it and how to confirm each (docs/gpu-telemetry.md, "Self-check").
"""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hxd.core.errors import Failed
from hxd.core.telemetry import smi

EXACT = (
    "index",
    "uuid",
    "name",
    "pci.bus_id",
    "driver_version",
    "memory.total",
    "power.limit",
    "enforced.power.limit",
    "ecc.errors.corrected.volatile.total",
    "ecc.errors.uncorrected.volatile.total",
    "mig.mode.current",
)
# field -> (absolute tolerance in the field's unit, relative tolerance); the larger one applies.
TOLERANCES = {
    "temperature.gpu": (2.0, 0.0),
    "utilization.gpu": (10.0, 0.0),
    "utilization.memory": (10.0, 0.0),
    "memory.used": (32.0, 0.0),
    "memory.free": (32.0, 0.0),
    "power.draw": (10.0, 0.10),
    "clocks.current.sm": (0.0, 0.10),
    "clocks.current.memory": (0.0, 0.10),
    "fan.speed": (5.0, 0.0),
}
SHOWN = ("timestamp", "pstate", "clocks_event_reasons.active")
assert set(EXACT) | set(TOLERANCES) | set(SHOWN) == set(smi.NAMES), "every field has a rule"

# Tokens that mean hxd's call was refused (not "this GPU has no such sensor"): where nvidia-smi read a value, a
# setting of the sandbox refused something nvidia-smi was allowed.
_REFUSED = {smi.TOKENS["NVMLError_NoPermission"], smi.UNKNOWN_ERROR}


class SmiFailed(Failed):
    """nvidia-smi is missing or failed here: there is nothing to compare with. The message says why."""


@dataclass(frozen=True)
class SmiTable:
    """What ``nvidia-smi --query-gpu=<hxd's fields> --format=csv`` printed: its header cells and a dict per GPU keyed
    by hxd's field names."""

    header: list[str]
    gpus: list[dict[str, str]]


@dataclass(frozen=True)
class Comparison:
    """The side-by-side listing (lines to print) and how many differences it marks."""

    lines: list[str]
    differences: int
    gpus: int


@dataclass(frozen=True)
class Suspect:
    """A setting of hxd.service that can make NVML fail inside hxd only: why, and how to confirm it is the one."""

    setting: str
    why: str
    confirm: str


def run_nvidia_smi(binary: str = "nvidia-smi", timeout: float = 60.0) -> SmiTable:
    """Run nvidia-smi for hxd's columns; SmiFailed when it is missing, fails or prints something else."""
    command = [binary, f"--query-gpu={smi.QUERY}", "--format=csv"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SmiFailed(f"{binary}: not found; install the NVIDIA driver's utilities or pass --nvidia-smi") from None
    except subprocess.TimeoutExpired:
        raise SmiFailed(f"{binary} did not answer within {timeout:g} s; check `dmesg` for a hung driver") from None
    except OSError as exc:
        raise SmiFailed(f"{binary}: cannot run it: {exc.strerror}") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().replace("\n", " / ")
        raise SmiFailed(f"{binary} failed with exit status {result.returncode}: {output}")
    lines = list(csv.reader(result.stdout.splitlines(), skipinitialspace=True))
    if not lines or any(len(row) != len(smi.NAMES) for row in lines):
        raise SmiFailed(f"{binary} did not print {len(smi.NAMES)} columns per line: {result.stdout[:200]!r}")
    header, *rows = lines
    return SmiTable(header, [dict(zip(smi.NAMES, row, strict=True)) for row in rows])


def number(text: str) -> float | None:
    """The number in a cell such as ``631.95 W`` or ``59``; None for a token such as ``[N/A]``."""
    try:
        return float(text.split(" ", 1)[0])
    except ValueError:
        return None


def verdict(field: str, theirs: str, ours: str) -> str:
    """Why ``theirs`` (nvidia-smi's cell) and ``ours`` (hxd's) disagree under the field's rule; empty when they
    agree."""
    if field in SHOWN or theirs == ours:
        return ""
    if ours in _REFUSED and not theirs.startswith("["):  # nvidia-smi printed a value, not a token
        return "differs: hxd's NVML call was refused where nvidia-smi's was not (a sandbox setting, see hxctl(1))"
    if field in EXACT:
        return "differs"
    a, b = number(theirs), number(ours)
    if a is None or b is None:
        return "differs"
    absolute, relative = TOLERANCES[field]
    limit = max(absolute, relative * max(abs(a), abs(b)))
    return "" if abs(a - b) <= limit else f"differs by {abs(a - b):g}, more than {limit:g}"


def compare(table: SmiTable, ours: Sequence[Mapping[str, str]]) -> Comparison:
    """nvidia-smi's table against hxd's rows (``recorder.rows``: cells keyed by field name, and ``state``), GPUs
    matched by uuid (by index for a GPU lost before hxd read its uuid); every field of both side by side, each
    difference marked ``<- why``."""
    lines: list[str] = []
    problems = 0
    expected = smi.HEADER.split(", ")
    for column, (their_name, our_name) in enumerate(zip(table.header, expected, strict=True)):
        if their_name != our_name:
            lines.append(f"header column {column}: nvidia-smi {their_name!r}, hxd {our_name!r}")
            problems += 1
    by_uuid = {gpu["uuid"]: gpu for gpu in ours if gpu.get("uuid")}
    # A GPU lost before hxd ever read its uuid is known by its index only (stable between two reads, not boots).
    by_index = {gpu["index"]: gpu for gpu in ours if not gpu.get("uuid")}
    for their_gpu in table.gpus:
        our_gpu = by_uuid.pop(their_gpu["uuid"], None) or by_index.pop(their_gpu["index"], None)
        lines += ["", f"GPU {their_gpu['index']} {their_gpu['uuid']} ({their_gpu['name']})"]
        if our_gpu is None or our_gpu.get("state", "ok") != "ok":
            lines.append(f"  {our_gpu['state'] if our_gpu else 'not'} in hxd's sample")
            problems += 1
            continue
        lines.append(f"  {'field':<38}  {'nvidia-smi':<40}  hxd")
        for field, heading in zip(smi.NAMES, expected, strict=True):
            why = verdict(field, their_gpu[field], our_gpu[field])
            note = f"  <- {why}" if why else ("  (not compared)" if field in SHOWN else "")
            lines.append(f"  {heading:<38}  {their_gpu[field]:<40}  {our_gpu[field]:<40}{note}".rstrip())
            problems += bool(why)
    for gpu in [*by_uuid.values(), *by_index.values()]:
        lines += ["", f"GPU {gpu['index']} {gpu.get('uuid') or '(uuid unknown)'}: in hxd's sample, not in nvidia-smi's"]
        problems += 1
    verdict_line = f"{problems} difference(s)" if problems else "hxd agrees with nvidia-smi"
    lines += ["", f"{len(table.gpus)} GPU(s): {verdict_line}"]
    return Comparison(lines[1:] if lines[0] == "" else lines, problems, len(table.gpus))


def _relax(line: str) -> str:
    """How to confirm a suspect: relax that one setting, restart, compare again, undo."""
    return (
        f"`systemctl edit hxd` with [Service] {line}, then `systemctl restart hxd` and `hxctl telemetry --compare`: "
        "if it agrees now, this is the setting; undo with `systemctl revert hxd`"
    )


_MAIN_PID = '"$(systemctl show --property=MainPID --value hxd)"'
DEVICES = Suspect(
    "DevicePolicy=closed with DeviceAllow=",
    "the device cgroup answers EPERM when hxd opens /dev/nvidiactl or /dev/nvidiaN, and NVML reports that as "
    '"Unknown Error" (as in containers whose device rules were dropped); a DeviceAllow=char-NAME whose NAME is not '
    "in /proc/devices allows nothing, silently",
    "`grep nvidia /proc/devices` must list the names `systemctl show --property=DeviceAllow hxd` allows rw, with "
    "the majors of `ls -l /dev/nvidiactl /dev/nvidia[0-9]*`; or " + _relax("DevicePolicy=auto"),
)
PRIVATE_DEVICES = Suspect(
    "PrivateDevices=",
    "with PrivateDevices=yes hxd's /dev has no /dev/nvidia* nodes, and NVML reports the driver as not loaded",
    f"`nsenter --target {_MAIN_PID} --mount ls -l /dev/nvidiactl /dev/nvidia0`; or " + _relax("PrivateDevices=no"),
)
MISSING_NODES = Suspect(
    "NoNewPrivileges=yes (device nodes not created yet)",
    "when /dev/nvidia0 or /dev/nvidiactl do not exist yet, NVML runs the setuid nvidia-modprobe to create them; "
    "under NoNewPrivileges=yes that cannot gain root, while nvidia-smi run by root just did it",
    "run `hxctl telemetry --compare` again: if it agrees now, nvidia-smi created the nodes; have them created at "
    "boot (nvidia-persistenced, or the driver package's udev rule)",
)
SYSCALLS = Suspect(
    "SystemCallFilter=",
    "a system call outside @system-service (or in @resources or @obsolete) fails with EPERM inside hxd only",
    "tools/gpu-sandbox-check applies the same filter without systemd; or " + _relax("SystemCallFilter="),
)
MDWE = Suspect(
    "MemoryDenyWriteExecute=yes",
    "a mapping that is writable and executable, or made executable later, is refused; loading libnvidia-ml.so.1 "
    "fails then, which NVML's bindings report as the library not found",
    "tools/gpu-sandbox-check applies the same prctl without systemd; or " + _relax("MemoryDenyWriteExecute=no"),
)
PROC = Suspect(
    "ProcSubset=pid / ProtectProc=invisible",
    "/proc/driver/nvidia (driver parameters, MIG capability minors) is hidden from hxd",
    "tools/gpu-sandbox-check mounts procfs the same way; or " + _relax("ProcSubset=all and ProtectProc=default"),
)
FILES = Suspect(
    "ProtectSystem=strict / ProtectHome= / InaccessiblePaths=",
    "the NVML library is under a path hidden or replaced inside hxd's mount namespace",
    f"`nsenter --target {_MAIN_PID} --mount ls -lL $(ldconfig -p | grep -o '/.*libnvidia-ml.so.1')`",
)
PERMISSIONS = Suspect(
    "User=hxd (device node modes) or an LSM",
    "NVML got EACCES opening a device node: the nodes' mode or group (NVreg_DeviceFileMode, ...GID) or an "
    "AppArmor/SELinux rule keeps the hxd account out, though its CAP_DAC_OVERRIDE covers plain modes",
    "`ls -l /dev/nvidia*`, `systemctl show --property=AmbientCapabilities hxd`, and "
    "`setpriv --reuid=hxd --regid=hxd --init-groups nvidia-smi -L`",
)

# (text in hxd's reason, what it means, the settings to suspect, most likely first). The texts are NVML's error
# strings as nvidia-ml-py spells them (hxd's reason is "NVML: <string>; <advice>") and hxd's own reasons.
_RULES: tuple[tuple[str, str, tuple[Suspect, ...]], ...] = (
    ("NVML: Unknown Error", "NVML could not open or use a device node", (DEVICES, SYSCALLS, MDWE, PROC)),
    ("NVML: Insufficient Permissions", "a device node could not be opened", (PERMISSIONS, DEVICES)),
    ("NVML: Driver Not Loaded", "NVML found no NVIDIA device nodes", (PRIVATE_DEVICES, MISSING_NODES, DEVICES)),
    ("NVML: NVML Shared Library Not Found", "libnvidia-ml.so.1 could not be loaded", (MDWE, SYSCALLS, FILES)),
)
# Reasons that no setting of the unit explains, with what to do instead.
_NOT_THE_SANDBOX = (
    ("cannot import pynvml", "hxd's own copy of nvidia-ml-py is missing: reinstall the hxd package"),
    ("version mismatch", "hxd loaded the NVML library of the driver before its upgrade: `systemctl restart hxd`"),
    ("did not answer within", "an NVML call inside hxd is stuck and holds up new samples: `systemctl restart hxd`"),
)


@dataclass(frozen=True)
class Diagnosis:
    """What hxd's failure means, and the settings to suspect (none when the cause is not the sandbox)."""

    meaning: str
    suspects: tuple[Suspect, ...]


def diagnose(reason: str) -> Diagnosis:
    """Why NVML may fail inside hxd while nvidia-smi works outside, from hxd's reason (SampleTelemetry's error)."""
    for marker, advice in _NOT_THE_SANDBOX:
        if marker in reason:
            return Diagnosis(f"not a sandbox setting: {advice}", ())
    for marker, meaning, suspects in _RULES:
        if marker in reason:
            return Diagnosis(meaning, suspects)
    return Diagnosis("an error no rule here recognizes", (DEVICES, SYSCALLS, MDWE, PROC, PRIVATE_DEVICES, FILES))


def explain(diagnosis: Diagnosis) -> list[str]:
    """The diagnosis as lines to print: the meaning, then each suspect with why and how to confirm."""
    lines = [f"meaning: {diagnosis.meaning}"]
    for rank, suspect in enumerate(diagnosis.suspects):
        lines.append(f"{'likely at fault' if rank == 0 else 'else'}: {suspect.setting} in hxd.service: {suspect.why}")
        lines.append(f"  confirm: {suspect.confirm}")
    return lines
