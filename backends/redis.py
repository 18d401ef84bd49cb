"""Redis (or Valkey): ``redis://``, ``rediss://``, ``unix://`` and ``redis+sentinel://``.

Redis Cluster (``redis+cluster://``) is a subclass in ``redis_cluster.py``: the same hash,
script and versions on redis-py's cluster client.

Each stored value is a hash ``{value, ver}``; ``ver`` is a random token made for each
write, so a Redis that lost writes (failover, restore) never repeats a version a client
remembers. ``get`` is one ``HMGET`` (a single command, so atomic). Compare-and-set (which
answers the current value and version after a lost race, in the same round trip) is a Lua
script kept in ``backends/resources/cas.lua``: Redis runs a script to completion before
any other command, so the check and the write cannot interleave with another replica's.
Compare-and-delete is the same check in ``cad.lua``. Scripts are called by SHA; when Redis
answers NOSCRIPT (a restart or ``SCRIPT FLUSH`` emptied its script cache) the call is sent once
more with the script text, which also caches it again.

Key names: ``<prefix>{<key>}``, e.g. ``lockd:{lockd/v1/groups/workers}``: the key is the
hash tag, so on Redis Cluster everything of one group lives in one slot.

Listing (``scan``) reads ``<prefix>index``, a sorted set of every key name (score 0) that
the same scripts update in the same step as the key itself, with ``ZRANGEBYLEX``: a range
read, not a ``SCAN`` of the whole keyspace. A store written before the index existed gets
it built once (``<prefix>index:built`` marks it complete), at :meth:`RedisBackend.open` or
the first scan. Redis Cluster keeps ``SCAN`` (``redis_cluster.py`` says why).

Every Redis error and timeout becomes :class:`BackendUnavailable`; nothing is decided on
the client. One connection pool per backend, created by :meth:`RedisBackend.open`, lives
until :meth:`RedisBackend.close`. A broken pooled connection (Redis restarted) is retried
once at once on a fresh connection; a timeout is never retried, so a hung Redis costs one
timeout, not several.

Change feed (:meth:`RedisBackend.watch`): Redis' client-side caching in broadcast mode. One
connection of its own sends ``CLIENT TRACKING ON REDIRECT <its own id> BCAST PREFIX
<prefix>{<key prefix>`` and subscribes to ``__redis__:invalidate``; Redis then publishes
the name of every key under the prefix that any client writes. Keyspace notifications
would need ``notify-keyspace-events`` in the server's configuration, which managed Redis
services often refuse to change; tracking needs only Redis >= 6 and the ``CLIENT`` and
``SUBSCRIBE`` commands. RESP2 with the redirect to itself (rather than RESP3 push
messages) keeps the one connection on redis-py's ordinary parser; a broken connection
ends the tracking, and the feed with it, so nothing is missed unseen. A ``PING`` every
``timeout`` seconds of silence finds a connection that hangs.

URL options (query string)::

    prefix=lockd:          key prefix (no braces: the braces are the hash tag)
    timeout=2              seconds for each command (socket read/write)
    connect_timeout=2      seconds to connect; defaults to timeout
    max_connections=N      cap the pool (default: no cap)
    db=N                   database number (unix:// and redis+sentinel://)
    ssl_ca_certs=FILE      rediss:// only: CA bundle to verify the server
    ssl_certfile=FILE      rediss:// only: client certificate (mutual TLS)
    ssl_keyfile=FILE       rediss:// only: client key
    ssl_cert_reqs=required rediss:// only: required | optional | none
    ssl_check_hostname=true rediss:// only
    sentinel_password=PW   redis+sentinel:// only: password of the sentinels themselves
    wait_replicas=N        with each read and write, WAIT until N replicas have every write
                           so far, else answer 503 (a write may still be applied: safe, the
                           client retries). For Sentinel; needs Redis >= 7.0 (see below)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NoReturn, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from .base import (
    Backend,
    BackendUnavailable,
    CasResult,
    ChangeSink,
    InvalidBackendURL,
    Version,
    prefix_end,
)
from .urls import Options

T = TypeVar("T")

DEFAULT_PREFIX = "lockd:"
DEFAULT_TIMEOUT = 2.0
SCAN_COUNT = 1000
#: redis-py 8 caps a pool at 100 connections when max_connections is None, and then fails
#: calls with "Too many connections"; lockd's pool has no cap unless the URL sets one.
NO_CAP = 2**31 - 1
#: The channel client-side caching publishes invalidations on.
INVALIDATE = "__redis__:invalidate"
_GLOB_SPECIAL = "\\*?[]"
_TLS_OPTIONS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                "ssl_check_hostname"}
_CERT_REQS = ("required", "optional", "none")


@dataclass(frozen=True)
class Script:
    """A Lua script from ``backends/resources``, called by SHA."""

    name: str
    text: str = field(repr=False)
    sha: str

    @classmethod
    def load(cls, name: str) -> Script:
        text = resources.files(__package__).joinpath(f"resources/{name}.lua").read_text()
        return cls(name, text, hashlib.sha1(text.encode()).hexdigest())


CAS = Script.load("cas")
CAD = Script.load("cad")
INDEX = Script.load("index")
#: Keys the index build adds per script call.
INDEX_BATCH = 500


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


@dataclass(frozen=True)
class RedisOptions:
    """What a URL asks for, checked when the configuration loads (before any connection)."""

    scheme: str
    url: str  # without the query string; for redis-py's own URL parsing
    prefix: str = DEFAULT_PREFIX
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_TIMEOUT
    max_connections: int | None = None
    db: int | None = None
    tls: dict[str, Any] = field(default_factory=dict)
    sentinels: tuple[tuple[str, int], ...] = ()
    cluster_nodes: tuple[tuple[str, int], ...] = ()  # redis+cluster:// (redis_cluster.py)
    service_name: str = ""
    sentinel_password: str | None = None
    wait_replicas: int = 0
    username: str | None = None
    password: str | None = None
    where: str = ""  # host:port or socket path, without secrets, for messages


class RedisBackend(Backend):
    scheme = "redis"
    has_feed = True
    #: How messages name this store.
    label = "redis"
    #: Whether the scripts keep the sorted-set index of keys that ``scan`` reads. Not on a
    #: cluster, where the index would live in another slot than the key a script writes.
    indexed = True
    #: What a failed call may raise: each becomes BackendUnavailable (503), never a 500.
    errors: tuple[type[BaseException], ...] = (RedisError, OSError)

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self.prefix = options.prefix
        self._client: aioredis.Redis | None = None
        self._sentinel: Sentinel | None = None
        #: The sorted set of every key name (score 0), and the key saying it is complete.
        self.index_key = f"{options.prefix}index"
        self.index_built_key = f"{options.prefix}index:built"
        self._index_ready = False
        self._index_lock = asyncio.Lock()

    # Connection lifetime

    def _connection_kwargs(self) -> dict[str, Any]:
        o = self.options
        kwargs: dict[str, Any] = {
            "socket_timeout": o.timeout,
            "socket_connect_timeout": o.connect_timeout,
            # Retry a broken connection once, at once (a pooled socket Redis closed when it
            # restarted); never retry a timeout: a hung Redis must cost one timeout only.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "max_connections": o.max_connections or NO_CAP,
        }
        if o.db is not None:
            kwargs["db"] = o.db
        return kwargs

    async def open(self) -> None:
        """Create the pool; connections are made on first use, so a down Redis is no error."""
        if self._client is not None:
            return
        o = self.options
        kwargs = self._connection_kwargs()
        if o.sentinels:
            sentinel_kwargs = {
                "socket_timeout": o.timeout,
                "socket_connect_timeout": o.connect_timeout,
                "retry": Retry(NoBackoff(), 0),
            }
            if o.sentinel_password:
                sentinel_kwargs["password"] = o.sentinel_password
            self._sentinel = Sentinel(list(o.sentinels), sentinel_kwargs=sentinel_kwargs)
            self._client = self._sentinel.master_for(
                o.service_name, username=o.username, password=o.password, **kwargs
            )
        else:
            pool = aioredis.ConnectionPool.from_url(o.url, **kwargs, **o.tls)
            self._client = aioredis.Redis.from_pool(pool)
        if self.indexed:
            try:
                await self._ensure_index()
            except BackendUnavailable:
                pass  # Redis is down: the first scan builds it (a down Redis is no error)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            for s in sentinel.sentinels:
                await s.aclose()

    # Calls

    async def _ready_client(self) -> Any:
        """The client to send a command with, opened on first use."""
        if self._client is None:
            await self.open()
        assert self._client is not None
        return self._client

    async def _call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run one operation; any failure or overrun becomes BackendUnavailable."""
        # Bound the whole call too: a connect plus one command, whatever redis-py does
        # inside (sentinel discovery, pool waits), so a request can never hang on Redis.
        deadline = self.options.connect_timeout + self.options.timeout
        try:
            async with asyncio.timeout(deadline):
                return await fn(await self._ready_client())
        except BackendUnavailable:
            raise
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            raise BackendUnavailable(
                f"{self.label} {self.options.where}: no answer within {deadline:g}s"
            ) from exc
        except self.errors as exc:
            reason = str(exc) or type(exc).__name__
            raise BackendUnavailable(f"{self.label} {self.options.where}: {reason}") from exc

    async def _command(self, client: aioredis.Redis, *command: Any) -> Any:
        if self.options.wait_replicas:
            return await self._then_wait(client, *command)
        return await client.execute_command(*command)

    async def _then_wait(self, client: aioredis.Redis, *command: Any) -> Any:
        """Run ``command``, then WAIT until ``wait_replicas`` replicas have every write.

        Since Redis 7.0, WAIT after any command (a read too) waits for the replication
        offset at that command, so it covers writes made by other clients as well: an
        answer is only given from a state whose writes reached the replicas. Both go down
        one connection in one pipeline (one round trip). WAIT gets half the command
        timeout, so that its answer arrives before the socket read gives up.
        """
        wanted = self.options.wait_replicas
        wait_ms = max(1, int(self.options.timeout * 500))
        async with client.pipeline(transaction=False) as pipe:
            pipe.execute_command(*command)
            pipe.wait(wanted, wait_ms)
            result, acked = await pipe.execute(raise_on_error=False)
        for item in (result, acked):
            if isinstance(item, Exception):
                raise item
        if int(acked) < wanted:
            # Often a failover under way: this may be the old master, still taking writes
            # it is about to drop. Fresh connections ask Sentinel where the master is now.
            await client.connection_pool.disconnect(inuse_connections=False)
            raise BackendUnavailable(
                f"{self.label} {self.options.where}: {acked} of {wanted} replicas confirmed "
                f"within {wait_ms} ms"
            )
        return result

    async def _run_script(self, client: aioredis.Redis, script: Script, keys: list[str],
                          args: list[bytes | str]) -> Any:
        try:
            return await self._command(client, "EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Script cache emptied (restart, failover, SCRIPT FLUSH): EVAL runs the script
            # and caches it again, so later calls go back to EVALSHA.
            return await self._command(client, "EVAL", script.text, len(keys), *keys, *args)

    def redis_key(self, key: str) -> str:
        """The Redis key for a layout key: prefix plus the key as the hash tag."""
        if "{" in key or "}" in key:
            raise ValueError(f"key {key!r} contains a brace; it cannot be a hash tag")
        return f"{self.prefix}{{{key}}}"

    def _layout_key(self, redis_key: bytes) -> str | None:
        text = redis_key.decode(errors="replace")
        head = self.prefix + "{"
        if text.startswith(head) and text.endswith("}"):
            return text[len(head) : -1]
        return None

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        rkey = self.redis_key(key)
        value, ver, gen, rev = await self._call(
            lambda c: self._command(c, "HMGET", rkey, "value", "ver", "gen", "rev")
        )
        if value is None:
            return None, None
        if ver is None:  # written before versions were tokens; see cas.lua
            if gen is None or rev is None:
                return None, None
            return bytes(value), f"{gen.decode()}:{rev.decode()}"
        return bytes(value), ver.decode()

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        # One script call: the current state after a lost race comes with the answer (see
        # cas.lua). With wait_replicas the WAIT follows it on the same connection.
        rkey = self.redis_key(key)
        version = secrets.token_hex(12)
        args: list[bytes | str] = ["" if expected is None else str(expected), value, version]
        keys = [rkey]
        if self.indexed:
            keys.append(self.index_key)
            args.append(key)
        result = await self._call(lambda c: self._run_script(c, CAS, keys, args))
        return _answer(result, CasResult(True, value, version))

    async def compare_and_delete(self, key: str, expected: Version) -> CasResult:
        # The same shape as compare_and_set: one script call that answers the current
        # state when the version moved on (see cad.lua).
        if expected is None:
            raise ValueError("compare_and_delete needs the version of the value to delete")
        keys, args = [self.redis_key(key)], [str(expected)]
        if self.indexed:
            keys.append(self.index_key)
            args.append(key)
        result = await self._call(lambda c: self._run_script(c, CAD, keys, args))
        return _answer(result, CasResult(True, None, None))

    async def scan(self, prefix: str) -> list[str]:
        if self.indexed:
            # A range read of the index the scripts keep: the cost grows with the keys
            # under the prefix, not with everything else in Redis.
            await self._ensure_index()
            low = b"[" + prefix.encode()
            end = prefix_end(prefix.encode())
            high = b"+" if end is None else b"(" + end
            names = await self._call(
                lambda c: self._command(c, "ZRANGEBYLEX", self.index_key, low, high)
            )
            return sorted(_text(n) for n in names)
        # The closing brace in the pattern leaves out the ":gen" counters.
        pattern = f"{_glob_escape(self.prefix)}{{{_glob_escape(prefix)}*}}"
        keys = await self._call(lambda c: self._scan_keys(c, pattern))
        return sorted({k for k in map(self._layout_key, keys) if k and k.startswith(prefix)})

    async def _ensure_index(self) -> None:
        """Build the index once for a store written before lockd kept one.

        A marker key says the index is complete. Without it, every value hash under the
        prefix is found with SCAN (once) and added by a script that checks each still
        exists; keys written meanwhile are added by the scripts themselves. Several
        replicas building at once do the same idempotent work.
        """
        if self._index_ready:
            return
        async with self._index_lock:
            if self._index_ready:
                return
            built = await self._call(lambda c: self._command(c, "GET", self.index_built_key))
            if built is None:
                await self._build_index()
                await self._call(lambda c: self._command(c, "SET", self.index_built_key, "1"))
            self._index_ready = True

    async def _build_index(self) -> None:
        pattern = f"{_glob_escape(self.prefix)}{{*}}"
        cursor = 0
        while True:
            cursor, batch = await self._call(
                lambda c, at=cursor: c.scan(at, match=pattern, count=SCAN_COUNT)
            )
            found = [(k, name) for k in batch if (name := self._layout_key(k))]
            for i in range(0, len(found), INDEX_BATCH):
                part = found[i : i + INDEX_BATCH]
                keys = [self.index_key, *(k for k, _ in part)]
                names: list[bytes | str] = [name for _, name in part]
                await self._call(lambda c, k=keys, n=names: self._run_script(c, INDEX, k, n))
            if int(cursor) == 0:
                return

    async def _scan_keys(self, client: aioredis.Redis, pattern: str) -> list[bytes]:
        found: list[bytes] = []
        cursor = 0
        while True:
            cursor, batch = await client.scan(cursor, match=pattern, count=SCAN_COUNT)
            found.extend(batch)
            if cursor == 0:
                return found

    async def ping(self) -> None:
        await self._call(lambda c: c.ping())

    async def watch(self, prefix: str, sink: ChangeSink) -> None:
        where = f"{self.label} {self.options.where} change feed"
        async with self.feed_errors(where):
            pool = (await self._ready_client()).connection_pool
            conn = resp2_connection(pool.connection_class, pool.connection_kwargs)
            try:
                async with asyncio.timeout(self.feed_setup_timeout):
                    await connect(conn)
                    await self.track(conn, prefix, where)
                sink.subscribed()
                await self.relay(conn, sink, where)
            finally:
                await conn.disconnect()

    # The change feed's parts, shared with Redis Cluster (one feed connection per master).

    @property
    def feed_setup_timeout(self) -> float:
        """Bound on connecting a feed connection and subscribing it."""
        return self.options.connect_timeout + 3 * self.options.timeout

    @contextlib.asynccontextmanager
    async def feed_errors(self, where: str) -> AsyncIterator[None]:
        """Every failure of a feed becomes BackendUnavailable naming ``where``."""
        try:
            yield
        except BackendUnavailable:
            raise
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            raise BackendUnavailable(f"{where}: timed out") from exc
        except self.errors as exc:
            raise BackendUnavailable(f"{where}: {exc or type(exc).__name__}") from exc

    async def track(self, conn: Any, prefix: str, where: str) -> None:
        """Turn on broadcast tracking of ``prefix`` on ``conn`` (connected, RESP2), redirected
        to itself, and subscribe it to the invalidation channel."""
        await conn.send_command("CLIENT", "ID")
        own_id = await conn.read_response()
        await conn.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST",
            "PREFIX", f"{self.prefix}{{{prefix}",
        )
        if _text(await conn.read_response()) != "OK":
            raise BackendUnavailable(f"{where}: CLIENT TRACKING refused")
        await conn.send_command("SUBSCRIBE", INVALIDATE)
        await conn.read_response()  # ["subscribe", channel, 1]

    async def relay(self, conn: Any, sink: ChangeSink, where: str) -> NoReturn:
        """Report every invalidation ``conn`` (tracked, subscribed) receives, until it fails;
        a ``PING`` after ``timeout`` seconds of silence finds a connection that hangs."""
        heartbeat = self.options.timeout
        waiting_for_pong = False
        while True:
            message = await conn.read_response(timeout=heartbeat)
            if message is None:  # silence: is the connection still there?
                raise_if_cancelled()
                if waiting_for_pong:
                    raise BackendUnavailable(f"{where}: no answer to PING in {heartbeat:g}s")
                await conn.send_command("PING")
                waiting_for_pong = True
                continue
            kind = _text(message[0]).lower()
            if kind == "pong":
                waiting_for_pong = False
            elif kind == "message" and len(message) == 3:
                keys = message[2]
                if keys is None:  # FLUSHDB / FLUSHALL: everything changed
                    sink.changed(None)
                    continue
                for rkey in keys:
                    key = self._layout_key(bytes(rkey))
                    if key is not None:
                        sink.changed(key)

    def describe(self) -> str:
        o = self.options
        kind = "sentinel master " + o.service_name if o.sentinels else o.scheme
        return (
            f"{o.scheme}://{o.where} ({kind}, prefix {o.prefix!r}, "
            f"timeout {o.timeout:g}s; durability is Redis's own: see docs/redis.md)"
        )


