"""Listening sockets that bound what idle and hostile clients can hold.

A zincati node polls every 300 s and opens a fresh connection each time, so a connection
that stays silent, trickles its headers or idles between requests serves nobody; left
alone, a thousand of them exhaust the descriptor limit and every new connection, FleetLock
and admin alike, is reset without a log line. Two bounds:

- time: aiohttp closes a connection that has no complete request within the keep-alive
  timeout, counted from its start and from each answer (``service.idle_timeout_s``, given
  to the runner by :mod:`lockd.daemon`): silent connections, trickled headers and idle
  keep-alives all end there;
- count: :class:`Listener` accepts at most ``max_connections`` at once per listener and
  answers the next ones with a JSON 503 and a rate-limited log line, so the admin listener
  (its own cap) and the store's connections always have descriptors left.

The listener creates its asyncio server itself (rather than aiohttp's TCPSite) so that the
protocol factory can refuse: only public aiohttp API is used (``runner.server``), plus
:func:`lockd.http.request_handler`, lockd's connection handler, which counts the listener's
open connections (:class:`lockd.http.OpenConnections`; aiohttp's ``Server.connections``
copies every open connection into a list on each call).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from ssl import SSLContext
from typing import cast

from aiohttp import web

from lockd.errors import Kind
from lockd.http import OpenConnections, RateLimitedLog, request_handler

log = logging.getLogger("lockd.connections")

#: Descriptors kept back from the FleetLock listener's cap: the admin listener's cap, the
#: store's connections, log and database files.
RESERVED_DESCRIPTORS = 128
#: The admin listener serves a few operators and a scraper.
ADMIN_MAX_CONNECTIONS = 64
#: A reboot storm opens thousands of connections at once; the default backlog (128)
#: overflows and clients wait seconds for SYN retries.
LISTEN_BACKLOG = 4096

_REFUSAL_BODY = json.dumps(
    {"kind": Kind.too_many_connections.value,
     "value": "the server is at its connection limit; try again later"}
).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 5\r\nContent-Length: "
    + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


def default_max_connections() -> int:
    """What the descriptor limit allows the FleetLock listener, with room for the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, soft - RESERVED_DESCRIPTORS - ADMIN_MAX_CONNECTIONS)


class _Refusal(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio's classes: a cast, not an isinstance check.
        writer = cast(asyncio.WriteTransport, transport)
        writer.write(REFUSAL)
        writer.close()


class Listener:
    """One listening address of a runner, with a cap on concurrent connections."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        name: str,
        max_connections: int,
        ssl: SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        """``reuse_port``: share the port with the other workers (``SO_REUSEPORT``: the
        kernel spreads new connections over them; lockd.workers)."""
        self.runner, self.host, self.port, self.name = runner, host, port, name
        self.max_connections = max_connections
        self.ssl = ssl
        self.reuse_port = reuse_port
        self._server: asyncio.base_events.Server | None = None
        self._refusals = RateLimitedLog(log, "refused connections")
        self.connections = OpenConnections()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self.host, self.port, reuse_address=True, backlog=LISTEN_BACKLOG,
            ssl=self.ssl, reuse_port=self.reuse_port or None,
        )

    def _protocol(self) -> asyncio.BaseProtocol:
        server = self.runner.server
        assert server is not None, "the runner is set up before it listens"
        if self.connections.open >= self.max_connections:
            self._refusals.warning(
                f"{self.name} listener: {self.connections.open} connections open, its "
                "limit; refusing new ones (raise service.max_connections and the "
                "descriptor limit together)"
            )
            return _Refusal()
        # lockd's handler: malformed HTTP gets a JSON 400 and a rate-limited log line.
        return request_handler(server, self.connections)

    def addresses(self) -> list[tuple[str, int]]:
        assert self._server is not None
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def close(self) -> None:
        """Stop accepting; connections in flight are the runner's to finish."""
        if self._server is not None:
            self._server.close()
            self._server = None
