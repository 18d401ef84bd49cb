"""``etcd://host:2379[,host2:2379...]``: etcd's v3 API, through etcd's own JSON gateway.

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

The wire: every etcd since 3.4 serves its v3 gRPC API as JSON over HTTP on the client port
(the "gRPC gateway", ``--enable-grpc-gateway``, on by default), on the same listener, TLS
and authentication as gRPC. lockd sends three requests there, over one aiohttp session
shared with ``etcd2://`` (``backends/etcdhttp.py``): ``POST /v3/kv/range``,
``POST /v3/kv/txn`` and, with ``user:password@``, ``POST /v3/auth/authenticate``. Keys and
values travel base64-encoded, 64-bit numbers as decimal strings, and a field that is zero or
false is left out of an answer. No client library: the gateway's JSON is etcd's own
documented API, so no release of a driver can break it.

Versions are ``(mod_revision, value)``. A ``mod_revision`` is never reused while etcd runs
(unlike ``version``, which restarts at 1 when a key is deleted and created again), but an
etcd restored from a backup or snapshot repeats the revisions written after it: so the
compare-and-set compares both, and a version remembered from before the restore never
matches a value this process did not see. Compare-and-set is one transaction
``If(mod_revision == seen and value == seen_value) Then(Put) Else(Range)``; create-if-absent
is ``If(create_revision == 0)``. A success answers the new revision (the response header's,
which is the key's new ``mod_revision``), a failure the current value and ``mod_revision``:
one round trip either way. Compare-and-delete is the same transaction with
``Then(DeleteRange)``; a key created again after a delete gets a new ``mod_revision``, so a
version from before the delete matches neither a delete nor a swap.

Change feed (:meth:`Etcd3Backend.watch`): the gateway's streaming ``POST /v3/watch`` on the
prefix, one JSON message per line; the first (``created``) means the watch is in place.
Each event carries the key's ``mod_revision`` and value, which is exactly its version. A
stream that ends, an error, a cancelled watch (a compaction) or a member that cannot be
reached raise; the caller watches again, from the current revision.

Errors: a request etcd refuses as too large (``--max-request-bytes``, 1.5 MiB by default,
and a compare-and-set carries both the expected and the new value: "etcdserver: request is
too large", or gRPC's "received message larger than max") raises
:class:`~.base.ValueTooLarge` at once, on no other member. Any other failure (no
connection, timeout, 5xx, a refusal) moves to the next member; when all failed,
:class:`~.base.BackendUnavailable`.

Authentication: ``user:password@`` logs in to each member on its first request (not at
:meth:`open`: lockd starts while etcd is down) and sends the token in the ``Authorization``
header. etcd's default "simple" tokens live in one member's memory and expire after 5 idle
minutes (``--auth-token-ttl``); a request whose token is refused (invalid token, a member
that restarted, auth enabled since the last login, an auth store that changed) logs in
again once and is sent again: a refused request applied nothing. etcd's authentication by
client-certificate common name does not apply to the gateway, which is etcd talking to
itself: with auth enabled, give lockd a user and password, also over TLS.

Failover: requests go to the member that answered last; an error or timeout moves to the
next one. Retrying a compare-and-set whose answer was lost is safe: if the first attempt
was applied, the retry's compare fails and returns the current value, which is the
service's own write; it decides again on it (lock and unlock are idempotent), so nothing is
applied twice.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from .base import (
    Backend,
    BackendUnavailable,
    CasResult,
    ChangeSink,
    InvalidBackendURL,
    ValueTooLarge,
    Version,
)
from .base import prefix_end as range_end
from .etcdhttp import MemberFailed, Members, TlsFiles, netloc
from .urls import Options

__all__ = ["Etcd3Backend", "TlsFiles", "from_url"]

DEFAULT_PORT = 2379

# gRPC status codes etcd's gateway puts in an error's "code".
UNAVAILABLE = 14
UNAUTHENTICATED = 16
# What the gateway answers when it cannot reach its own member; over TLS that is almost
# always etcd's server certificate refused as a client certificate.
GATEWAY_CANNOT_DIAL = ("connection closed", "transport: ", "connection error")
TLS_GATEWAY_HINT = (
    " (etcd's gateway could not reach etcd itself: with --client-cert-auth, etcd presents"
    " its own server certificate to itself as a client, so that certificate must allow"
    " client authentication, extendedKeyUsage clientAuth; etcd 3.5+ can take another one"
    " with --client-cert-file/--client-key-file)"
)
# Refusals after which a fresh token may succeed (etcd's clientv3 logs in again on these).
TOKEN_REFUSED = (
    "invalid auth token",
    "revision of auth store is old",
    "user name is empty",
)
# A request above --max-request-bytes; the second is gRPC's own limit, 512 KiB higher.
TOO_LARGE = ("request is too large", "larger than max")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    # b"\0": every key (etcd's convention for "no upper bound").
    return range_end(prefix) or b"\0"


class _TokenRefused(Exception):
    """The member refused our token; logging in again may help."""


class Etcd3Backend(Backend):
    scheme = "etcd"
    has_feed = True

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
        self.members = Members(
            [netloc(h, p) for h, p in endpoints], timeout=timeout, tls=tls, what="etcd"
        )
        # Per member: its auth token ("" when auth is not enabled), and a login under way.
        self._tokens: dict[int, str] = {}
        self._logins: dict[int, asyncio.Future[str]] = {}

    async def open(self) -> None:
        # No request here: lockd starts (and says "not ready") while etcd is down.
        await self.members.open()

    async def close(self) -> None:
        await self.members.close()
        self._tokens.clear()

    # The gateway

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON request to the current member, failing over; the JSON answer."""
        data = json.dumps(body, separators=(",", ":")).encode()

        async def attempt(member: int) -> dict[str, Any]:
            if self.username is None:
                return await self._send(member, path, data, None)
            token = await self._token(member)
            try:
                return await self._send(member, path, data, token)
            except _TokenRefused:
                pass
            # Expired, or the member restarted: log in again, once.
            try:
                return await self._send(member, path, data, await self._token(member, token))
            except _TokenRefused as exc:
                raise MemberFailed(f"token refused after a new login: {exc}") from None

        return await self.members.call(attempt)

    async def _send(
        self, member: int, path: str, data: bytes, token: str | None
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        status, body = await self.members.send(
            member, "POST", path, data=data, headers=headers, fail_5xx=False
        )
        try:
            doc = json.loads(body)
        except ValueError as exc:
            # An etcd older than 3.4 serves the gateway under /v3beta/ only: a plain 404.
            hint = " (lockd needs etcd 3.4 or later, with its gRPC gateway)" if (
                status == 404) else ""
            raise MemberFailed(f"HTTP {status}, not JSON{hint}: {body[:120]!r}") from exc
        if not isinstance(doc, dict):
            raise MemberFailed(f"HTTP {status}, unexpected answer: {body[:200]!r}")
        if status == 200:
            return doc
        message = str(doc.get("message") or doc.get("error") or body[:200])
        if any(s in message for s in TOO_LARGE):
            raise ValueTooLarge(f"etcd refused the request as too large: {message}")
        if token is not None and (
            doc.get("code") == UNAUTHENTICATED or any(s in message for s in TOKEN_REFUSED)
        ):
            raise _TokenRefused(message)
        if self.tls and doc.get("code") == UNAVAILABLE and any(
            s in message for s in GATEWAY_CANNOT_DIAL
        ):
            message += TLS_GATEWAY_HINT
        raise MemberFailed(f"HTTP {status}: {message}")

    async def _token(self, member: int, refused: str | None = None) -> str:
        """The member's token; a new login if it has none or it is ``refused``.

        Concurrent requests share one login: etcd hashes the password (bcrypt) for each.
        """
        token = self._tokens.get(member)
        if token is not None and token != refused:
            return token
        login = self._logins.get(member)
        if login is None:
            login = asyncio.ensure_future(self._login(member))
            self._logins[member] = login

            def done(future: asyncio.Future[str]) -> None:
                if self._logins.get(member) is future:
                    del self._logins[member]
                if not future.cancelled():
                    future.exception()  # retrieved: every waiter may have gone

            login.add_done_callback(done)
        return await asyncio.shield(login)

    async def _login(self, member: int) -> str:
        self._tokens.pop(member, None)
        body = json.dumps({"name": self.username, "password": self.password}).encode()
        status, raw = await self.members.send(
            member, "POST", "/v3/auth/authenticate", data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        if status == 200 and isinstance(doc, dict):
            token = str(doc.get("token", ""))
        elif isinstance(doc, dict) and "authentication is not enabled" in str(doc.get("message")):
            token = ""  # etcd's clientv3 also goes on without a token then
        else:
            message = doc.get("message") if isinstance(doc, dict) else None
            raise MemberFailed(f"login as {self.username!r} refused: {message or raw[:200]!r}")
        self._tokens[member] = token
        return token

    def _key(self, key: str) -> bytes:
        return (self.namespace + key).encode()

    # The backend contract

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        # Linearizable (the gateway's default, serializable=false): a member never answers
        # from a stale copy.
        doc = await self._post("/v3/kv/range", {"key": _b64(self._key(key))})
        return _first(doc.get("kvs"))

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        k = _b64(self._key(key))
        if expected is None:
            # create_revision is 0 only while the key does not exist.
            compare = [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}]
        else:
            revision, seen = expected  # (mod_revision, value), as get() answers it
            compare = [
                {"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)},
                {"key": k, "target": "VALUE", "result": "EQUAL", "value": _b64(seen)},
            ]
        doc = await self._post("/v3/kv/txn", {
            "compare": compare,
            "success": [{"request_put": {"key": k, "value": _b64(value)}}],
            # A lost compare reads the key in the same transaction: the caller gets the
            # state it lost to without a second round trip.
            "failure": [{"request_range": {"key": k}}],
        })
        if doc.get("succeeded"):
            # A write transaction makes exactly one new revision, and every key it puts
            # carries it as mod_revision.
            return CasResult(True, value, (int(doc["header"]["revision"]), value))
        try:
            kvs = doc["responses"][0]["response_range"].get("kvs")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendUnavailable(f"etcd txn: unexpected answer {doc!r:.200}") from None
        return CasResult(False, *_first(kvs))

    async def compare_and_delete(self, key: str, expected: Version) -> CasResult:
        if expected is None:
            raise ValueError("compare_and_delete needs the version of the value to delete")
        k = _b64(self._key(key))
        revision, seen = expected
        doc = await self._post("/v3/kv/txn", {
            "compare": [
                {"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)},
                {"key": k, "target": "VALUE", "result": "EQUAL", "value": _b64(seen)},
            ],
            "success": [{"request_delete_range": {"key": k}}],
            "failure": [{"request_range": {"key": k}}],
        })
        if doc.get("succeeded"):
            return CasResult(True, None, None)
        try:
            kvs = doc["responses"][0]["response_range"].get("kvs")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendUnavailable(f"etcd txn: unexpected answer {doc!r:.200}") from None
        return CasResult(False, *_first(kvs))

    async def scan(self, prefix: str) -> list[str]:
        start = self._key(prefix) or b"\0"  # etcd refuses an empty key; "\0" is the least
        doc = await self._post("/v3/kv/range", {
            "key": _b64(start), "range_end": _b64(prefix_end(start)), "keys_only": True,
        })
        skip = len(self.namespace.encode())
        return sorted(_unb64(kv.get("key"))[skip:].decode() for kv in doc.get("kvs") or ())

    async def watch(self, prefix: str, sink: ChangeSink) -> None:
        start = self._key(prefix) or b"\0"
        body = json.dumps({"create_request": {
            "key": _b64(start), "range_end": _b64(prefix_end(start)),
        }}).encode()
        failures: list[str] = []
        members = self.members
        for step in range(len(members.members)):
            member = (members.current + step) % len(members.members)
            headers = {"Content-Type": "application/json"}
            try:
                if self.username is not None:
                    token = await self._token(member)
                    if token:
                        headers["Authorization"] = token
                async with members.stream(member, "POST", "/v3/watch", data=body,
                                          headers=headers) as resp:
                    if resp.status != 200:
                        raise MemberFailed(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                    await self._follow(resp, sink)
            except (OSError, TimeoutError, MemberFailed, aiohttp.ClientError) as exc:
                failures.append(f"{members.members[member]}: {exc or type(exc).__name__}")
                continue
        raise BackendUnavailable("etcd change feed: " + "; ".join(failures))

    async def _follow(self, resp: aiohttp.ClientResponse, sink: ChangeSink) -> None:
        """Report a watch stream's events until it ends. Before the watch is in place a
        failure raises MemberFailed (the next member is tried); after, BackendUnavailable
        (the caller must learn that changes may have been missed)."""
        skip = len(self.namespace.encode())
        created = False
        buffer = b""
        try:
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    result = _watch_result(line)
                    if result.get("created") and not created:
                        created = True
                        sink.subscribed()
                    for event in result.get("events") or ():
                        kv = event.get("kv") or {}
                        key = _unb64(kv.get("key"))[skip:].decode()
                        if event.get("type") == "DELETE":
                            sink.changed(key)
                        else:
                            version = (int(kv["mod_revision"]), _unb64(kv.get("value")))
                            sink.changed(key, version)
            raise MemberFailed("watch stream ended")
        except (MemberFailed, OSError, TimeoutError, aiohttp.ClientError) as exc:
            if isinstance(exc, MemberFailed) and "auth" in str(exc):
                self._tokens.clear()  # log in again next time
            if created:
                raise BackendUnavailable(f"etcd change feed: {exc}") from exc
            raise

    def describe(self) -> str:
        hosts = ",".join(self.members.members)
        extras = [f"namespace={self.namespace!r}"] if self.namespace else []
        if self.tls is not None:
            extras.append("tls")
        if self.username:
            extras.append(f"user={self.username}")
        return f"etcd://{hosts} (v3{''.join(', ' + e for e in extras)})"


def _watch_result(line: bytes) -> dict[str, Any]:
    """One message of a watch stream; an error or a cancelled watch raises MemberFailed."""
    try:
        doc = json.loads(line)
    except ValueError:
        raise MemberFailed(f"watch: not JSON: {line[:120]!r}") from None
    result = doc.get("result") if isinstance(doc, dict) else None
    if not isinstance(result, dict):
        raise MemberFailed(f"watch: {str(doc)[:200]}")
    if result.get("canceled"):
        raise MemberFailed(f"watch cancelled: {result.get('cancel_reason', '')}")
    return result


def _first(kvs: list[dict[str, Any]] | None) -> tuple[bytes | None, Version]:
    if not kvs:
        return None, None
    value = _unb64(kvs[0].get("value"))
    return value, (int(kvs[0]["mod_revision"]), value)


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
