"""The /metrics HTTP endpoint: a socket from systemd (hxd.socket, sd_listen_fds(3)) or one hxd binds itself.

Deliberately tiny: one GET per connection, no keep-alive, bounded request size and time, so a slow or hostile
client cannot hold the daemon. It serves what the engine already knows and never starts work.

Its own accept loop rather than ``asyncio.start_server``, for two limits a local user cannot get around: at most
MAX_CONNECTIONS connections at once, and IDLE_TIMEOUT_SEC for each to send its request and take the answer. At the
cap the oldest connection is closed to make room, so hxd's descriptors stay bounded while a scrape, which sends its
request at once, is still served among any number of idle connections (closing the newest instead would let a few
idle ones lock every scrape out). What is closed early, and accept errors such as EMFILE, are counted and logged at
most once a minute, never a traceback per connection.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence

import structlog

from hxd.metrics.exposition import CONTENT_TYPE

log = structlog.get_logger("hxd.metrics")

SD_LISTEN_FDS_START = 3
# Connections served at once (Prometheus holds one per scrape; a few scrapers need a few).
MAX_CONNECTIONS = 64
# Seconds a connection gets to send its request and to take the answer (a scrape sends at once).
IDLE_TIMEOUT_SEC = 5.0
# At most one log line this often about connections closed early.
LOG_EVERY_SEC = 60.0
_MAX_REQUEST = 8192
# accept(2) errors that say hxd or the system is short of a resource: wait a little and accept again.
_SHORT_OF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RETRY_SEC = 0.1


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
    """A listening TCP socket on ``HOST:PORT`` (config key metrics.listen), with hxd.socket's backlog (systemd's
    default, SOMAXCONN): a burst of connections waits in the kernel for the accept loop instead of being dropped."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(socket.SOMAXCONN)
    return sock


def _response(status: str, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + payload


class _Drops:
    """Connections closed early, by reason, logged in one line at most every LOG_EVERY_SEC: the first at once,
    later ones when the minute is up (so every count is reported, and a flood costs one line a minute)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._counts: Counter[str] = Counter()
        self._last = -LOG_EVERY_SEC
        self._pending: asyncio.TimerHandle | None = None

    def note(self, reason: str) -> None:
        self._counts[reason] += 1
        if self._pending is None:
            delay = max(0.0, self._last + LOG_EVERY_SEC - self._loop.time())
            self._pending = self._loop.call_later(delay, self._write)

    def _write(self) -> None:
        self._pending, self._last = None, self._loop.time()
        log.warning(
            "closed /metrics connections early (counts since the last such line; at most one a minute)",
            max_connections=MAX_CONNECTIONS,
            idle_timeout_sec=IDLE_TIMEOUT_SEC,
            **dict(self._counts),
        )
        self._counts.clear()

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()


class MetricsServer:
    """Serves ``GET /metrics`` on listening sockets until ``close``: every socket hxd.socket passes (an operator's
    drop-in may add a ListenStream= on the address Prometheus scrapes), one accept loop each, and one bound on
    connections for all of them."""

    def __init__(self, socks: Sequence[socket.socket], render: Callable[[], str]) -> None:
        self._render = render
        self._drops = _Drops()
        self._connections: dict[socket.socket, asyncio.Task[None]] = {}  # oldest first
        for sock in socks:
            sock.setblocking(False)
        self._accepting = [asyncio.create_task(self._accept(sock)) for sock in socks]

    def close(self) -> None:
        """Stop accepting and drop every connection; the sockets are closed as their tasks end."""
        for accepting in self._accepting:
            accepting.cancel()
        for task in self._connections.values():
            task.cancel()
        self._drops.close()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    conn, _ = await loop.sock_accept(sock)
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue  # the client left before it was accepted
                except OSError as exc:
                    if exc.errno not in _SHORT_OF:
                        log.error("the /metrics socket failed; /metrics is off until hxd restarts", error=str(exc))
                        return
                    self._drops.note(f"accept_failed_{errno.errorcode[exc.errno]}")
                    await asyncio.sleep(_RETRY_SEC)
                    continue
                if len(self._connections) >= MAX_CONNECTIONS:
                    self._connections.pop(next(iter(self._connections))).cancel()  # the oldest
                    self._drops.note("over_cap")
                self._connections[conn] = task = asyncio.create_task(self._serve(conn))
                task.add_done_callback(functools.partial(self._closed, conn))
                # One accept per turn of the loop: a dropped connection's descriptor is released right after, and
                # the bus is served between accepts however fast connections come.
                await asyncio.sleep(0)
        finally:
            sock.close()  # here, after the loop has stopped watching it: its number may be reused at once

    def _closed(self, conn: socket.socket, _: asyncio.Task[None]) -> None:
        """A connection's task ended, however (served, timed out, dropped, even before it ran): close its socket,
        after the loop has stopped watching it."""
        self._connections.pop(conn, None)
        conn.close()

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(IDLE_TIMEOUT_SEC):
                reply = await self._answer(conn)
                if reply:
                    await loop.sock_sendall(conn, reply)
        except TimeoutError:
            self._drops.note("timed_out")
        except OSError:
            pass  # the client went away: nothing to say to it

    async def _answer(self, conn: socket.socket) -> bytes:
        """The reply to the request on ``conn``; empty when the client closed before sending one."""
        loop = asyncio.get_running_loop()
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > _MAX_REQUEST:
                return _response("400 Bad Request", "expected an HTTP request for /metrics\n")
            data = await loop.sock_recv(conn, 4096)
            if not data:
                return b""
            head += data
        try:
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except ValueError:
            return _response("400 Bad Request", "expected an HTTP request for /metrics\n")
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", "only GET /metrics\n")
        if target.split("?", 1)[0] != "/metrics":
            return _response("404 Not Found", "hxd serves /metrics only\n")
        try:
            reply = _response("200 OK", self._render(), CONTENT_TYPE)
        except Exception:  # a bug in hxd, not the client's fault; the scrape fails visibly and hxd serves on
            log.exception("cannot render /metrics")
            return _response("500 Internal Server Error", "hxd could not render its metrics; see journalctl -u hxd\n")
        return reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n" if method == "HEAD" else reply


def serve(socks: Sequence[socket.socket], render: Callable[[], str]) -> MetricsServer:
    """Serve ``GET /metrics`` on ``socks`` with the text ``render()`` returns (call on the running loop)."""
    return MetricsServer(socks, render)