async def connect(conn: Any) -> None:
    """``conn.connect()``, then honour a cancellation it swallowed.

    redis-py 8.1's ``Connection.connect()`` returns normally now and then when the task is
    cancelled while it connects (the cancel request stays pending, nothing raises: 28 of
    200 connects cancelled at random points here; redis/redis-py#2551 and #2028 were the
    same kind of bug). A feed that went on to wait for invalidations would then never end,
    and stopping lockd would hang on it.
    """
    await conn.connect()
    raise_if_cancelled()


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task has a cancel request pending that was swallowed.
    Inside an ``asyncio.timeout`` block that has expired, this is the timeout's own cancel,
    which the block turns into TimeoutError as usual."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def resp2_connection(connection_class: type, connection_kwargs: dict[str, Any]) -> Any:
    """A connection of its own for a feed, never returned to a pool (it ends up subscribed):
    RESP2 (redis-py 8 speaks RESP3 by default), where invalidations are Pub/Sub messages.
    Maintenance notifications need RESP3: left out on this connection."""
    kwargs = {k: v for k, v in connection_kwargs.items()
              if not k.startswith("maint_notifications")}
    return connection_class(**{**kwargs, "protocol": 2})


def _answer(reply: list[Any], done: CasResult) -> CasResult:
    """A script's reply (cas.lua, cad.lua): ``done`` for {1}; else the state it lost to."""
    if int(reply[0]) == 1:
        return done
    if len(reply) < 3:
        return CasResult(False, None, None)
    return CasResult(False, bytes(reply[1]), _text(reply[2]))


