"""Shared fixtures: a private dbus-daemon per test session, hxd processes on sandbox configs, and the CI rule.

Real parts only: dbus-daemon started with --print-address, hxd as a real process with a real NOTIFY_SOCKET, and
busctl as the independent client.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from migrate_support import make_legacy_node, node_config

from hxd import log as hxd_log
from hxd.core.config import Config
from hxsandbox.systemd import MockSystemd, OllamaService
from hxsandbox.world import HxdProcess, NotifySocket, PrivateBus, free_port, wait_until, write_config

REPO = Path(__file__).resolve().parents[1]

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):  # an xfail (strict here) is a test that ran
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped test fails the run: a skip there means a missing package nobody noticed."""
    if os.environ.get("CI") == "true" and _skipped:
        print(f"\nCI=true: {len(_skipped)} test(s) skipped, which fails the run: {', '.join(_skipped)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def quiet_core_logs() -> None:
    """The core logs through structlog, whose loggers keep the configuration of their first use: send every level
    to stderr, as hxctl does, before any test uses the core in this process, so tests that read hxctl's stdout
    in-process see only hxctl's output (and tests that capture log events still see them all)."""
    hxd_log.configure("console", "debug")


@contextmanager
def traversable_by_others(path: Path) -> Iterator[None]:
    """Let other accounts reach ``path`` (o+x on each ancestor that lacks it). Only the search bit is added, never
    read; every mode is put back afterwards."""
    changed: list[tuple[Path, int]] = []
    for directory in path.parents:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            changed.append((directory, stat.S_IMODE(mode)))
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for directory, mode in changed:
            directory.chmod(mode)


@pytest.fixture(scope="session", autouse=True)
def checkout_traversable() -> Iterator[None]:
    """Let other accounts reach this checkout while the tests run, so that tests which run hxctl as ``nobody`` can
    import hxd from it even when it was cloned under ``mktemp -d`` (0700)."""
    with traversable_by_others(Path(__file__).resolve()):
        yield


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


def system_account(name: str) -> tuple[int, int]:
    """(uid, gid) of ``name``, created if absent as packages create theirs (sysusers.d, Ollama's installer): a
    system account with its own group, no home and no login shell. Creating one needs root (CI runs as root)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        assert os.geteuid() == 0, f"the account {name} is missing and only root can create it (CI runs as root)"
        command = ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
        subprocess.run(command, check=True)
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


@pytest.fixture(scope="session")
def ollama_account() -> tuple[int, int]:
    """The account Ollama's files belong to, as on a node."""
    return system_account("ollama")


@contextmanager
def world_traversable_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under /tmp with mode 0755, removed afterwards: other accounts (ollama, nobody) can reach
    what lies in it, which they cannot below pytest's tmp_path (its root is 0700)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        directory.chmod(0o755)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
_UNTIED = re.compile(
    r"<(user|pidfile|servicehelper|includedir)>.*?</\1>|<(fork|syslog|standard_system_servicedirs)/>", re.S
)


def system_like_config(directory: Path) -> Path:
    """Debian's /usr/share/dbus-1/system.conf with only what ties it to the real system changed: it listens in
    ``directory``, and the user switch, fork, pid file, syslog, service activation and the system.d directories are
    removed; the shipped policy (dbus/org.hxinfra.hxd1.conf) is included."""
    assert SYSTEM_CONF.exists(), f"{SYSTEM_CONF} is missing: apt-get install dbus-daemon"
    text = _UNTIED.sub("", SYSTEM_CONF.read_text())
    text = re.sub(r"<listen>.*?</listen>", f"<listen>unix:path={directory / 'bus'}</listen>", text)
    text = text.replace("</busconfig>", f"  <include>{REPO / 'dbus/org.hxinfra.hxd1.conf'}</include>\n</busconfig>")
    path = directory / "system-like.conf"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def system_bus(hxd_user: str) -> Iterator[PrivateBus]:
    """Depends on hxd_user: the policy names that account, and the bus resolves it when it starts."""
    # World-traversable, so that unprivileged users can reach the socket.
    with (
        world_traversable_dir("hxd-system-bus-") as directory,
        PrivateBus(directory, system_like_config(directory)) as bus,
    ):
        yield bus


@pytest.fixture(scope="module")
def hxd_user() -> str:
    """The account the package creates; tests run as root (CI does), so create it the same way if absent."""
    system_account("hxd")
    return "hxd"


@pytest.fixture
def world_tmp(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Like tmp_path, but world-traversable (see world_traversable_dir); one per test."""
    with world_traversable_dir(f"hxd-{request.module.__name__.rsplit('.', 1)[-1].removeprefix('test_')}-") as path:
        yield path


def wait_listening(port: int, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``; fails at once if ``process`` (the one
    that should listen) exits first."""

    def accepts() -> bool:
        assert process is None or process.poll() is None, f"{process.args!r} exited with {process.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    wait_until(accepts, timeout, f"a listener on 127.0.0.1:{port}")


@pytest.fixture
def node(world_tmp: Path, ollama_account: tuple[int, int]) -> Config:
    """A legacy node (the store at the legacy path, not yet migrated) under a directory the ollama user can
    traverse."""
    config = node_config(world_tmp, url=f"http://127.0.0.1:{free_port()}")
    make_legacy_node(config)
    return config


@pytest.fixture
def ollama(bus: PrivateBus, node: Config) -> Iterator[OllamaService]:
    """The Ollama stub as ollama.service of the node, behind the systemd stand-in on the session bus."""
    service = OllamaService(node.paths.env_file, node.paths.state_dir.parent, int(node.ollama.url.rsplit(":", 1)[1]))
    service.workdir.mkdir(parents=True, exist_ok=True)
    service.start("ollama.service")
    with MockSystemd(bus.address, service):
        yield service
    service.stop("ollama.service")


def start_on_node(start_hxd: StartHxd, node: Config, extra_config: str = "") -> HxdProcess:
    """hxd on the node's paths and Ollama, telemetry off."""
    paths = {
        key: getattr(node.paths, key) for key in ("canonical", "bulk", "legacy", "env_file", "log_dir", "state_dir")
    }
    return start_hxd(f'[ollama]\nurl = "{node.ollama.url}"\n[telemetry]\nenabled = false\n{extra_config}', paths=paths)
