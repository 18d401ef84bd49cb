"""``etcd://host:2379[,host2:2379...]``: etcd's v3 API through ``aetcd``.

URL: ``etcd://[user:password@]host[:port][,host[:port]...][/][?option=value&...]``

Options:

- ``layout=native`` (default, lockd's own document per group) or ``layout=airlock``
  (airlock's keys and JSON, to take over a running airlock's keyspace): read by
  ``lockd.store``, not by this module, which only stores bytes;
- ``namespace=PREFIX``: put every key under ``PREFIX`` (like ``etcdctl --namespace``);
- ``timeout=SECONDS``: deadline of one request to one member (default 2); a request that
  fails or times out is tried once on each other member before lockd answers 503;
- ``tls=true``: talk TLS to etcd (implied by any ``tls_*`` option), ``tls_ca=PATH`` (CA
  bundle; default: the system's roots), ``tls_cert=PATH`` + ``tls_key=PATH`` (client
  certificate), ``tls_server_name=NAME`` (the name the server certificate must carry, when
  it is not the host in the URL).

Versions are ``mod_revision``s: unlike ``version``, which restarts at 1 when a key is deleted
and created again, a ``mod_revision`` is never reused, so a compare cannot succeed against a
key that was recreated in between. Compare-and-set is one transaction
``If(mod_revision == seen) Then(Put) Else(Get)``; create-if-absent is
``If(create_revision == 0)``. A success answers the new revision (the response header's, which
is the key's new ``mod_revision``), a failure the current value and ``mod_revision``: one
round trip either way.

Failover: one long-lived aetcd client per endpoint, all opened in :meth:`open` (the gRPC
channels connect lazily and reconnect by themselves). Requests go to the current endpoint;
an error or timeout moves to the next one. Retrying a compare-and-set whose answer was lost
is safe: if the first attempt was applied, the retry's compare fails and returns the current
value, which is the service's own write; it decides again on it (lock and unlock are
idempotent), so nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aetcd
import grpc
from aetcd import exceptions as aetcd_errors
from aetcd import rpc

from .base import Backend, BackendUnavailable, CasResult, InvalidBackendURL, Version
from .urls import Options

log = logging.getLogger("lockd.backends.etcd3")

T = TypeVar("T")
DEFAULT_PORT = 2379

# Reconnect quickly after a member comes back (gRPC's default backoff grows to 120 s), and
# notice a dead peer that did not close its connection.
CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.keepalive_permit_without_calls": 0,
}


@dataclass(frozen=True)
class TlsFiles:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(os.path.expanduser(path), "rb") as fh:
                return fh.read()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca),
            private_key=read(self.key),
            certificate_chain=read(self.cert),
        )


class _MemberClient(aetcd.Client):
    """An aetcd client for one member, over TLS when asked (aetcd itself only dials plain)."""

    def __init__(self, host: str, port: int, *, credentials: grpc.ChannelCredentials | None,
                 server_name: str | None, **kwargs: Any) -> None:
        options = dict(CHANNEL_OPTIONS)
        if server_name:
            options["grpc.ssl_target_name_override"] = server_name
        super().__init__(host, port, options=options, **kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._credentials is None:
            await super().connect()
            return
        # The same steps as aetcd's connect, with a secure channel.
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            self.channel = rpc.secure_channel(
                target, self._credentials, options=list(self._options.items())
            )
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                try:
                    resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                except rpc.AioRpcError as exc:
                    aetcd_errors._handle_exception(exc)
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._connected.set()
        finally:
            self._is_connecting = False


class Etcd3Backend(Backend):
    scheme = "etcd"

    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        *,
        namespace: str = "",
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        timeout: float = 2.0,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint")
        self.endpoints = endpoints
        self.namespace = namespace
        self.username = username
        self.password = password
        self.tls = tls
        self.timeout = timeout
        self._clients: list[_MemberClient] = []
        self._current = 0

    async def open(self) -> None:
        if self._clients:
            return
        try:
            credentials = self.tls.credentials() if self.tls is not None else None
        except OSError as exc:
            raise BackendUnavailable(f"etcd TLS files: {exc}") from exc
        # No request here: lockd starts (and says "not ready") while etcd is down.
        self._clients = [
            _MemberClient(
                host,
                port,
                credentials=credentials,
                server_name=self.tls.server_name if self.tls else None,
                username=self.username,
                password=self.password,
                timeout=self.timeout,  # type: ignore[arg-type] # aetcd hints int, means seconds
                connect_wait_timeout=self.timeout,  # type: ignore[arg-type]
            )
            for host, port in self.endpoints
        ]

    async def close(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            try:
                await client.close()
            except Exception as exc:  # closing must not fail shutdown
                log.debug("closing etcd client: %s", exc)

    async def _call(self, op: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run ``op`` on the current member, moving on to the next ones on failure."""
        if not self._clients:
            await self.open()
        errors: list[str] = []
        start = self._current
        for step in range(len(self._clients)):
            index = (start + step) % len(self._clients)
            client = self._clients[index]
            try:
                result = await self._on_member(client, op)
            except (aetcd_errors.ClientError, grpc.RpcError, TimeoutError, OSError) as exc:
                host, port = self.endpoints[index]
                errors.append(f"{host}:{port}: {type(exc).__name__}: {exc}")
                self._current = (index + 1) % len(self._clients)
                continue
            self._current = index
            return result
        raise BackendUnavailable("etcd unreachable: " + "; ".join(errors))

    async def _on_member(
        self, client: _MemberClient, op: Callable[[aetcd.Client], Awaitable[T]]
    ) -> T:
        try:
            try:
                return await op(client)
            except aetcd_errors.UnauthenticatedError:
                if self.username is None:
                    raise
                # The auth token expired (etcd drops idle simple tokens after 5 minutes) or
                # the member restarted: log in again once. A refused token applied nothing.
                await client.close()
                return await op(client)
        except BaseException:
            # A login that failed leaves a channel behind; close it so the next call dials
            # afresh instead of leaking one channel per failed call.
            if not client._connected.is_set() and client.channel is not None:
                await client.close()
            raise

    def _key(self, key: str) -> bytes:
        return (self.namespace + key).encode()

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        async def op(c: aetcd.Client) -> tuple[bytes | None, Version]:
            kv = await c.get(self._key(key))
            return (None, None) if kv is None else (bytes(kv.value), kv.mod_revision)

        return await self._call(op)

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        k = self._key(key)

        async def op(c: aetcd.Client) -> CasResult:
            t = c.transactions
            # create_revision == 0 only while the key does not exist.
            cond = t.create(k) == 0 if expected is None else t.mod(k) == int(expected)
            request = rpc.TxnRequest(
                compare=[cond.build_message()],
                success=c._ops_to_requests([t.put(k, value)]),
                # A lost compare reads the key in the same transaction: the caller gets
                # the state it lost to without a second round trip.
                failure=c._ops_to_requests([t.get(k)]),
            )
            # aetcd's transaction() drops the response header, which carries the new
            # revision, so call the stub directly (with aetcd's connect and error mapping).
            try:
                await c.connect()
                response = await c.kvstub.Txn(request, timeout=c._timeout, metadata=c.metadata)
            except rpc.AioRpcError as exc:
                aetcd_errors._handle_exception(exc)
                raise  # not reached: _handle_exception always raises
            if response.succeeded:
                # A write transaction makes exactly one new revision, and every key it puts
                # carries it as mod_revision.
                return CasResult(True, value, response.header.revision)
            kvs = response.responses[0].response_range.kvs
            if not kvs:
                return CasResult(False, None, None)
            return CasResult(False, bytes(kvs[0].value), kvs[0].mod_revision)

        return await self._call(op)

    async def scan(self, prefix: str) -> list[str]:
        skip = len(self.namespace)

        async def op(c: aetcd.Client) -> list[str]:
            found = await c.get_prefix(self._key(prefix), keys_only=True)
            return sorted(kv.key.decode()[skip:] for kv in found)

        return await self._call(op)

    def describe(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.endpoints)
        extras = [f"namespace={self.namespace!r}"] if self.namespace else []
        if self.tls is not None:
            extras.append("tls")
        if self.username:
            extras.append(f"user={self.username}")
        return f"etcd://{hosts} (v3{''.join(', ' + e for e in extras)})"


