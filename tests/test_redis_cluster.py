"""Redis Cluster (``redis+cluster://``) on real three-master clusters with a replica each.

The contract suite (tests/test_backend_contract.py) runs on the session cluster too; this
file adds what only a cluster has: URLs naming several nodes, a fresh client used by many
requests at once, one slot per group with groups spread over the masters, a script cache
per master, SCAN over every master, WAIT on the right master, lockd replicas storming the
cluster, and a master killed mid-storm while its replica takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from bench.procs import Lockd, free_port
from bench.servers import RedisClusterServer
from lockd.backends import BackendUnavailable, InvalidBackendURL, open_backend
from lockd.backends.redis import CAS
from lockd.backends.redis_cluster import RedisClusterBackend, Topology
from lockd.layouts import NativeLayout
from lockd.semaphore import Outcome
from lockd.service import GroupSettings, LockService, stop
from lockd.store import Store
from lockd.view import View, follow
from tests.history import storm, violations
from tests.replicas import post, replica
from tests.test_backend_contract import Recorder
from tests.tls import certificates

LAYOUT = NativeLayout()


def native(backend: RedisClusterBackend) -> Store:
    return Store(backend, LAYOUT)


# URLs: checked when the configuration loads, before anything connects.


@pytest.mark.parametrize(
    ("url", "nodes", "prefix", "timeout"),
    [
        ("redis+cluster://10.0.0.1:7000", (("10.0.0.1", 7000),), "lockd:", 2.0),
        ("redis+cluster://:s3cret@a:7000,b:7001,c/?prefix=fleet:&timeout=0.5",
         (("a", 7000), ("b", 7001), ("c", 6379)), "fleet:", 0.5),
        ("rediss+cluster://u:pw@a:7000/0?ssl_ca_certs=/etc/ca.pem&max_connections=8",
         (("a", 7000),), "lockd:", 2.0),
        ("redis+cluster://[::1]:7000,[::1]:7001", (("::1", 7000), ("::1", 7001)), "lockd:",
         2.0),
    ],
)
def test_urls_parse(url: str, nodes: tuple, prefix: str, timeout: float) -> None:
    backend = open_backend(url)
    assert isinstance(backend, RedisClusterBackend)
    assert backend.options.cluster_nodes == nodes
    assert backend.options.prefix == prefix
    assert backend.options.timeout == timeout
    assert "s3cret" not in backend.describe() and "pw" not in backend.describe()
    assert backend.describe().startswith(url.partition("://")[0] + "://")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://a:7000?db=1", "only database 0"),
        ("redis+cluster://a:7000/2", "only database 0"),
        ("redis+cluster://", "names no node"),
        ("redis+cluster://a:port", "host:port"),
        ("redis+cluster://a:7000?timeout=0", "timeout"),
        ("redis+cluster://a:7000?prefix=x{y}", "braces"),
        ("redis+cluster://a:7000?ssl_ca_certs=/ca.pem", "rediss\\+cluster://"),
        ("redis+cluster://a:7000?sentinel_password=x", "sentinel_password"),
        ("redis+cluster://a:7000?colour=blue", "colour"),
    ],
)
def test_bad_urls_name_the_problem(url: str, message: str) -> None:
    with pytest.raises(InvalidBackendURL, match=message):
        open_backend(url)


# On the session cluster.


@pytest.fixture
async def cbackend(redis_cluster_url: str) -> AsyncIterator[RedisClusterBackend]:
    backend = open_backend(redis_cluster_url)
    assert isinstance(backend, RedisClusterBackend)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
async def masters(redis_cluster: RedisClusterServer) -> AsyncIterator[list[aioredis.Redis]]:
    """A plain client on each master of the session cluster."""
    clients = [aioredis.Redis(port=n.port) for n in redis_cluster.masters_now()]
    try:
        yield clients
    finally:
        for c in clients:
            await c.aclose()


@pytest.mark.parametrize("open_first", [True, False], ids=["opened", "not-opened"])
async def test_fifty_concurrent_first_calls_on_a_fresh_backend(
    redis_cluster_url: str, open_first: bool
) -> None:
    """redis-py 8.1's fresh async cluster client fails some of 50 concurrent first calls
    ("'NoneType' object has no attribute 'writelines'"); open() learns the topology first,
    and a backend used without open() learns it once, before any of the calls runs."""
    for attempt in range(5):  # the race is likely, not certain: give it a few chances
        backend = open_backend(f"{redis_cluster_url}{attempt}")
        if open_first:
            await backend.open()
        try:
            results = await asyncio.gather(
                *(backend.compare_and_set(LAYOUT.key(f"g{i}"), b"x", None) for i in range(25)),
                *(backend.get(LAYOUT.key(f"g{i}")) for i in range(25)),
                return_exceptions=True,
            )
        finally:
            await backend.close()
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert all(r.stored for r in results[:25])


async def test_groups_live_in_one_slot_each_spread_over_the_masters(
    cbackend: RedisClusterBackend, redis_cluster: RedisClusterServer
) -> None:
    service = LockService(native(cbackend), GroupSettings(default_slots=1))
    groups = [f"group-{i}" for i in range(24)]
    for group in groups:
        assert await service.pre_reboot(group, "a") is Outcome.GRANTED
    # SCAN runs on every master: all the groups are listed, whichever master has them.
    assert await service.list_groups() == sorted(groups)
    keys = [cbackend.redis_key(LAYOUT.key(g)) for g in groups]
    slots = {key_slot(k.encode()) for k in keys}
    assert len(slots) == len(groups)  # one slot per group (one key per group)
    owners = {redis_cluster.master_of(k).port for k in keys}
    assert len(owners) == 3, "24 groups should land on all three masters"


async def test_each_master_falls_back_to_eval_for_its_own_script_cache(
    cbackend: RedisClusterBackend, redis_cluster: RedisClusterServer,
    masters: list[aioredis.Redis],
) -> None:
    """A script cache is per node: after SCRIPT FLUSH on every master (a restart, a
    promoted replica), each master answers NOSCRIPT once and gets the script by EVAL."""
    by_master: dict[int, str] = {}
    for i in range(60):
        key = LAYOUT.key(f"s{i}")
        by_master.setdefault(redis_cluster.master_of(cbackend.redis_key(key)).port, key)
    assert len(by_master) == 3
    for key in by_master.values():
        assert (await cbackend.compare_and_set(key, b"one", None)).stored
    for m in masters:
        await m.script_flush()
        assert await m.script_exists(CAS.sha) == [False]
    for key in by_master.values():
        _, version = await cbackend.get(key)
        assert (await cbackend.compare_and_set(key, b"two", version)).stored
        assert (await cbackend.get(key))[0] == b"two"
    for m in masters:
        assert await m.script_exists(CAS.sha) == [True]


async def test_wait_replicas_waits_on_the_master_of_the_key(redis_cluster_url: str) -> None:
    """Each master has one replica: WAIT 1 is met on every master, WAIT 2 on none."""
    one = open_backend(redis_cluster_url + "&wait_replicas=1")
    two = open_backend(redis_cluster_url + "&wait_replicas=2&timeout=0.5")
    try:
        service = LockService(native(one), GroupSettings(default_slots=1))
        for i in range(12):
            assert await service.pre_reboot(f"w{i}", "a") is Outcome.GRANTED
            assert await service.pre_reboot(f"w{i}", "a") is Outcome.ALREADY_HELD
        assert len(await service.list_groups()) == 12
        with pytest.raises(BackendUnavailable, match=r"1 of 2 replicas of 127\.0\.0\.1:"):
            await two.get(LAYOUT.key("w0"))
        with pytest.raises(BackendUnavailable, match="1 of 2 replicas"):
            await two.compare_and_set(LAYOUT.key("w-new"), b"x", None)
    finally:
        await one.close()
        await two.close()


async def test_unreachable_cluster_is_no_error_at_start_and_503_after() -> None:
    backend = open_backend(f"redis+cluster://127.0.0.1:{free_port()}?timeout=0.5")
    await backend.open()  # lockd starts; /readyz says 503 until the cluster answers
    try:
        started = time.monotonic()
        for call in (backend.ping(), backend.get(LAYOUT.key("g")),
                     backend.compare_and_set(LAYOUT.key("g"), b"x", None)):
            with pytest.raises(BackendUnavailable, match="redis cluster"):
                await call
        assert time.monotonic() - started < 5
    finally:
        await backend.close()


async def test_a_cluster_that_comes_up_after_lockd_is_used(tmp_path: Path) -> None:
    cluster = RedisClusterServer(tmp_path, masters=3, replicas=0)
    backend = open_backend(cluster.url + "?timeout=0.5")
    await backend.open()
    try:
        with pytest.raises(BackendUnavailable):
            await backend.ping()
        cluster.start()
        await backend.ping()
        results = await asyncio.gather(
            *(backend.compare_and_set(LAYOUT.key(f"late{i}"), b"x", None) for i in range(30)))
        assert all(r.stored for r in results)
    finally:
        await backend.close()
        cluster.stop()


async def test_rediss_cluster_with_mutual_tls(tmp_path: Path) -> None:
    """TLS to every node (the nodes talk TLS to each other too): with the client
    certificate lockd is served, without it every call is a 503."""
    certificates(tmp_path)
    cluster = RedisClusterServer(tmp_path / "cluster", replicas=0, tls=tmp_path).start()
    good = open_backend(cluster.url + "&timeout=2")
    anonymous = open_backend(cluster.url.partition("&ssl_certfile")[0] + "&timeout=1")
    try:
        assert isinstance(good, RedisClusterBackend)
        assert good.options.scheme == "rediss+cluster"
        await good.open()
        service = LockService(native(good), GroupSettings(default_slots=1))
        for i in range(6):  # groups on every master
            assert await service.pre_reboot(f"tls{i}", "a") is Outcome.GRANTED
            assert await service.pre_reboot(f"tls{i}", "b") is Outcome.FULL
        await good.ping()
        await anonymous.open()
        with pytest.raises(BackendUnavailable):
            await anonymous.ping()
    finally:
        await good.close()
        await anonymous.close()
        cluster.stop()


# lockd processes over real HTTP.


async def test_three_replicas_storm_the_cluster_and_never_exceed_slots(
    tmp_path: Path, redis_cluster_url: str, replicas: list[Lockd]
) -> None:
    rng = random.Random(11)
    slots = {f"g{i:02d}": rng.randint(1, 3) for i in range(15)}
    for i in range(3):
        replicas.append(replica(tmp_path, redis_cluster_url, slots, f"lockd{i}").start())
    report = await storm([r.url for r in replicas], slots, clients=150, rounds=2,
                         hold=(0.0, 0.02), seed=5)
    assert report.grants == 300 and len(report.holds) == 300
    assert violations(report.holds, slots) == []
    assert report.statuses[423] > 0, "no contention: the storm did not test anything"
    assert report.statuses.get(500, 0) == 0
    backend = open_backend(redis_cluster_url)
    service = LockService(native(backend), GroupSettings(slots=slots))
    try:
        for group in slots:  # every release was acknowledged: nobody holds now
            sem = await service.read(group)
            assert sem is not None and sem.holders == ()
    finally:
        await backend.close()


@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["default", "wait_replicas=1"])
async def test_a_master_killed_mid_storm_fails_over_to_its_replica(
    tmp_path: Path, replicas: list[Lockd], wait_replicas: int
) -> None:
    """SIGKILL one master under a storm; the cluster promotes its replica after the node
    timeout (1 s here). Meanwhile lockd answers 503 for that master's groups (or, until its
    feed has seen the master go, a refusal from its view), never 500;
    afterwards it serves them again without a restart, and no two certain holds of a
    group ever overlapped beyond its slots.

    With ``wait_replicas=1`` every 200 was confirmed by the replica that is promoted, so a
    lost grant is impossible; the promoted master has no replica until the killed node
    comes back (as its replica), and until then its groups answer 503. Without it, a
    grant acknowledged in the instant between the master's reply and its replication
    would be lost (docs/redis.md): too narrow to hit on loopback, never excluded.
    """
    cluster = RedisClusterServer(tmp_path / "cluster", node_timeout_ms=1000).start()
    try:
        url = f"{cluster.url}?timeout=1&wait_replicas={wait_replicas}"
        slots = {f"f{i}": 1 + i % 2 for i in range(9)}
        for i in range(2):
            replicas.append(replica(tmp_path, url, slots, f"lockd{i}").start())
        urls = [r.url for r in replicas]
        victim = cluster.master_of("lockd:{lockd/v1/groups/f0}")
        on_victim = sorted(g for g in slots
                           if cluster.master_of(f"lockd:{{lockd/v1/groups/{g}}}") is victim)
        traffic = asyncio.create_task(
            storm(urls, slots, clients=48, rounds=8, hold=(0.01, 0.06), seed=3)
        )
        await asyncio.sleep(0.5)
        assert not traffic.done(), "the storm ended before the crash"
        assert victim.proc is not None
        victim.proc.kill()  # SIGKILL
        killed_at = time.monotonic()
        async with aiohttp.ClientSession() as session:
            for n, u in enumerate(urls):
                # Until its feed has seen the master's connection end (or the master is
                # dead at all), a replica may still refuse from its view: only a 423.
                # Then the master's groups are 503s until the promotion.
                while True:
                    status, body = await post(session, u, "pre-reboot", on_victim[0],
                                              f"probe{n}")
                    assert (status, body["kind"]) in (
                        (423, "failed_lock_semaphore_full"), (503, "backend_unavailable"))
                    if status == 503:
                        break
                    assert time.monotonic() - killed_at < 20, "never a 503 after the kill"
                    await asyncio.sleep(0.02)

            await asyncio.to_thread(cluster.wait_ok, 30, linked=False)
            promoted_after = time.monotonic() - killed_at
            if wait_replicas:
                victim.start()  # rejoins as the replica of its promoted replica
            await asyncio.to_thread(cluster.wait_ok, 30)

            report = await asyncio.wait_for(traffic, 60)
            assert report.grants == 384 and len(report.holds) == 384
            assert violations(report.holds, slots) == []
            assert report.statuses.get(500, 0) == 0, report.statuses
            assert report.statuses[503] > 0, "the storm never saw the failover"
            late = [h for h in report.holds
                    if h.group in on_victim and h.start > killed_at + promoted_after]
            assert late, "no grant on the failed-over master's groups during the storm"

            # Served again, without restarting lockd, on every replica.
            for n, u in enumerate(urls):
                async with session.get(u + "/readyz") as resp:
                    assert resp.status == 200
                for group in on_victim:
                    status, body = await post(session, u, "steady-state", group, f"probe{n}")
                    assert status == 200
                    status, body = await post(session, u, "pre-reboot", group, f"after{n}")
                    assert (status, body) == (200, {"outcome": "granted"})
                    status, body = await post(session, u, "steady-state", group, f"after{n}")
                    assert (status, body) == (200, {"outcome": "released"})
    finally:
        cluster.stop()


# The change feed: every master followed, the topology watched (RedisClusterBackend.watch).


async def test_the_feed_reports_writes_on_every_master(
    cbackend: RedisClusterBackend, redis_cluster: RedisClusterServer
) -> None:
    by_master: dict[int, str] = {}
    for i in range(60):
        key = LAYOUT.key(f"fed{i}")
        by_master.setdefault(redis_cluster.master_of(cbackend.redis_key(key)).port, key)
    assert len(by_master) == 3
    sink = Recorder()
    feed = asyncio.create_task(cbackend.watch(LAYOUT.group_prefix(), sink))
    try:
        await sink.until(lambda: sink.subscriptions == 1)
        for key in by_master.values():
            assert (await cbackend.compare_and_set(key, b"x", None)).stored
        await sink.until(lambda: set(by_master.values()) <= {k for k, _ in sink.changes})
        assert not feed.done()
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed


@contextlib.asynccontextmanager
async def viewed(url: str, *, topology_poll_s: float | None = None
                 ) -> AsyncIterator[tuple[View, LockService, LockService]]:
    """A service answering refusals from a view that follows the cluster's feed (max age
    far longer than the tests wait: a refusal that ends did so by a notification or a
    resubscribe), and another service without a view, on its own client."""
    here, there = open_backend(url), open_backend(url)
    assert isinstance(here, RedisClusterBackend)
    if topology_poll_s is not None:
        here.topology_poll_s = topology_poll_s
    await here.open()
    await there.open()
    view = View(max_age=MAX_AGE)
    service = LockService(native(here), GroupSettings(default_slots=1), view=view)
    other = LockService(native(there), GroupSettings(default_slots=1))
    task = asyncio.create_task(follow(here, LAYOUT.group_prefix(), view))
    try:
        await until(lambda: view.connected, "the feed subscribed")
        yield view, service, other
    finally:
        await stop(task)
        await here.close()
        await there.close()


async def until(check: Callable[[], object], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not await _maybe_await(check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.05)


async def _maybe_await(value: object) -> object:
    return await value if asyncio.iscoroutine(value) else value  # type: ignore[misc]


async def settled(call: Callable[[], Awaitable[Outcome]]) -> Outcome:
    """``call``'s outcome once the store answers (503s while a failover completes)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return await call()
        except BackendUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


