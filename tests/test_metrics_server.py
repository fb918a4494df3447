"""The /metrics endpoint's own error handling: a failing render is a 500 for that scrape, never a dead endpoint; idle
connections, over the cap or past the timeout, and accept errors cost a log line a minute, never a traceback."""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import structlog

from hxd.metrics import server as server_module
from hxd.metrics.server import MAX_CONNECTIONS, serve


async def scrape(port: int, request: bytes = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    reply = await reader.read()
    writer.close()
    return reply


def test_a_render_that_fails_is_a_500_and_the_next_scrape_is_served() -> None:
    answers = iter([RuntimeError("a bug"), "hxd_up 1\n"])

    def render() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def run() -> tuple[bytes, bytes, bytes]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = serve([sock], render)
        port = sock.getsockname()[1]
        try:
            return await scrape(port), await scrape(port), await scrape(port, b"garbage\r\n\r\n")
        finally:
            server.close()

    failed, served, garbage = asyncio.run(run())
    assert failed.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"see journalctl -u hxd" in failed
    assert served.startswith(b"HTTP/1.1 200 OK\r\n") and served.endswith(b"\r\n\r\nhxd_up 1\n")
    assert garbage.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock


@contextmanager
def open_files(count: int) -> Iterator[None]:
    """Room for ``count`` more descriptors in this process (both ends of every connection live here)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, soft + count)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_connections_over_the_cap_close_the_oldest_and_a_scrape_is_served() -> None:
    async def run() -> tuple[bytes, float, int, int]:
        sock = listener()
        port = sock.getsockname()[1]
        server = serve([sock], lambda: "hxd_up 1\n")
        idle = []
        for _ in range(2000):
            idle.append(await asyncio.open_connection("127.0.0.1", port))
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)
        held = len(server._connections)
        start = time.monotonic()
        reply = await scrape(port)
        took = time.monotonic() - start
        await asyncio.sleep(0.1)
        closed = sum(reader.at_eof() for reader, _ in idle)
        for _, writer in idle:
            writer.close()
        server.close()
        return reply, took, held, closed

    with open_files(4500), structlog.testing.capture_logs() as logs:
        reply, took, held, closed = asyncio.run(run())
    assert reply.endswith(b"\r\n\r\nhxd_up 1\n") and took < 1
    assert held == MAX_CONNECTIONS
    assert closed >= 2000 - MAX_CONNECTIONS  # the oldest were closed to make room
    [line] = logs  # one line for the burst, no traceback
    assert line["event"].startswith("closed /metrics connections early") and line["log_level"] == "warning"
    assert line["over_cap"] >= 1


def test_an_idle_connection_is_closed_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT_SEC", 0.2)

    async def run() -> tuple[bytes, float]:
        sock = listener()
        server = serve([sock], lambda: "hxd_up 1\n")
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        start = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        server.close()
        return data, time.monotonic() - start

    with structlog.testing.capture_logs() as logs:
        data, took = asyncio.run(run())
    assert data == b"" and 0.1 < took < 2
    assert [(line["event"][:33], line.get("timed_out")) for line in logs] == [("closed /metrics connections early", 1)]


def test_accept_errors_are_counted_and_serving_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> bytes:
        loop = asyncio.get_running_loop()
        accept = loop.sock_accept
        failures = iter([OSError(errno.EMFILE, "Too many open files")] * 3)

        async def short_of_descriptors(sock: socket.socket) -> tuple[socket.socket, object]:
            failure = next(failures, None)
            if failure is not None:
                raise failure
            return await accept(sock)

        monkeypatch.setattr(loop, "sock_accept", short_of_descriptors)
        sock = listener()
        server = serve([sock], lambda: "hxd_up 1\n")
        try:
            return await scrape(sock.getsockname()[1])
        finally:
            server.close()

    with structlog.testing.capture_logs() as logs:
        assert asyncio.run(run()).endswith(b"hxd_up 1\n")
    [line] = logs
    assert line["accept_failed_EMFILE"] >= 1 and "exc_info" not in line
