"""The /metrics endpoint's own error handling: a failing render is a 500 for that scrape, never a dead endpoint."""

from __future__ import annotations

import asyncio
import socket

from hxd.metrics.server import serve


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
        server = await serve(sock, render)
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