def _endpoint(text: str, url: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
    if not host:
        raise InvalidBackendURL(f"etcd URL {url!r}: empty host in {text!r}")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise InvalidBackendURL(f"etcd URL {url!r}: bad port in {text!r}") from None
    if not 0 < port < 65536:
        raise InvalidBackendURL(f"etcd URL {url!r}: bad port in {text!r}")
    return host, port


def from_url(url: str) -> Etcd3Backend:
    parts = urlsplit(url)
    # urlsplit cannot parse a comma-separated host list, so read the netloc by hand.
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        if not user or not colon:
            raise InvalidBackendURL(f"etcd URL: write user:password@ (got only {user!r}@)")
        username, password = unquote(user), unquote(secret)
    if not hostlist:
        raise InvalidBackendURL(f"etcd URL {url!r} names no host; write etcd://host:2379")
    endpoints = [_endpoint(h, url) for h in hostlist.split(",") if h.strip()]
    if parts.path not in ("", "/"):
        raise InvalidBackendURL(f"etcd URL {url!r}: no path allowed (use ?namespace=...)")

    options = Options("etcd", parts.query)
    namespace = options.text("namespace")
    timeout = options.seconds("timeout", 2.0)
    tls_flag = options.flag("tls")
    files = {name: options.file(f"tls_{name}") for name in ("ca", "cert", "key")}
    server_name = options.text("tls_server_name") or None
    options.finish()
    if bool(files["cert"]) != bool(files["key"]):
        raise InvalidBackendURL("etcd URL: tls_cert and tls_key go together")
    tls = None
    if tls_flag or any(files.values()) or server_name:
        if tls_flag is False:
            raise InvalidBackendURL("etcd URL: tls=false with tls_* files")
        tls = TlsFiles(files["ca"], files["cert"], files["key"], server_name)
    return Etcd3Backend(
        endpoints,
        namespace=namespace,
        username=username,
        password=password,
        tls=tls,
        timeout=timeout,
    )
