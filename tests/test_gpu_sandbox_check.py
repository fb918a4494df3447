"""tools/gpu-sandbox-check on this machine, against the fake NVML and the fake nvidia-smi: every emulation it can
apply here is applied and seen to hold, the sample still agrees, and a sample that a setting breaks is blamed on
that setting alone."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from hxsandbox import fakesmi
from hxsandbox.fakenvml import FakeNvml, h100

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu-sandbox-check"
EMULATED = (
    "ProcSubset=pid, ProtectProc=invisible: /proc/sys and /proc/driver hidden",
    "MemoryDenyWriteExecute=yes: a writable and executable mapping is refused",
    "NoNewPrivileges=yes: PR_GET_NO_NEW_PRIVS is 1",
)


def load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gpu_sandbox_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_sandbox_check", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def as_root() -> None:
    assert os.geteuid() == 0, "the script mounts procfs in a mount namespace, so it must run as root (CI does)"


def test_emulated_sandbox_agrees_with_nvidia_smi(tmp_path: Path) -> None:
    """The script as an operator runs it (its own process, --fake-nvml): kernel 6.3+ with systemd-analyze and
    libseccomp here, so all four emulations apply; the rest is listed as unverified; the two fake GPUs agree."""
    smi = fakesmi.install(tmp_path, "--gpus", "2")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--fake-nvml", "2", "--nvidia-smi", str(smi)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    emulated = out.split("emulated:\n", 1)[1].split("not emulated (unverified here):\n", 1)[0].splitlines()
    assert [line.strip() for line in emulated[:3]] == list(EMULATED)
    assert re.fullmatch(
        r"  SystemCallFilter=, SystemCallErrorNumber=, SystemCallArchitectures=native: \d{3} calls allowed; "
        r"sched_setaffinity \(@resources\) refused with EPERM",
        emulated[3],
    )
    assert "  DevicePolicy=closed, DeviceAllow=: needs a BPF device program systemd attaches" in out
    assert out.endswith("2 GPU(s): hxd agrees with nvidia-smi\n")


class FilteredNvml(FakeNvml):
    """A fake NVML whose nvmlInit makes a system call outside @system-service minus @resources, as a driver library
    might: refused (EPERM) under the filter, which NVML reports as Unknown Error."""

    def nvmlInit(self) -> None:
        try:
            os.sched_setaffinity(0, os.sched_getaffinity(0))
        except PermissionError:
            raise self._error(999) from None
        super().nvmlInit()


def test_a_sample_the_filter_breaks_is_blamed_on_the_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smi = fakesmi.install(tmp_path, "--gpus", "1")
    code = load().main(["--nvidia-smi", str(smi)], nvml=FilteredNvml([h100(0)]))
    out = capsys.readouterr().out
    assert code == 6, out
    blame = out.split("NVML failed under the emulation, while nvidia-smi sees 1 GPU(s): NVML: Unknown Error\n")[1]
    assert blame.splitlines() == [
        "  ProcSubset=pid, ProtectProc=invisible alone: samples",
        "  MemoryDenyWriteExecute=yes alone: samples",
        "  NoNewPrivileges=yes alone: samples",
        "  SystemCallFilter=, SystemCallErrorNumber=, SystemCallArchitectures=native alone: fails: NVML: Unknown Error",
    ]


def test_nvml_that_fails_outside_the_sandbox_too_is_not_blamed_on_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    smi = fakesmi.install(tmp_path, "--gpus", "1")
    code = load().main(["--nvidia-smi", str(smi)], nvml=FakeNvml(init_error=9))
    out = capsys.readouterr().out
    assert code == 6
    assert out.rstrip().endswith(
        "it fails without any emulation too, so not the sandbox: NVML: Driver Not Loaded; "
        "the NVIDIA kernel driver is not loaded; check `nvidia-smi` and `dmesg`"
    )


def test_without_nvidia_smi_there_is_nothing_to_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load().main(["--fake-nvml", "1", "--nvidia-smi", str(tmp_path / "none")]) == 7
    assert f"gpu-sandbox-check: nothing to compare with: {tmp_path}/none: not found" in capsys.readouterr().err
