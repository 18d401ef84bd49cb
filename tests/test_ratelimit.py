"""lockd.ratelimit alone: who a client is, and the sizing of the default limits, driven
with a fake clock: 5,000 nodes of one tenant behind one NAT at zincati's poll rate are
never throttled, while one address creating tenants is stopped within a second and one
address polling many tenants within seconds."""

from __future__ import annotations

import bisect
import random
from types import SimpleNamespace

import limits.aio.storage.memory
import limits.aio.strategies
import pytest
from limits import parse

from lockd import ratelimit
from lockd.config import Settings
from lockd.errors import Kind, LockdError
from lockd.ratelimit import Limits, client_address, client_network, parse_networks


def test_client_networks() -> None:
    assert client_network("192.0.2.7") == "192.0.2.7"
    assert client_network("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:2:ffff::1") == client_network("2001:db8:1:2::9")
    assert client_network("2001:db8:1:3::1") != client_network("2001:db8:1:2::1")
    assert client_network("garbage") == "unknown"


def test_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    trusted = parse_networks(["10.0.0.0/8", "127.0.0.1"])
    assert client_address("198.51.100.1", "203.0.113.9", trusted) == "198.51.100.1"
    assert client_address("10.1.1.1", "203.0.113.9", trusted) == "203.0.113.9"
    # A client's own X-Forwarded-For entries are left of what the proxy appended.
    assert client_address("10.1.1.1", "1.2.3.4, 203.0.113.9", trusted) == "203.0.113.9"
    assert client_address("10.1.1.1", "203.0.113.9, 10.2.2.2", trusted) == "203.0.113.9"
    assert client_address("10.1.1.1", None, trusted) == "10.1.1.1"
    with pytest.raises(ValueError):
        parse_networks(["not-a-net"])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def module(self) -> SimpleNamespace:
        import time

        return SimpleNamespace(time=lambda: self.now, monotonic=lambda: self.now,
                               sleep=time.sleep, perf_counter=time.perf_counter)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    for module in (limits.aio.storage.memory, limits.aio.strategies, ratelimit):
        monkeypatch.setattr(module, "time", clock.module())
    return clock


def default_limits() -> Limits:
    d = Settings()
    return Limits("memory://", create=d.public_ip_create_rate, miss=d.public_ip_miss_rate,
                  tenant=d.public_tenant_rate, ip=d.public_ip_rate)


async def test_5000_nodes_behind_one_nat_at_zincatis_rate_are_never_throttled(
    clock: FakeClock,
) -> None:
    lim = default_limits()
    rng = random.Random(7)
    nodes, period = 5000, 300.0
    # Each node polls every 300 s + 0-10% jitter (zincati), from one address, one tenant;
    # one in ten also re-locks every 60 s, 10 times (an interactive session postponing
    # its reboot), and every node sends a steady-state at boot (its first request).
    due = sorted((rng.uniform(0, period), n) for n in range(nodes))
    relocks = dict.fromkeys(range(0, nodes, 10), 10)
    end = clock.now + 30 * 60
    start = clock.now
    hits = 0
    while due:
        t, n = due.pop(0)
        clock.now = start + t
        if clock.now > end:
            break
        client = lim.client("198.51.100.1", None)
        # What Public.admit asks of every request of a tenant (each raises on a 429).
        await lim.check_ip(client)
        await lim.check_tenant("tenant-hash")
        hits += 1
        if relocks.get(n):
            relocks[n] -= 1
            step = 60.0
        else:
            step = period * (1 + rng.uniform(0, 0.1))
        bisect.insort(due, (t + step, n))
    assert client == "198.51.100.1"
    assert hits > 28_000


async def test_one_address_creating_tenants_is_stopped_within_a_second(
    clock: FakeClock,
) -> None:
    lim = default_limits()
    start = clock.now
    created = 0
    with pytest.raises(LockdError) as info:
        while True:
            clock.now += 0.02  # 50 new tenants a second
            await lim.check_create("203.0.113.5")
            created += 1
    assert info.value.kind is Kind.rate_limited
    assert clock.now - start < 1.0 and created <= 20
    assert int(info.value.headers["Retry-After"]) >= 1
    # Another address is not held back by it.
    await lim.check_create("203.0.113.6")