MAX_AGE = 60.0


async def test_a_killed_master_ends_the_feed_and_the_promoted_replica_is_followed(
    tmp_path: Path,
) -> None:
    """SIGKILL a master while the view answers refusals: the feed ends at once (nothing
    from the view while that master's changes go unseen), the view forgets, and after the
    promotion the feed follows the promoted replica (which has none of the dead master's
    tracking state): no refusal from an entry of before, and the promoted master's own
    changes reach the view. The topology check is off here (once an hour): the dead
    master's connection alone ends the feed."""
    cluster = RedisClusterServer(tmp_path / "cluster", node_timeout_ms=1000).start()
    try:
        groups = [f"k{i}" for i in range(9)]
        async with viewed(cluster.url + "?timeout=1", topology_poll_s=3600) as (
                view, service, other):
            for g in groups:
                assert await service.pre_reboot(g, "a") is Outcome.GRANTED
                assert await service.pre_reboot(g, "b") is Outcome.FULL

            async def all_from_the_view() -> bool:
                # A write's own invalidation can reach the feed after the refusal that
                # refilled its entry, which then forgets it once more (safe, and a miss):
                # on a loaded machine a pass or two of refusals can still read the store.
                hits = view.hits
                for g in groups:
                    assert await service.pre_reboot(g, "b") is Outcome.FULL
                return view.hits == hits + len(groups)

            await until(all_from_the_view, "every refusal from the view", seconds=10)
            victim = cluster.master_of("lockd:{" + LAYOUT.key(groups[0]) + "}")
            on_victim = [g for g in groups
                         if cluster.master_of("lockd:{" + LAYOUT.key(g) + "}") is victim]
            epoch = view.epoch
            assert victim.proc is not None
            victim.proc.kill()
            await until(lambda: not view.connected, "the feed saw the master die")
            await asyncio.to_thread(cluster.wait_ok, 30, linked=False)  # promoted
            for g in groups:  # through the other client: the view is told nothing of it
                assert await settled(lambda g=g: other.steady_state(g, "a")) \
                    is Outcome.RELEASED
            await until(lambda: view.connected, "the feed followed the new topology")
            assert view.epoch > epoch
            for g in groups:  # an entry of before the resubscribe would refuse for 60 s
                assert await service.pre_reboot(g, "b") is Outcome.GRANTED
            hits = view.hits
            for g in on_victim:
                assert await service.pre_reboot(g, "c") is Outcome.FULL
                assert await service.pre_reboot(g, "c") is Outcome.FULL
            assert view.hits >= hits + len(on_victim), "the view does not answer again"
            for g in on_victim:  # a release on the promoted master, told by its feed
                assert await other.steady_state(g, "b") is Outcome.RELEASED

                async def granted(g: str = g) -> bool:
                    return await service.pre_reboot(g, "c") is Outcome.GRANTED

                await until(granted, f"{g}'s release reached the view", seconds=10)
    finally:
        cluster.stop()


