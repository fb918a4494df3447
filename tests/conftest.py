"""Shared fixtures: a private dbus-daemon per test session, hxd processes on sandbox configs, and the CI rule.

Real parts only: dbus-daemon started with --print-address, hxd as a real process with a real NOTIFY_SOCKET, and
busctl as the independent client.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hxd.sandbox import HxdProcess, NotifySocket, PrivateBus, write_config

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped test fails the run: a skip there means a missing package nobody noticed."""
    if os.environ.get("CI") == "true" and _skipped:
        print(f"\nCI=true: {len(_skipped)} test(s) skipped, which fails the run: {', '.join(_skipped)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def checkout_traversable() -> Iterator[None]:
    """Let other accounts reach this checkout while the tests run (o+x on each ancestor that lacks it), so that
    tests which run hxctl as ``nobody`` can import hxd from it even when it was cloned under ``mktemp -d`` (0700).
    Only the search bit is added, never read; every mode is put back afterwards."""
    changed: list[tuple[Path, int]] = []
    for directory in Path(__file__).resolve().parents:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            changed.append((directory, stat.S_IMODE(mode)))
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    yield
    for directory, mode in changed:
        directory.chmod(mode)


@pytest.fixture(scope="session")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBus]:
    """One private session-type bus for the whole test session."""
    with PrivateBus(tmp_path_factory.mktemp("bus")) as private_bus:
        yield private_bus


StartHxd = Callable[..., HxdProcess]


@pytest.fixture
def start_hxd(bus: PrivateBus, tmp_path: Path) -> Iterator[StartHxd]:
    """Start hxd on the session bus with a sandbox config; every process is stopped (and checked) afterwards."""
    processes: list[HxdProcess] = []
    notify_sockets: list[NotifySocket] = []

    def start(
        extra_config: str = "",
        *,
        wait: bool = True,
        address: str | None = None,
        paths: dict[str, Path] | None = None,
        **kwargs: object,
    ) -> HxdProcess:
        root = tmp_path / f"hxd{len(processes)}"
        root.mkdir(exist_ok=True)
        notify = NotifySocket(root / "notify")
        notify_sockets.append(notify)
        hxd = HxdProcess(address or bus.address, write_config(root, extra_config, paths), notify, **kwargs)  # type: ignore[arg-type]
        processes.append(hxd)
        hxd.start()
        if wait:
            hxd.wait_ready()
        return hxd

    yield start
    for hxd in processes:
        with hxd:
            if hxd.process is not None and hxd.process.poll() is None:
                hxd.stop()
    for notify in notify_sockets:
        notify.close()
