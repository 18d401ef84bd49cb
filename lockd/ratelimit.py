"""Public mode's abuse limits, with the ``limits`` package (docs/public.md, "Abuse limits").

Four limits, each a sliding window counter (constant memory per key):

- per client network on **every request**, whatever its tenant: one address cannot spray
  many tenants (each fresh tenant has a fresh per-tenant counter) faster than this;
- per client network (IPv4 /32, IPv6 /64) on requests that **create state** (a tenant's
  first grant in a group, which writes a new group): a client making tenants is stopped
  after a handful, within seconds;
- per client network on **misses** (refused secrets, the dropped slash): guessing and
  misconfiguration cost the server little and learn nothing;
- per **tenant** on everything else it sends, FleetLock and tenant API alike.

Counters live where ``[public] limits_url`` says (``memory://``, or a Redis server that
replicas share); unset, in the Redis server the store is on (``redis://`` and
``rediss://`` backends), so replicas share them, and in memory for other stores. The
client address is the peer's, or the ``X-Forwarded-For`` address its trusted proxy saw
when the peer is in ``[public] trusted_proxies``.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import math
import time
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from lockd.errors import Kind, LockdError

log = logging.getLogger("lockd.ratelimit")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_network(address: str) -> str:
    """The unit one client is counted by: an IPv4 address, or an IPv6 /64 (one site)."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """``[public] trusted_proxies``: addresses or CIDR networks; ValueError names a bad one."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the
    right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy (entries left
    of it were written by the client and prove nothing)."""
    address = peer or "unknown"
    if not forwarded_for or not _trusted(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not _trusted(hop, trusted):
            return hop
        address = hop
    return address


def _trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def check_rate(text: str) -> RateLimitItem:
    """A rate such as ``20/minute`` (the ``limits`` notation); ValueError if it is not one."""
    try:
        return parse(text)
    except ValueError:
        raise ValueError("must be a rate such as 20/minute or 50/second") from None


def check_limits_url(text: str) -> str:
    """``[public] limits_url``: ``memory://``, or ``redis://``/``rediss://`` with at most a
    ``prefix`` option; ValueError says what is wrong. Checked by hand because the
    ``limits`` package accepts many more schemes (and redis-py many more options) than lockd
    documents and tests."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path or parts.query:
            raise ValueError("memory:// takes nothing after it")
        return text.strip()
    if scheme not in ("redis", "rediss"):
        raise ValueError("must be memory:// or a redis:// or rediss:// URL")
    if not parts.hostname:
        raise ValueError("a redis:// URL needs a host, e.g. redis://127.0.0.1:6379/0")
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        raise ValueError("the port must be a number") from None
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ValueError("the path must be a database number, e.g. /0")
    unknown = sorted({k for k, _ in parse_qsl(parts.query)} - {"prefix"})
    if unknown:
        raise ValueError(f"the only option is prefix; got {', '.join(unknown)}")
    return text.strip()