async def test_a_manual_failover_resubscribes(tmp_path: Path) -> None:
    """CLUSTER FAILOVER: the old master lives on as a replica and its connections stay
    open, so only the topology check notices; the view forgets and resubscribes."""
    cluster = RedisClusterServer(tmp_path / "cluster", node_timeout_ms=1000).start()
    try:
        async with viewed(cluster.url + "?timeout=1") as (view, service, other):
            assert await service.pre_reboot("m", "a") is Outcome.GRANTED
            assert await service.pre_reboot("m", "b") is Outcome.FULL
            old = cluster.master_of("lockd:{" + LAYOUT.key("m") + "}")
            info = cluster.command(old, "info", "replication")
            port = int(info.split("slave0:", 1)[1].split("port=", 1)[1].split(",", 1)[0])
            replica_ = next(n for n in cluster.nodes if n.port == port)
            resyncs = view.resyncs
            assert "OK" in cluster.command(replica_, "cluster", "failover")
            await until(lambda: view.resyncs > resyncs and view.connected,
                        "the feed resubscribed after the failover")
            assert cluster.master_of("lockd:{" + LAYOUT.key("m") + "}") is replica_
            assert view.lookup(LAYOUT.key("m")) is None  # nothing of before is trusted
            assert await settled(lambda: other.steady_state("m", "a")) is Outcome.RELEASED

            async def granted() -> bool:
                return await service.pre_reboot("m", "b") is Outcome.GRANTED

            await until(granted, "b granted after the release", seconds=10)
    finally:
        cluster.stop()


