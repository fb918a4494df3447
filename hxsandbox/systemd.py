"""systemd, as far as hxd uses it, for the sandbox: the Ollama stub run as "ollama.service", and a stand-in for
``org.freedesktop.systemd1`` on a private bus that starts and stops it.

hxd stops and starts Ollama's unit through systemd's D-Bus API; a private bus has no systemd, so ``make demo``, the
benchmarks and the bus-level tests run this instead. It answers the calls hxd makes (GetUnit, the unit's
ActiveState, Subscribe, StartUnit, StopUnit) and announces each job's end with JobRemoved, as systemd does; the
end-to-end suite checks the same code against the real systemd in a booted Debian 12.
"""

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any

from dbus_fast import DBusError, PropertyAccess
from dbus_fast.annotations import DBusObjectPath, DBusSignature, DBusStr
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from hxd.core.envfile_reader import read_envfile
from hxsandbox.world import BusService, OllamaStub

JobRemovedSignal = Annotated[tuple[int, str, str, str], DBusSignature("uoss")]
UNIT_PATH = "/org/freedesktop/systemd1/unit/ollama_2eservice"


class OllamaService:
    """The stub as the unit: each start reads OLLAMA_MODELS from the env file (EnvironmentFile=, read at every
    exec) and listens on the same port, so clients find it again after a restart."""

    def __init__(
        self, env_file: Path, workdir: Path, port: int, stop_delay: float = 0.0, behaviour: dict[str, Any] | None = None
    ) -> None:
        self.env_file = env_file
        self.behaviour = behaviour  # the stub's behaviour file: delays, token rates, failures (tools/ollama_stub.py)
        self.workdir = workdir
        self.port = port
        self.stop_delay = stop_delay  # to hold a job in its stop phase (tests of Busy, cancellation)
        self.stub: OllamaStub | None = None
        self.calls: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_active(self, unit: str) -> bool:
        return self.stub is not None

    def start(self, unit: str) -> None:
        self.calls.append(f"start {unit}")
        # Every variable of the env file, as EnvironmentFile= passes them; the address is the sandbox's own.
        env = {**read_envfile(self.env_file).environment, "OLLAMA_HOST": f"127.0.0.1:{self.port}"}
        self.stub = OllamaStub(self.workdir, None, self.behaviour).start(env=env)

    def stop(self, unit: str) -> None:
        self.calls.append(f"stop {unit}")
        time.sleep(self.stop_delay)
        if self.stub is not None:
            self.stub.stop()
            self.stub = None


class _Unit(ServiceInterface):
    def __init__(self, service: OllamaService) -> None:
        super().__init__("org.freedesktop.systemd1.Unit")
        self.service = service

    @dbus_property(access=PropertyAccess.READ)
    def ActiveState(self) -> DBusStr:
        return "active" if self.service.is_active("ollama.service") else "inactive"


class _Manager(ServiceInterface):
    def __init__(self, service: OllamaService, unit: str) -> None:
        super().__init__("org.freedesktop.systemd1.Manager")
        self.service = service
        self.unit = unit
        self.jobs = 0
        self._running: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    @dbus_method()
    def GetUnit(self, name: DBusStr) -> DBusObjectPath:
        if name != self.unit:
            raise DBusError("org.freedesktop.systemd1.NoSuchUnit", f"Unit {name} not loaded.")
        return UNIT_PATH

    @dbus_method()
    def Subscribe(self) -> None:
        return None

    @dbus_method()
    async def StartUnit(self, name: DBusStr, mode: DBusStr) -> DBusObjectPath:
        return self._job(name, self.service.start)

    @dbus_method()
    async def StopUnit(self, name: DBusStr, mode: DBusStr) -> DBusObjectPath:
        return self._job(name, self.service.stop)

    def _job(self, name: str, action: Any) -> str:
        """Reply with the job path first, then run it and announce JobRemoved, as systemd does."""
        self.jobs += 1
        job, number = f"/org/freedesktop/systemd1/job/{self.jobs}", self.jobs

        async def run() -> None:
            await asyncio.sleep(0)
            try:
                await asyncio.to_thread(action, name)
                result = "done"
            except Exception:  # systemd reports a failed job by its result; so does the stand-in
                result = "failed"
            self.JobRemoved(number, job, name, result)

        task = asyncio.get_running_loop().create_task(run())
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return job

    @dbus_signal()
    def JobRemoved(self, id_: int, job: str, unit: str, result: str) -> JobRemovedSignal:
        return id_, job, unit, result


class MockSystemd(BusService):
    """``with MockSystemd(address, service):`` owns org.freedesktop.systemd1 on that bus, in its own thread."""

    def __init__(self, address: str, service: OllamaService, unit: str = "ollama.service") -> None:
        super().__init__(
            address,
            "org.freedesktop.systemd1",
            {"/org/freedesktop/systemd1": _Manager(service, unit), UNIT_PATH: _Unit(service)},
        )
