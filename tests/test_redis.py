"""The Redis backend on real redis-server processes: URLs, key layout, scripts, outages.

The contract suite (tests/test_backend_contract.py) also runs on redis://; this file adds
what only Redis has: URL options, hash-tagged keys, the script cache, a Unix socket, three
lockd replicas sharing one Redis, and Redis restarted or hung under a running lockd.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from bench.procs import Lockd, Proc, find_binary, wait_for_port
from bench.servers import RedisServer
from lockd.backends import BackendUnavailable, InvalidBackendURL, open_backend
from lockd.backends.redis import CAS, RedisBackend
from lockd.groups import GroupSettings
from lockd.layouts.native import NativeLayout
from lockd.semaphore import Outcome
from lockd.service import LockService
from lockd.store import Store, open_store
from tests.history import storm, violations
from tests.probes import count_reads
from tests.replicas import post, replica
from tests.tls import certificates

# URL parsing: checked when the configuration loads, before anything connects.


@pytest.mark.parametrize(
    ("url", "where", "prefix", "timeout"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1:6379/0", "lockd:", 2.0),
        ("redis://:s3cret@db.example:6380/2?prefix=fleet:&timeout=0.5", "db.example:6380/2",
         "fleet:", 0.5),
        ("rediss://db.example/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required",
         "db.example:6379/0", "lockd:", 2.0),
        ("unix:///run/redis/redis.sock?db=3", "/run/redis/redis.sock", "lockd:", 2.0),
        ("redis+sentinel://s1:26379,s2:26380/mymaster?sentinel_password=x",
         "s1:26379,s2:26380/mymaster", "lockd:", 2.0),
    ],
)
def test_urls_parse(url: str, where: str, prefix: str, timeout: float) -> None:
    backend = open_backend(url)
    assert isinstance(backend, RedisBackend)
    assert backend.options.where == where
    assert backend.options.prefix == prefix
    assert backend.options.timeout == timeout
    assert "s3cret" not in backend.describe()


def test_url_options_are_typed() -> None:
    b = open_backend("rediss://h:1/0?connect_timeout=3&ssl_check_hostname=false"
                     "&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&max_connections=8")
    assert isinstance(b, RedisBackend)
    assert b.options.connect_timeout == 3.0 and b.options.max_connections == 8
    assert b.options.tls == {"ssl_check_hostname": False, "ssl_certfile": "/c.pem",
                             "ssl_keyfile": "/k.pem"}
    s = open_backend("redis+sentinel://s1/mymaster?db=1")
    assert isinstance(s, RedisBackend)
    assert s.options.sentinels == (("s1", 26379),) and s.options.db == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h:6379/0?timeout=0", "timeout"),
        ("redis://h:6379/0?timeout=soon", "timeout"),
        ("redis://h:6379/0?prefix=a{b}", "braces"),
        ("redis://h:6379/0?ssl_ca_certs=/ca.pem", "rediss://"),
        ("redis://h:6379/0?colour=blue", "colour"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://h:6379/zero", "database number"),
        ("redis:///0", "no host"),
        ("unix://", "no socket"),
        ("redis+sentinel://s1:26379/", "no master"),
        ("redis://h/0?sentinel_password=x", "needs redis\\+sentinel"),
    ],
)
def test_bad_urls_name_the_problem(url: str, message: str) -> None:
    with pytest.raises(InvalidBackendURL, match=message):
        open_backend(url)


# Key layout and scripts, on the session redis-server.

LAYOUT = NativeLayout()


def _service(backend: RedisBackend, groups: GroupSettings) -> LockService:
    return LockService(Store(backend, LAYOUT), groups)


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def rbackend(redis_url: str) -> AsyncIterator[RedisBackend]:
    backend = open_backend(redis_url)
    assert isinstance(backend, RedisBackend)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def test_the_pool_has_no_cap_unless_the_url_sets_one(rbackend: RedisBackend) -> None:
    # redis-py 8 caps a pool at 100 when max_connections is None and fails the 101st
    # concurrent call with "Too many connections"; lockd's pool must take a burst.
    results = await asyncio.gather(*(rbackend.get(f"burst/{i}") for i in range(250)))
    assert results == [(None, None)] * 250


async def test_max_connections_caps_the_pool(redis_url: str) -> None:
    backend = open_backend(redis_url + ("&" if "?" in redis_url else "?") + "max_connections=5")
    await backend.open()
    try:
        with pytest.raises(BackendUnavailable):
            await asyncio.gather(*(backend.get(f"burst/{i}") for i in range(50)))
    finally:
        await backend.close()


async def test_keys_carry_the_group_as_hash_tag(
    rbackend: RedisBackend, raw: aioredis.Redis
) -> None:
    service = _service(rbackend, GroupSettings(default_slots=1))
    assert await service.pre_reboot("workers", "a") is Outcome.GRANTED
    keys = sorted(k.decode() for k in await raw.keys(f"{rbackend.prefix}*"))
    data = f"{rbackend.prefix}{{lockd/v1/groups/workers}}"
    # One hash per group, holding the value and its version: no counter key beside it;
    # beside all groups, the index of key names and the marker that it is complete.
    assert keys == [rbackend.index_key, rbackend.index_built_key, data]
    keys = [data]
    assert sorted(await raw.hkeys(data)) == [b"value", b"ver"]
    other = rbackend.redis_key(LAYOUT.key("db"))
    assert key_slot(other.encode()) != key_slot(keys[0].encode())


async def test_script_cache_flush_falls_back_to_eval(
    rbackend: RedisBackend, raw: aioredis.Redis
) -> None:
    key = LAYOUT.key("flushed")
    assert (await rbackend.compare_and_set(key, b"one", None)).stored
    await raw.script_flush()
    assert await raw.script_exists(CAS.sha) == [False]
    _, version = await rbackend.get(key)
    assert (await rbackend.compare_and_set(key, b"two", version)).stored
    assert (await rbackend.get(key))[0] == b"two"
    # The fallback cached the script again: later calls go by SHA.
    assert await raw.script_exists(CAS.sha) == [True]


async def test_a_recreated_key_never_repeats_a_version(
    rbackend: RedisBackend, raw: aioredis.Redis
) -> None:
    """A key Redis lost (a failover, a restore; here a DEL behind lockd's back) and that is
    created again, or the same bytes written again, never shows a version seen before."""
    key = LAYOUT.key("aba")
    seen = []
    for _ in range(3):
        assert (await rbackend.compare_and_set(key, b"x", None)).stored
        _, version = await rbackend.get(key)
        seen.append(version)
        assert await raw.delete(rbackend.redis_key(key)) == 1
    assert len(set(seen)) == 3
    assert (await rbackend.compare_and_set(key, b"y", None)).stored
    for _ in range(3):  # the same bytes again: a new version each time
        _, version = await rbackend.get(key)
        seen.append(version)
        assert (await rbackend.compare_and_set(key, b"y", version)).stored
    assert len(set(seen)) == 6
    for stale in seen:  # a writer that read before a loss cannot write after it
        assert (await rbackend.compare_and_set(key, b"stale", stale)).stored is False
    assert (await rbackend.get(key))[0] == b"y"


async def test_compare_and_set_answers_versions_and_lost_races_itself(
    rbackend: RedisBackend, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script returns the new version, or the state it lost to: no read after it."""
    key = LAYOUT.key("swap-native")
    read = rbackend.get
    reads = count_reads(rbackend, monkeypatch)
    ok, value, v1 = await rbackend.compare_and_set(key, b"one", None)
    assert ok and value == b"one" and v1 is not None
    ok, value, v2 = await rbackend.compare_and_set(key, b"two", v1)
    assert ok and value == b"two" and v2 not in (None, v1)
    assert await read(key) == (b"two", v2)
    ver = await raw.hget(rbackend.redis_key(key), "ver")
    assert v2 == ver.decode()
    # Lost races (a stale version; a create of a key that exists) report the current state.
    assert await rbackend.compare_and_set(key, b"three", v1) == (False, b"two", v2)
    assert await rbackend.compare_and_set(key, b"three", None) == (False, b"two", v2)
    absent = LAYOUT.key("swap-none")
    assert await rbackend.compare_and_set(absent, b"x", v2) == (False, None, None)
    assert reads == []


async def test_a_rolled_back_key_never_lets_a_stale_decision_lose_a_holder(
    redis_url: str, raw: aioredis.Redis
) -> None:
    """Redis loses writes (a failover, a restart with appendfsync everysec): here the key is
    put back to an earlier state with DUMP/RESTORE. Replica b then writes the group again
    from that state; replica a still remembers its own lost write. With counters b's write
    carried the very version a remembers, and a's release, decided on its memory, wiped
    b's holder. Versions are random tokens now: a's stale write fails and decides again."""
    a_backend, b_backend = open_backend(redis_url), open_backend(redis_url)
    await a_backend.open()
    await b_backend.open()
    try:
        a = _service(a_backend, GroupSettings(default_slots=3))  # type: ignore[arg-type]
        b = _service(b_backend, GroupSettings(default_slots=3))  # type: ignore[arg-type]
        key = a_backend.redis_key(LAYOUT.key("rollback"))  # type: ignore[attr-defined]
        assert await a.pre_reboot("rollback", "n1") is Outcome.GRANTED
        snapshot = await raw.dump(key)
        assert await a.pre_reboot("rollback", "n2") is Outcome.GRANTED  # a remembers this
        await raw.restore(key, 0, snapshot, replace=True)  # the store loses n2's grant
        assert await b.pre_reboot("rollback", "n3") is Outcome.GRANTED  # from {n1}
        assert await a.steady_state("rollback", "n1") is Outcome.RELEASED
        sem = await b.read("rollback")
        assert sem is not None and [h.id for h in sem.holders] == ["n3"], "n3's hold was lost"
    finally:
        await a_backend.close()
        await b_backend.close()


async def test_scan_ignores_foreign_keys(rbackend: RedisBackend, raw: aioredis.Redis) -> None:
    await raw.set(f"{rbackend.prefix}lockd/v1/groups/plain", b"not ours")
    await raw.set(f"{rbackend.prefix}{{lockd/v1/other/x}}", b"not a group")
    service = _service(rbackend, GroupSettings(default_slots=1))
    await service.pre_reboot("a.b-c", "n1")
    assert await service.list_groups() == ["a.b-c"]


async def test_scan_is_a_range_read_of_the_index(
    rbackend: RedisBackend, raw: aioredis.Redis
) -> None:
    """The scripts add a key's name to the index when they write it and remove it when
    they delete it; scan answers from the index alone, never from a SCAN of the keyspace."""
    names = ["lockd/v1/tenants/a.1", "lockd/v1/tenants/a.2", "lockd/v1/tenants/b.1",
             "lockd/v1/tenant-names/a.1"]
    for name in names:
        assert (await rbackend.compare_and_set(name, b"{}", None)).stored
    assert await raw.zrange(rbackend.index_key, 0, -1) == sorted(n.encode() for n in names)
    assert await rbackend.scan("lockd/v1/tenants/a.") == names[:2]
    assert await rbackend.scan("lockd/v1/tenants/") == names[:3]
    _, version = await rbackend.get(names[0])
    assert (await rbackend.compare_and_delete(names[0], version)).stored
    assert await rbackend.scan("lockd/v1/tenants/a.") == names[1:2]
    # A hash written behind lockd's back is not in the index, so scan does not see it.
    await raw.hset(rbackend.redis_key("lockd/v1/tenants/a.9"), mapping={"value": b"{}",
                                                                       "ver": b"x"})
    assert await rbackend.scan("lockd/v1/tenants/a.") == names[1:2]
    # A write by lockd adds a key that an older lockd created.
    assert (await rbackend.compare_and_set("lockd/v1/tenants/a.9", b"{}", "x")).stored
    assert await rbackend.scan("lockd/v1/tenants/a.") == [names[1], "lockd/v1/tenants/a.9"]


async def test_a_store_without_index_gets_one_built_once(
    redis_url: str, raw: aioredis.Redis
) -> None:
    """Keys written before lockd kept an index (hashes, no index, no marker) are all listed
    after the next open, which builds the index; later opens leave it as it is."""
    prefix = redis_url.partition("prefix=")[2]
    old = [f"lockd/v1/groups/g{i:04d}" for i in range(1200)]  # over one script's batch
    async with raw.pipeline(transaction=False) as pipe:
        for name in old:
            pipe.hset(f"{prefix}{{{name}}}", mapping={"value": b"{}", "ver": b"v1"})
        await pipe.execute()
    backend = open_backend(redis_url)
    assert isinstance(backend, RedisBackend)
    await backend.open()
    try:
        assert await raw.get(backend.index_built_key) == b"1"
        assert await raw.zcard(backend.index_key) == len(old)
        assert await backend.scan("lockd/v1/groups/") == old
        groups = await _service(backend, GroupSettings(default_slots=1)).list_groups()
        assert groups == [n.rpartition("/")[2] for n in old]
    finally:
        await backend.close()
    # Built once: a key added behind lockd's back now is not picked up by the next open.
    await raw.hset(f"{prefix}{{lockd/v1/groups/late}}", mapping={"value": b"{}", "ver": b"x"})
    again = open_backend(redis_url)
    await again.open()
    try:
        assert await again.scan("lockd/v1/groups/") == old
    finally:
        await again.close()
    # Deleting the marker has the next open build it again (docs/redis.md).
    await raw.delete(f"{prefix}index:built")
    third = open_backend(redis_url)
    await third.open()
    try:
        assert "lockd/v1/groups/late" in await third.scan("lockd/v1/groups/")
    finally:
        await third.close()


async def test_unix_socket(tmp_path: Path) -> None:
    binary = find_binary("redis-server", "redis-server")
    sock = tmp_path / "redis.sock"
    proc = Proc([binary, "--port", "0", "--unixsocket", str(sock), "--dir", str(tmp_path),
                 "--save", "", "--appendonly", "no"], tmp_path / "redis.log").start()
    store = open_store(f"unix://{sock}?db=1")
    backend = store.backend
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await backend.open()
        await backend.ping()
        service = LockService(store, GroupSettings(default_slots=1))
        assert await service.pre_reboot("g", "a") is Outcome.GRANTED
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        probe = aioredis.Redis(unix_socket_path=str(sock), db=1)
        assert await probe.exists("lockd:{lockd/v1/groups/g}") == 1
        await probe.aclose()
    finally:
        await backend.close()
        proc.stop()


async def test_unreachable_redis_is_unavailable_promptly() -> None:
    from bench.procs import free_port
    from lockd.backends.base import BackendUnavailable

    backend = open_backend(f"redis://127.0.0.1:{free_port()}/0?timeout=1")
    await backend.open()  # a down Redis is no error at start-up
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await backend.get(LAYOUT.key("g"))
        assert time.monotonic() - started < 5
    finally:
        await backend.close()


async def test_wait_replicas_refuses_answers_no_replica_confirmed(
    redis_url: str, raw: aioredis.Redis
) -> None:
    """The session server has no replica: with wait_replicas=1 nothing may be answered."""
    from lockd.backends.base import BackendUnavailable

    backend = open_backend(redis_url + "&wait_replicas=1&timeout=1")
    assert isinstance(backend, RedisBackend)
    await backend.open()
    try:
        key = LAYOUT.key("unconfirmed")
        with pytest.raises(BackendUnavailable, match="0 of 1 replicas"):
            await backend.compare_and_set(key, b"x", None)
        # The write itself happened (WAIT cannot undo it); the caller was told 503.
        assert await raw.hget(backend.redis_key(key), "value") == b"x"
        # A lost compare-and-set's report of the current state is no more confirmed than a
        # write.
        with pytest.raises(BackendUnavailable, match="0 of 1 replicas"):
            await backend.compare_and_set(key, b"y", None)
        with pytest.raises(BackendUnavailable, match="0 of 1 replicas"):
            await backend.get(key)
    finally:
        await backend.close()


# lockd processes over real HTTP.


async def test_three_replicas_storm_never_exceed_slots(
    tmp_path: Path, redis_url: str, replicas: list[Lockd]
) -> None:
    rng = random.Random(3)
    slots = {f"g{i:02d}": rng.randint(1, 3) for i in range(20)}
    for i in range(3):
        replicas.append(replica(tmp_path, redis_url, slots, f"lockd{i}").start())
    report = await storm([r.url for r in replicas], slots, clients=300, rounds=2,
                         hold=(0.0, 0.02), seed=7)
    assert report.grants == 600 and len(report.holds) == 600
    assert violations(report.holds, slots) == []
    assert report.statuses[423] > 0, "no contention: the storm did not test anything"
    assert report.statuses.get(500, 0) == 0
    # Every release was acknowledged, so the store holds nobody now.
    store = open_store(redis_url)
    service = LockService(store, GroupSettings(slots=slots))
    try:
        for group in slots:
            sem = await service.read(group)
            assert sem is not None and sem.holders == ()
    finally:
        await store.backend.close()


async def test_restart_with_aof_keeps_acknowledged_holders(
    tmp_path: Path, replicas: list[Lockd]
) -> None:
    server = RedisServer(tmp_path / "redis").start()  # appendonly yes, appendfsync always
    try:
        slots = {"held-a": 1, "held-b": 2, **{f"busy{i}": 2 for i in range(4)}}
        for i in range(2):
            replicas.append(replica(tmp_path, server.url, slots, f"lockd{i}").start())
        urls = [r.url for r in replicas]
        holders = {"held-a": ["a1"], "held-b": ["b1", "b2"]}
        async with aiohttp.ClientSession() as session:
            for group, ids in holders.items():
                for n, id_ in enumerate(ids):
                    status, _ = await post(session, urls[n % 2], "pre-reboot", group, id_)
                    assert status == 200

            # A storm on other groups runs across the crash and restart.
            busy = {g: n for g, n in slots.items() if g.startswith("busy")}
            traffic = asyncio.create_task(
                storm(urls, busy, clients=40, rounds=3, hold=(0.0, 0.05), seed=5)
            )
            await asyncio.sleep(0.3)
            assert server.proc is not None
            server.proc.kill()  # SIGKILL: only what the AOF has survives
            during = []
            for n, (group, id_) in enumerate([("held-a", "x"), ("held-b", "y"),
                                              ("held-a", "a1"), ("busy0", "z")]):
                during.append(await post(session, urls[n % 2], "pre-reboot", group, id_))
            await asyncio.sleep(0.5)
            server.start()  # same port, same data directory

            report = await asyncio.wait_for(traffic, 60)
            assert violations(report.holds, busy) == []
            assert report.statuses[503] > 0, "the storm never saw the outage"

            for status, body in during:
                assert (status, body["kind"]) == (503, "backend_unavailable")
            # lockd was not restarted; every acknowledged holder still holds.
            for n, url in enumerate(urls):
                for group, ids in holders.items():
                    for id_ in ids:
                        status, body = await post(session, url, "pre-reboot", group, id_)
                        assert (status, body) == (200, {"outcome": "already_held"})
                status, body = await post(session, url, "pre-reboot", "held-a", f"new{n}")
                assert (status, body["kind"]) == (423, "failed_lock_semaphore_full")
    finally:
        server.stop()


async def test_hung_redis_gives_503_then_recovers(
    tmp_path: Path, replicas: list[Lockd]
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        url = f"{server.url}?timeout=1"
        lockd = replica(tmp_path, url, {"g": 1}, "lockd")
        # The service's own deadline is larger, so the Redis timeout is what answers.
        lockd.args += ["--set", "storage.timeout_s=10"]
        replicas.append(lockd.start())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            assert (await post(session, lockd.url, "pre-reboot", "g", "holder"))[0] == 200
            async with session.get(lockd.url + "/readyz") as resp:
                assert resp.status == 200

            server.proc.signal(signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                started = time.monotonic()
                results = await asyncio.gather(
                    post(session, lockd.url, "pre-reboot", "g", "holder"),
                    post(session, lockd.url, "steady-state", "h", "someone"),
                    session.get(lockd.url + "/readyz"),
                    post(session, lockd.url, "pre-reboot", "g", "other"),
                )
                elapsed = time.monotonic() - started
                # What may answer 200 needs the store: 503.
                for status, body in results[:2]:
                    assert (status, body["kind"]) == (503, "backend_unavailable")
                # A refusal may come from the view until its feed notices the hang (a PING
                # unanswered for `timeout`), then needs the store too; never a 200.
                status, body = results[3]
                assert (status, body["kind"]) in (
                    (423, "failed_lock_semaphore_full"), (503, "backend_unavailable"))
                ready = results[2]
                assert ready.status == 503
                assert (await ready.json())["kind"] == "backend_unavailable"
                # Configured timeout 1 s (+1 s to connect): generous bound, far below 10 s.
                assert elapsed < 8
            finally:
                server.proc.signal(signal.SIGCONT)  # type: ignore[union-attr]

            # Service resumes without restarting lockd.
            deadline = time.monotonic() + 15
            while True:
                async with session.get(lockd.url + "/readyz") as resp:
                    if resp.status == 200:
                        break
                assert time.monotonic() < deadline, "lockd did not recover after SIGCONT"
                await asyncio.sleep(0.1)
            assert lockd.proc is not None and lockd.proc.proc is not None
            assert lockd.proc.proc.poll() is None
            status, body = await post(session, lockd.url, "pre-reboot", "g", "holder")
            assert (status, body) == (200, {"outcome": "already_held"})
            assert (await post(session, lockd.url, "steady-state", "g", "holder"))[0] == 200
            status, body = await post(session, lockd.url, "pre-reboot", "g", "after")
            assert (status, body) == (200, {"outcome": "granted"})
    finally:
        server.stop()


async def test_readyz_follows_redis(tmp_path: Path, replicas: list[Lockd]) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        lockd = replica(tmp_path, server.url, {"g": 1}, "lockd")
        replicas.append(lockd.start())
        async with aiohttp.ClientSession() as session:
            async with session.get(lockd.url + "/readyz") as resp:
                assert resp.status == 200
            server.stop()
            async with session.get(lockd.url + "/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["kind"] == "backend_unavailable"
            server.start()
            wait_for_port(server.port)
            deadline = time.monotonic() + 10
            while True:
                async with session.get(lockd.url + "/readyz") as resp:
                    if resp.status == 200:
                        break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    finally:
        server.stop()


# TLS and Sentinel, each on its own small set of processes.


async def test_rediss_with_mutual_tls(tmp_path: Path) -> None:
    from bench.procs import free_port
    from lockd.backends.base import BackendUnavailable

    binary = find_binary("redis-server", "redis-server")
    certificates(tmp_path)
    port = free_port()
    proc = Proc([binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                 "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
                 "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "yes",
                 "--dir", str(tmp_path), "--save", "", "--appendonly", "no"],
                tmp_path / "redis.log", cwd=tmp_path).start()
    base = f"rediss://127.0.0.1:{port}/0?timeout=2&ssl_ca_certs={tmp_path / 'ca.crt'}"
    good = open_backend(f"{base}&ssl_certfile={tmp_path / 'client.crt'}"
                        f"&ssl_keyfile={tmp_path / 'client.key'}")
    anonymous = open_backend(base)  # no client certificate: the server refuses it
    try:
        wait_for_port(port, proc=proc.proc)
        for b in (good, anonymous):
            await b.open()
        service = LockService(Store(good, NativeLayout()), GroupSettings(default_slots=1))
        assert await service.pre_reboot("tls", "a") is Outcome.GRANTED
        assert await service.pre_reboot("tls", "b") is Outcome.FULL
        with pytest.raises(BackendUnavailable):
            await anonymous.ping()
    finally:
        await good.close()
        await anonymous.close()
        proc.stop()


async def _role(client: aioredis.Redis) -> list:
    try:
        return await client.role()
    except aioredis.ConnectionError:  # the sentinel kills clients while it reconfigures
        return []


async def test_sentinel_follows_a_failover_and_waits_for_replicas(tmp_path: Path) -> None:
    """redis+sentinel:// finds the master; after a failover lockd writes to the new one.

    After a failover the old master still accepts writes until Sentinel demotes it (about
    10 s) and then drops them. With ``wait_replicas=1`` such a write is answered 503, not
    200, and lockd reconnects to the master Sentinel names. Without it, the release and
    the grant below would be acknowledged by the old master and lost.
    """
    from bench.procs import free_port
    from lockd.errors import LockdError

    binary = find_binary("redis-server", "redis-server")
    nodes = [RedisServer(tmp_path / f"node{i}").start() for i in range(3)]
    clients = {n.port: aioredis.Redis.from_url(n.url) for n in nodes}
    sentinel_port = free_port()
    conf = tmp_path / "sentinel" / "sentinel.conf"
    conf.parent.mkdir()
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {conf.parent}\n"
        f"sentinel monitor mymaster 127.0.0.1 {nodes[0].port} 1\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
        "sentinel failover-timeout mymaster 5000\n"
    )
    sentinel = Proc([binary, str(conf), "--sentinel"], conf.parent / "sentinel.log")
    store = open_store(
        f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster?timeout=1&wait_replicas=1"
    )
    backend = store.backend
    probe = aioredis.Redis(host="127.0.0.1", port=sentinel_port)
    key = "lockd:{lockd/v1/groups/s}"
    deadline = time.monotonic() + 20
    try:
        for node in nodes:  # redis waits 5 s by default to batch replicas that sync
            await clients[node.port].config_set("repl-diskless-sync-delay", 0)
        for replica in nodes[1:]:
            await clients[replica.port].replicaof("127.0.0.1", nodes[0].port)
            while (await _role(clients[replica.port]))[3:4] != [b"connected"]:
                assert time.monotonic() < deadline, "replica never connected"
                await asyncio.sleep(0.05)
        sentinel.start()
        wait_for_port(sentinel_port, proc=sentinel.proc)
        await backend.open()
        service = LockService(store, GroupSettings(default_slots=1))
        assert await service.pre_reboot("s", "before") is Outcome.GRANTED

        while True:  # the sentinel needs a moment to discover the replicas
            try:
                await probe.execute_command("SENTINEL", "FAILOVER", "mymaster")
                break
            except aioredis.ResponseError:
                assert time.monotonic() < deadline, "sentinel never accepted the failover"
                await asyncio.sleep(0.1)
        while True:
            # SENTINEL MASTER (what redis-py asks) names the new master once the failover
            # has ended; GET-MASTER-ADDR-BY-NAME would name it earlier.
            port = int((await probe.sentinel_master("mymaster"))["port"])
            new_master = clients[port]
            if port != nodes[0].port and (await _role(new_master))[:1] == [b"master"]:
                break
            assert time.monotonic() < deadline, "no replica was promoted"
            await asyncio.sleep(0.05)

        # The pooled connection still points at the old master: 503 until lockd is on
        # the new master and a replica confirms, then service, with no restart.
        async def served(call: Callable[[], Awaitable[Outcome]]) -> Outcome:
            while True:
                try:
                    return await call()
                except LockdError as exc:
                    assert exc.kind.value == "backend_unavailable"
                    assert time.monotonic() < deadline, "no service after the failover"
                    await asyncio.sleep(0.1)

        released = await served(lambda: service.steady_state("s", "before"))
        # A 503'd release can have reached the new master and a replica after all.
        assert released in (Outcome.RELEASED, Outcome.NOT_HELD)
        granted = await served(lambda: service.pre_reboot("s", "after"))
        assert granted in (Outcome.GRANTED, Outcome.ALREADY_HELD)
        stored = await new_master.hget(key, "value")
        assert stored is not None and b'"after"' in stored and b'"before"' not in stored
    finally:
        for client in clients.values():
            await client.aclose()
        await probe.aclose()
        await backend.close()
        sentinel.stop()
        for node in nodes:
            node.stop()