async def test_a_new_master_and_a_moved_slot_are_followed(tmp_path: Path) -> None:
    """A master added, then a group's slot moved onto it: each change of the topology
    resubscribes, and a release written on the new master reaches the view (a feed that
    did not follow it would refuse for the whole max age)."""
    cluster = RedisClusterServer(tmp_path / "cluster", replicas=0).start()
    try:
        async with viewed(cluster.url + "?timeout=1") as (view, service, other):
            key = "lockd:{" + LAYOUT.key("n") + "}"
            assert await service.pre_reboot("n", "a") is Outcome.GRANTED
            assert await service.pre_reboot("n", "b") is Outcome.FULL
            resyncs = view.resyncs
            new = await asyncio.to_thread(cluster.add_master)
            await until(lambda: view.resyncs > resyncs and view.connected,
                        "the feed resubscribed to four masters")
            resyncs = view.resyncs
            await asyncio.to_thread(cluster.move_slot, key_slot(key.encode()),
                                    cluster.master_of(key), new)
            await until(lambda: view.resyncs > resyncs and view.connected,
                        "the feed resubscribed after the slot moved")
            assert cluster.master_of(key) is new
            assert await settled(lambda: service.pre_reboot("n", "b")) is Outcome.FULL
            hits = view.hits
            assert await service.pre_reboot("n", "b") is Outcome.FULL
            assert view.hits == hits + 1  # answered from the view, on the new master
            assert await other.steady_state("n", "a") is Outcome.RELEASED

            async def granted() -> bool:
                return await service.pre_reboot("n", "b") is Outcome.GRANTED

            await until(granted, "the release on the new master reached the view",
                        seconds=10)
    finally:
        cluster.stop()


