"""HTTP to the members of one etcd cluster, shared by ``etcd2://`` and ``etcd://``.

Both backends speak plain HTTP/1.1 with JSON to etcd: the v2 keys API (``etcd2``) and the v3
JSON gateway (``etcd``, ``POST /v3/...``). What they share lives here:

- the members, as ``host:port`` strings (an IPv6 host in brackets), and which one answered
  last: a call starts there;
- one aiohttp session for all members, created by :meth:`Members.open` without sending
  anything (so lockd starts, and says "not ready", while etcd is down), closed by
  :meth:`Members.close`;
- failover: :meth:`Members.call` runs one attempt on a member and, when the attempt cannot
  reach it, times out, gets a 5xx or raises :class:`MemberFailed`, runs it on the next
  member, within the same call; when every member failed it raises
  :class:`~.base.BackendUnavailable` naming each member's failure;
- a deadline per request to one member (``timeout``), so a hung member costs one timeout;
- TLS: an :class:`ssl.SSLContext` built from :class:`TlsFiles` (CA bundle, client
  certificate and key, and the name the server's certificate must carry).

What a request means, and which answers are failures, is each backend's business.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from yarl import URL

from .base import BackendUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class TlsFiles:
    """How to talk TLS to etcd. All paths optional: no CA means the system's roots."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    #: The name the server certificate must carry, when it is not the host in the URL.
    server_name: str | None = None

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the server (raises OSError on unreadable files)."""
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key)
        return context


class MemberFailed(Exception):
    """This member gave no usable answer; the call moves on to the next one."""


def netloc(host: str, port: int) -> str:
    """``host:port`` as a URL writes it (``[::1]:2379`` for an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Members:
    """The members of one cluster, one HTTP session, and failover between them."""

    def __init__(
        self,
        members: list[str],
        *,
        timeout: float,
        tls: TlsFiles | None = None,
        what: str = "etcd",
    ) -> None:
        if not members:
            raise ValueError("at least one member")
        self.members = members
        self.timeout = timeout
        self.tls = tls
        #: For messages: "etcd v2 unreachable: ...".
        self.what = what
        #: The member that answered last; a call starts there.
        self.current = 0
        self._base = [f"{'https' if tls else 'http'}://{m}" for m in members]
        self._session: aiohttp.ClientSession | None = None
        self._server_name = tls.server_name if tls else None

    async def open(self) -> None:
        """Create the session; no request is sent."""
        if self._session is not None:
            return
        context: ssl.SSLContext | bool = True
        if self.tls is not None:
            try:
                context = self.tls.context()
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise BackendUnavailable(f"{self.what} TLS files: {exc}") from exc
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            # Small JSON documents; keep connections warm, reuse them for every member.
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30, ssl=context),
            # etcd answers JSON; never send cookies a proxy might set.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def call(self, attempt: Callable[[int], Awaitable[T]]) -> T:
        """``attempt(member)`` on the current member, then on each next one after a failure.

        Every write the backends send carries a precondition, so re-sending one whose
        answer was lost can never apply it twice.
        """
        if self._session is None:
            await self.open()
        failures: list[str] = []
        start = self.current
        for step in range(len(self.members)):
            member = (start + step) % len(self.members)
            try:
                result = await attempt(member)
            except (aiohttp.ClientError, TimeoutError, MemberFailed) as exc:
                failures.append(f"{self.members[member]}: {_reason(exc)}")
                continue
            # Stay on the member that answered, so later calls start there.
            self.current = member
            return result
        raise BackendUnavailable(f"{self.what} unreachable: " + "; ".join(failures))

    async def send(
        self,
        member: int,
        method: str,
        path: str,
        *,
        data: bytes | Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        fail_5xx: bool = True,
    ) -> tuple[int, bytes]:
        """One request to one member: ``(status, body)``; a 5xx raises MemberFailed unless
        ``fail_5xx`` is false (the caller reads the body and says why).

        ``path`` is already escaped (with its query string); it is sent as it is.
        """
        if self._session is None:
            await self.open()
        assert self._session is not None
        url = URL(self._base[member] + path, encoded=True)
        async with self._session.request(
            method, url, data=data, headers=headers, server_hostname=self._server_name
        ) as resp:
            status = resp.status
            body = await resp.read()
        if status >= 500 and fail_5xx:
            raise MemberFailed(f"HTTP {status}: {body[:200]!r}")
        return status, body

    @contextlib.asynccontextmanager
    async def stream(
        self,
        member: int,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One long-lived request to one member (a watch), without the session's deadline:
        ``timeout`` bounds the connect, ``read_timeout`` (None: none) each wait for data."""
        if self._session is None:
            await self.open()
        assert self._session is not None
        url = URL(self._base[member] + path, encoded=True)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=read_timeout
        )
        async with self._session.request(
            method, url, data=data, headers=headers, server_hostname=self._server_name,
            timeout=timeout,
        ) as resp:
            yield resp


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return str(exc) or type(exc).__name__