async def test_misses_are_limited_per_address(clock: FakeClock) -> None:
    lim = default_limits()
    for _ in range(30):
        clock.now += 0.01
        await lim.check_miss("203.0.113.5")
    with pytest.raises(LockdError) as info:
        await lim.check_miss("203.0.113.5")
    assert info.value.kind is Kind.rate_limited
    # A minute on, the address may miss again (a misconfigured node retries every 300 s).
    clock.now += 120
    await lim.check_miss("203.0.113.5")


async def test_one_address_polling_many_tenants_is_stopped_within_seconds(
    clock: FakeClock,
) -> None:
    """A spray that creates nothing: every request a fresh tenant (so no tenant limit ever
    counts past 1), 1,000 a second from one address, all limits at their defaults."""
    lim = default_limits()
    start = clock.now
    sent = 0
    with pytest.raises(LockdError) as info:
        while sent < 100_000:  # bounded: without the limit the test fails, not hangs
            clock.now += 0.001
            await lim.check_ip("203.0.113.5")
            await lim.check_tenant(f"tenant-{sent}")
            sent += 1
    assert info.value.kind is Kind.rate_limited
    assert "from this address" in info.value.value
    assert clock.now - start < 10.0 and sent == 6000
    assert int(info.value.headers["Retry-After"]) >= 1
    # The address stays held to the rate: a minute later it has a minute's worth again,
    # not more.
    clock.now += 60
    allowed = 0
    with pytest.raises(LockdError):
        while allowed < 100_000:
            clock.now += 0.001
            await lim.check_ip("203.0.113.5")
            allowed += 1
    assert allowed <= 6000
    # Another address, and the same tenants from it, are not held back.
    await lim.check_ip("203.0.113.6")


async def test_configure_replaces_every_rate_or_none(clock: FakeClock) -> None:
    lim = default_limits()
    d = Settings()
    rates = {"create": d.public_ip_create_rate, "miss": d.public_ip_miss_rate,
             "tenant": d.public_tenant_rate, "ip": d.public_ip_rate}
    with pytest.raises(ValueError):
        lim.configure(**{**rates, "ip": "2/minute", "tenant": "lots"})
    assert lim.ip.amount == 6000 and lim.tenant.amount == 3000
    lim.configure(**{**rates, "ip": "2/minute"},
                  trusted_proxies=parse_networks(["10.0.0.0/8"]))
    await lim.check_ip("203.0.113.5")
    await lim.check_ip("203.0.113.5")
    with pytest.raises(LockdError):
        await lim.check_ip("203.0.113.5")
    assert lim.client("10.1.1.1", "203.0.113.9") == "203.0.113.9"
    # The same rates again (a reload that changed something else): the count goes on.
    lim.configure(**{**rates, "ip": "2/minute"})
    with pytest.raises(LockdError):
        await lim.check_ip("203.0.113.5")
    # A changed rate counts afresh.
    lim.configure(**{**rates, "ip": "3/minute"})
    for _ in range(3):
        await lim.check_ip("203.0.113.5")
    with pytest.raises(LockdError):
        await lim.check_ip("203.0.113.5")


def test_limits_url_chooses_where_counters_live() -> None:
    store = "redis://db.example:6379/0?prefix=prod:"
    # Unset: the store's own Redis and prefix; memory for any other store.
    assert ratelimit.storage_uri(store) == ("async+redis://db.example:6379/0", "prod:limits")
    assert ratelimit.storage_uri("sqlite:///x.db")[0] == "async+memory://"
    # Set: that, whatever the store.
    assert ratelimit.storage_uri(store, "memory://")[0] == "async+memory://"
    assert ratelimit.storage_uri("sqlite:///x.db", "rediss://:pw@cache:6380/2?prefix=l:") == (
        "async+rediss://:pw@cache:6380/2", "l:limits")
    assert ratelimit.storage_uri("etcd://e:2379", "redis://cache") == (
        "async+redis://cache", "lockd:limits")