def storage_uri(backend_url: str, limits_url: str = "") -> tuple[str, str]:
    """``(limits storage URI, key prefix)``: ``[public] limits_url`` when set; otherwise
    the store's own Redis server (and key prefix) for a Redis store, so replicas share
    counters, and memory for any other store."""
    parts = urlsplit(limits_url or backend_url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        return "async+memory://", "lockd-limits"
    options = dict(parse_qsl(parts.query))
    prefix = options.get("prefix", "lockd:") + "limits"
    return f"async+{scheme}://{parts.netloc}{parts.path}", prefix


class LocalStorage(MemoryStorage):
    """The ``limits`` package's in-process storage with expiry that costs O(log n) per hit.

    Hand-written because the package's own (``limits.aio.storage.MemoryStorage``, 5.8)
    starts a pass over **every** key it holds on each increment: measured with the event
    loop running between hits (``bench.limits_memory``), a hit cost 18 us with 1 key,
    1.2 ms with 10,000 and 15 ms with 100,000, so public mode with many tenants slowed to a
    tenth (bench/RESULTS.md). Counting is the package's (its sliding window counter reads
    and writes these counters); only expiry differs: a key is dropped when read after its
    expiry, as in the package, and each increment also drops up to :data:`SWEEP` keys whose
    expiry has passed, soonest first, from a heap of expiries. The limits have windows of
    different lengths, so insertion order is not expiry order; a heap is. Each increment
    pushes at most one entry and pops up to :data:`SWEEP`, so memory stays bounded by the
    keys set within the longest window (tested).
    """

    #: A scheme of its own: limits registers storages by scheme, and this one must not
    #: take "async+memory" from the package's.
    STORAGE_SCHEME = ["async+lockd-memory"]
    #: Expired keys dropped per increment, soonest expiry first.
    SWEEP = 4

    def __init__(self) -> None:
        super().__init__()
        #: (expiry, key) for every expiry set; an entry whose key has since been dropped or
        #: given another expiry is stale and skipped when it comes up.
        self._due: list[tuple[float, str]] = []

    # No per-key lock, unlike the package: nothing between the read and the write awaits,
    # so on one event loop no other hit can come between them. The package's locks were
    # an asyncio.Lock object per key held, 100,000 of them with as many tenants, each one
    # walked by every full pass of Python's garbage collector.

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        await self.get(key)
        self._sweep()
        self.storage[key] += amount
        if self.storage[key] == amount:
            due = time.time() + expiry
            self.expirations[key] = due
            heapq.heappush(self._due, (due, key))
        return self.storage[key]

    async def decr(self, key: str, amount: int = 1) -> int:
        await self.get(key)
        self.storage[key] = max(self.storage[key] - amount, 0)
        return self.storage[key]

    async def reset(self) -> int | None:
        self._due.clear()
        return await super().reset()

    def _sweep(self) -> None:
        now = time.time()
        for _ in range(self.SWEEP):
            if not self._due or self._due[0][0] > now:
                return
            due, key = heapq.heappop(self._due)
            if self.expirations.get(key) == due:
                del self.expirations[key]
                self.storage.pop(key, None)


class Limits:
    """The four limits; each ``check_*`` raises 429 ``rate_limited`` with Retry-After."""

    def __init__(
        self,
        backend_url: str,
        *,
        limits_url: str = "",
        create: str,
        miss: str,
        tenant: str,
        ip: str,
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        uri, prefix = storage_uri(backend_url, limits_url)
        if uri.startswith("async+memory"):
            self.storage: Storage = LocalStorage()
        else:
            self.storage = storage_from_string(uri, implementation="redispy",
                                               key_prefix=prefix)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.configure(create=create, miss=miss, tenant=tenant, ip=ip,
                       trusted_proxies=trusted_proxies)

    def configure(
        self,
        *,
        create: str,
        miss: str,
        tenant: str,
        ip: str,
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        """Set the rates and trusted proxies (at start-up and on SIGHUP). Every rate is
        parsed before any is replaced, so a bad one changes nothing. The ``limits``
        package keys a counter by its rate too: a changed rate starts counting afresh,
        an unchanged one keeps its count."""
        items = check_rate(create), check_rate(miss), check_rate(tenant), check_rate(ip)
        self.create, self.miss, self.tenant, self.ip = items
        self.trusted_proxies = trusted_proxies

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        return client_network(client_address(peer, forwarded_for, self.trusted_proxies))

    async def _hit(self, item: RateLimitItem, what: str, key: str) -> None:
        try:
            allowed = await self.limiter.hit(item, what, key)
        except Exception as exc:  # a limiter that cannot count must not stop the fleet
            log.warning("rate limiter unavailable, request allowed: %s", exc)
            return
        if allowed:
            return
        try:
            stats = await self.limiter.get_window_stats(item, what, key)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
        except Exception:
            retry = item.get_expiry()
        raise LockdError(
            Kind.rate_limited,
            f"too many {_WHAT[what]}; try again in {retry}s",
            headers={"Retry-After": str(retry)},
        )

    async def check_ip(self, client: str) -> None:
        await self._hit(self.ip, "ip", client)

    async def check_create(self, client: str) -> None:
        await self._hit(self.create, "create", client)

    async def check_miss(self, client: str) -> None:
        await self._hit(self.miss, "miss", client)

    async def check_tenant(self, tenant_hash: str) -> None:
        await self._hit(self.tenant, "tenant", tenant_hash)


_WHAT = {
    "ip": "requests from this address",
    "create": "new groups from this address",
    "miss": "refused requests from this address",
    "tenant": "requests for this tenant",
}