def _text(reply: bytes | str) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _invalid(message: str) -> Exception:
    return InvalidBackendURL(message)


def hosts(netloc: str, url: str, scheme: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """``host:port[,host:port...]`` of a URL naming several servers (Sentinels, cluster
    nodes); userinfo is left out."""
    found = []
    for item in netloc.rpartition("@")[2].split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = item.strip(), str(default_port)
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise _invalid(f"{scheme} URL {url!r}: expected host:port[,host:port...]")
        found.append((host, int(port)))
    return tuple(found)


def credentials(parts: SplitResult) -> dict[str, str | None]:
    return {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }


def common_options(options: Options, tls_scheme: str) -> dict[str, Any]:
    """Read the options every Redis URL shares; TLS options only on ``tls_scheme``."""
    scheme = options.scheme
    prefix = options.text("prefix", DEFAULT_PREFIX)
    if "{" in prefix or "}" in prefix:
        raise _invalid(f"redis URL option prefix={prefix!r}: braces are reserved for hash tags")
    timeout = options.seconds("timeout", DEFAULT_TIMEOUT)
    connect_timeout = options.seconds("connect_timeout", timeout)
    max_connections = options.whole("max_connections", None, 1)
    tls: dict[str, Any] = {}
    for name in sorted(n for n in _TLS_OPTIONS if options.has(n)):
        if scheme != tls_scheme:
            raise _invalid(
                f"redis URL option {name} needs {tls_scheme}:// (TLS), not {scheme}://"
            )
        if name == "ssl_check_hostname":
            tls[name] = options.flag(name)
        elif name == "ssl_cert_reqs":
            tls[name] = options.choice(name, "required", _CERT_REQS)
        else:
            tls[name] = options.text(name)
    wait_replicas = options.whole("wait_replicas", 0, 0)
    return dict(
        scheme=scheme, prefix=prefix, timeout=timeout, connect_timeout=connect_timeout,
        max_connections=max_connections, tls=tls, wait_replicas=wait_replicas,
    )


def from_url(url: str) -> RedisBackend:
    """Parse and check a Redis URL; nothing connects until the backend is opened."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = Options(scheme, parts.query)
    db = options.whole("db", None, 0)
    common = common_options(options, "rediss")
    sentinel_password = options.text("sentinel_password") or None
    if sentinel_password is not None and scheme != "redis+sentinel":
        raise _invalid("redis URL option sentinel_password needs redis+sentinel://")
    options.finish()
    common["db"] = db
    auth = credentials(parts)

    if scheme == "redis+sentinel":
        service = unquote(parts.path.strip("/"))
        if not service or "/" in service:
            raise _invalid(f"redis+sentinel URL {url!r} names no master: write "
                           "redis+sentinel://host:26379/mastername")
        sentinels = hosts(parts.netloc, url, scheme, 26379)
        where = ",".join(f"{h}:{p}" for h, p in sentinels) + f"/{service}"
        return RedisBackend(RedisOptions(
            url="", sentinels=sentinels, service_name=service,
            sentinel_password=sentinel_password, where=where, **auth, **common))

    bare = urlunsplit((scheme, parts.netloc, parts.path, "", ""))
    try:
        parsed = parse_url(bare)
    except ValueError as exc:
        raise _invalid(f"redis URL {url!r}: {exc}") from None
    if scheme == "unix":
        path = parsed.get("path")
        if not path:
            raise _invalid(f"redis URL {url!r} names no socket: write unix:///path/redis.sock")
        where = path
    else:
        if not parts.hostname:
            raise _invalid(f"redis URL {url!r} names no host: write {scheme}://host:6379/0")
        if parts.path.strip("/") and "db" not in parsed:
            raise _invalid(f"redis URL {url!r}: the path must be a database number")
        try:
            port = parts.port or 6379
        except ValueError:
            raise _invalid(f"redis URL {url!r}: the port must be a number") from None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        where = f"{host}:{port}/{db if db is not None else parsed.get('db', 0)}"
    return RedisBackend(RedisOptions(url=bare, where=where, **common))
