"""The /metrics HTTP endpoint: a socket from systemd (hxd.socket, sd_listen_fds(3)) or one hxd binds itself.

Deliberately tiny: one GET per connection, no keep-alive, bounded request size and time, so a slow or hostile
client cannot hold the daemon. It serves what the engine already knows and never starts work.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

from hxd.metrics.exposition import CONTENT_TYPE

log = structlog.get_logger("hxd.metrics")

SD_LISTEN_FDS_START = 3
_MAX_REQUEST = 8192
_REQUEST_TIMEOUT_SEC = 5.0


def listen_fds() -> list[socket.socket]:
    """Sockets passed by systemd, per sd_listen_fds(3); the variables are cleared so children do not inherit them."""
    pid, count = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if not count or pid != str(os.getpid()):
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT`` (config key metrics.listen)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(16)
    return sock


def _response(status: str, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + payload


async def serve(sock: socket.socket, render: Callable[[], str]) -> asyncio.Server:
    """Serve ``GET /metrics`` on ``sock`` with the text ``render()`` returns."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await answer(reader))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def answer(reader: asyncio.StreamReader) -> bytes:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_SEC):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return _response("400 Bad Request", "expected an HTTP request for /metrics\n")
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", "only GET /metrics\n")
        if target.split("?", 1)[0] != "/metrics":
            return _response("404 Not Found", "hxd serves /metrics only\n")
        try:
            reply = _response("200 OK", render(), CONTENT_TYPE)
        except Exception:  # a bug in hxd, not the client's fault; the scrape fails visibly and hxd serves on
            log.exception("cannot render /metrics")
            return _response("500 Internal Server Error", "hxd could not render its metrics; see journalctl -u hxd\n")
        return reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" if method == "HEAD" else reply

    sock.setblocking(False)
    return await asyncio.start_server(handle, sock=sock, limit=_MAX_REQUEST)