async def hmgets(masters: list[aioredis.Redis]) -> int:
    """HMGET calls so far on every master (INFO commandstats): the reads of groups."""
    total = 0
    for m in masters:
        stats = await m.info("commandstats")
        total += int(stats.get("cmdstat_hmget", {}).get("calls", 0))
    return total


async def test_the_view_on_the_cluster_refuses_without_a_read_and_never_grants(
    redis_cluster_url: str, masters: list[aioredis.Redis]
) -> None:
    """The view's trust tests on the cluster: refusals from the view read nothing; a
    holder's re-lock reads the store; a view that still shows "a" holding after an operator
    freed it and "b" took the slot elsewhere gives "a" no 200."""
    async with viewed(redis_cluster_url) as (view, service, other):
        for g in ("t0", "t1", "t2", "t3"):
            assert await service.pre_reboot(g, "a") is Outcome.GRANTED
            assert await service.pre_reboot(g, "b") is Outcome.FULL
        reads = await hmgets(masters)
        for g in ("t0", "t1", "t2", "t3"):
            for _ in range(3):
                assert await service.pre_reboot(g, "b") is Outcome.FULL
        assert await hmgets(masters) == reads
        assert view.hits >= 12
        assert await service.pre_reboot("t0", "a") is Outcome.ALREADY_HELD
        assert await hmgets(masters) == reads + 1
        assert await other.force_unlock("t1", "a") is Outcome.RELEASED
        assert await other.pre_reboot("t1", "b") is Outcome.GRANTED
        assert await service.pre_reboot("t1", "a") is Outcome.FULL
        assert await service.steady_state("t1", "b") is Outcome.RELEASED