@pytest.mark.parametrize("url", [
    "memory://", "redis://127.0.0.1", "redis://127.0.0.1:6379/0?prefix=x:",
    "rediss://:secret@cache.example:6380/3"])
def test_limits_url_accepts(url: str) -> None:
    assert ratelimit.check_limits_url(url) == url


@pytest.mark.parametrize("url", [
    "", "sqlite:///tmp/x.db", "memcached://127.0.0.1:11211", "memory://elsewhere",
    "redis://", "redis://127.0.0.1:port/0", "redis://127.0.0.1/zero",
    "redis://127.0.0.1/0?max_connections=5", "unix:///run/redis.sock"])
def test_limits_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        ratelimit.check_limits_url(url)


async def test_local_storage_counts_as_the_package_does(clock: FakeClock) -> None:
    """lockd's in-process storage differs from the package's only in expiry: the same hits,
    at the same (fake) times, are allowed and refused alike."""
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

    from lockd.ratelimit import LocalStorage

    theirs = SlidingWindowCounterRateLimiter(MemoryStorage())
    ours = SlidingWindowCounterRateLimiter(LocalStorage())
    item = parse("5/minute")
    rng = random.Random(3)
    answers = []
    for _ in range(3000):
        clock.now += rng.choice((0.0, 0.5, 3.0, 20.0))
        key = f"k{rng.randrange(8)}"
        a, b = await theirs.hit(item, key), await ours.hit(item, key)
        assert a == b
        answers.append(a)
    assert True in answers and False in answers  # both outcomes were compared


async def test_local_storage_drops_expired_keys_without_a_pass_over_all(clock: FakeClock) -> None:
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

    from lockd.ratelimit import LocalStorage

    storage = LocalStorage()
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = parse("10/minute")
    for i in range(1000):
        await limiter.hit(item, f"old{i}")
    assert len(storage.expirations) == 1000
    clock.now += 3 * 60  # past every key's expiry (twice the window)
    for i in range(300):
        await limiter.hit(item, f"new{i}")
    # Each increment dropped up to SWEEP of the expired keys: 300 x 4 >= 1000.
    assert not any("old" in k for k in storage.expirations)
    assert len(storage.expirations) == 300
    # And it keeps no object per key for the garbage collector to walk (the package's
    # storage keeps an asyncio.Lock per key).
    assert not storage.locks


async def test_local_storage_sweeps_short_windows_past_a_long_one(clock: FakeClock) -> None:
    """The limits have windows of different lengths: a key of an hour's window set first
    must not keep the expired keys of a minute's window behind it."""
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

    from lockd.ratelimit import LocalStorage

    storage = LocalStorage()
    limiter = SlidingWindowCounterRateLimiter(storage)
    await limiter.hit(parse("10/hour"), "long")
    for i in range(1000):
        await limiter.hit(parse("10/minute"), f"old{i}")
    clock.now += 3 * 60
    for i in range(300):
        await limiter.hit(parse("10/minute"), f"new{i}")
    assert not any("old" in k for k in storage.expirations)
    assert any("long" in k for k in storage.expirations)  # not expired: kept
    assert len(storage.expirations) == 301
    # The heap of expiries stays bounded too: what was popped is gone.
    assert len(storage._due) <= 301 + LocalStorage.SWEEP


async def test_local_storage_counts_as_the_package_does_across_windows(
    clock: FakeClock,
) -> None:
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

    from lockd.ratelimit import LocalStorage

    theirs = SlidingWindowCounterRateLimiter(MemoryStorage())
    ours = SlidingWindowCounterRateLimiter(LocalStorage())
    items = [parse("5/minute"), parse("20/hour"), parse("3/second")]
    rng = random.Random(5)
    answers = []
    for _ in range(4000):
        clock.now += rng.choice((0.0, 0.0, 0.0, 0.05, 1.0, 30.0, 700.0))
        item, key = rng.choice(items), f"k{rng.randrange(3)}"
        a, b = await theirs.hit(item, key), await ours.hit(item, key)
        assert a == b
        answers.append(a)
    assert True in answers and False in answers