def test_the_topology_is_what_every_settled_node_says_alike() -> None:
    """Two nodes' CLUSTER NODES of one cluster during a slot's move: the ``myself`` flag,
    ping times, link states, a PFAIL mark and the move's marks (shown by its two nodes
    only) differ, the topology does not; a failed master is not followed, an empty
    address is the node asked."""
    one = (
        "a1 :7000@17000 myself,master - 0 0 1 connected 0-5460 [93->-b2]\n"
        "b2 127.0.0.1:7001@17001 master - 0 1700000000 2 connected 5461-10922\n"
        "c3 127.0.0.1:7002@17002,host-c master,fail? - 0 1700000001 3 connected 10923-16383\n"
        "d4 127.0.0.1:7003@17003 slave a1 0 1700000002 1 connected\n"
        "e5 127.0.0.1:7004@17004 master,fail - 0 1700000003 0 disconnected\n"
        "f6 127.0.0.1:7005@17005 master - 0 1700000004 4 connected\n"
    )
    two = (
        "a1 127.0.0.1:7000@17000 master - 0 1700000100 1 connected 0-5460\n"
        "b2 127.0.0.1:7001@17001 myself,master - 0 0 2 connected 5461-10922 [93-<-a1]\n"
        "c3 127.0.0.1:7002@17002 master - 0 1700000101 3 connected 10923-16383\n"
        "d4 127.0.0.1:7003@17003 slave a1 0 1700000102 1 connected\n"
        "e5 127.0.0.1:7004@17004 master,fail - 0 1700000103 0 disconnected\n"
        "f6 127.0.0.1:7005@17005 master - 0 1700000104 4 connected\n"
    )
    a, b = Topology.parse(one, "127.0.0.1"), Topology.parse(two, "127.0.0.1")
    assert a == b
    assert sorted(a.masters) == ["a1", "b2", "c3", "f6"]  # f6: no slots, still followed
    assert a.masters["a1"] == ("127.0.0.1", 7000)
    # The move done: the slot is b2's, and that is a new topology.
    moved = two.replace("0-5460", "0-92 94-5460").replace(
        "5461-10922 [93-<-a1]", "93 5461-10922")
    assert Topology.parse(moved, "127.0.0.1") != b
    # A failover: the replica d4 is now the master of a1's slots.
    failover = two.replace("a1 127.0.0.1:7000@17000 master", "a1 127.0.0.1:7000@17000 "
                           "master,fail").replace("slave a1", "master -")
    assert Topology.parse(failover, "127.0.0.1") != b
