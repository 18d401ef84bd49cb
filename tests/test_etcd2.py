"""etcd2:// (v2 keys API) and locksmith's layout: codec, URL, wire details, failover, replicas.

The backend contract itself runs in tests/test_backend_contract.py (etcd2 is in BACKENDS);
locksmith interplay is in tests/test_locksmith_parity.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bench.procs import Lockd, free_port
from bench.servers import EtcdCluster, EtcdServer
from lockd import semaphore
from lockd.backends import BackendUnavailable, InvalidBackendURL, ValueTooLarge, open_backend
from lockd.backends.etcd2 import Etcd2Backend
from lockd.config import Settings
from lockd.errors import Kind, LockdError
from lockd.frontend import create_app
from lockd.groups import GroupSettings
from lockd.layouts.base import LayoutError
from lockd.layouts.locksmith import LocksmithLayout
from lockd.semaphore import Holder, Outcome, Semaphore
from lockd.service import LockService
from lockd.store import Store, open_store
from tests.history import HEADERS, storm, violations
from tests.locksmith_client import LocksmithClient
from tests.probes import count_reads

LAYOUT = LocksmithLayout()


def _service(backend: Etcd2Backend, groups: GroupSettings, timeout: float = 10.0) -> LockService:
    return LockService(Store(backend, LAYOUT), groups, timeout=timeout)


# The layout: pure codec


def test_keys_are_locksmiths() -> None:
    assert LAYOUT.key("default") == "coreos.com/updateengine/rebootlock/semaphore"
    assert LAYOUT.key("workers") == "coreos.com/updateengine/rebootlock/groups/workers/semaphore"
    # QueryEscape of a locksmith group that FleetLock could never name.
    assert LAYOUT.key("a b%c") == "coreos.com/updateengine/rebootlock/groups/a+b%25c/semaphore"
    assert LAYOUT.group_of(LAYOUT.key("default")) == "default"
    assert LAYOUT.group_of("/" + LAYOUT.key("db.eu-1")) == "db.eu-1"
    assert LAYOUT.group_of(LAYOUT.key("a b%c")) == "a b%c"
    # locksmith's group literally named "default" is not FleetLock's "default".
    assert LAYOUT.group_of("coreos.com/updateengine/rebootlock/groups/default/semaphore") is None
    assert LAYOUT.group_of("coreos.com/updateengine/rebootlock/groups/x/y/semaphore") is None
    assert LAYOUT.group_of("coreos.com/updateengine/other") is None


def test_decode_locksmiths_first_write() -> None:
    sem = LAYOUT.decode(b'{"semaphore":1,"max":1,"holders":null}')
    assert (sem.slots, sem.free_counter, sem.holders, sem.available) == (1, 1, (), 1)


def test_decode_tolerates_the_wild() -> None:
    # A counter below max - holders wins: lockd never grants what locksmith would refuse.
    sem = LAYOUT.decode(b'{"semaphore":0,"max":3,"holders":["a"]}')
    assert sem.available == 0
    # A negative counter.
    sem = LAYOUT.decode(b'{"semaphore":-2,"max":1,"holders":[]}')
    assert sem.free_counter == -2 and sem.available == 0
    # Missing fields are zero, as Go decodes them; a duplicated id holds one slot.
    sem = LAYOUT.decode(b'{"holders":["b","b","a"]}')
    assert (sem.slots, sem.free_counter, [h.id for h in sem.holders]) == (0, 0, ["b", "a"])
    for bad in (
        b"[]",
        b"nope",
        b'{"semaphore":"1"}',
        b'{"max":1.5}',
        b'{"holders":[1]}',
        b'{"holders":"a"}',
        b'{"semaphore":true}',
    ):
        with pytest.raises(LayoutError):
            LAYOUT.decode(bad)


def test_counter_arithmetic_is_locksmiths() -> None:
    sem = LAYOUT.decode(b'{"semaphore":1,"max":1,"holders":null}')
    sem, _ = semaphore.set_slots(sem, 3)
    assert (sem.free_counter, sem.slots) == (3, 3)
    sem, out = semaphore.lock(sem, "b", now=100.0)
    assert out is Outcome.GRANTED and sem.free_counter == 2
    sem, out = semaphore.lock(sem, "a", now=101.0)
    assert out is Outcome.GRANTED and sem.free_counter == 1
    # locksmithctl set-max moves the counter by new - old, even below zero free.
    for new, counter in ((1, -1), (2, 0), (4, 2)):
        sem, _ = semaphore.set_slots(sem, new)
        assert sem.free_counter == counter
    sem, out = semaphore.unlock(sem, "zz")
    assert out is Outcome.NOT_HELD and sem.free_counter == 2
    sem, _ = semaphore.unlock(sem, "b")
    doc = json.loads(LAYOUT.encode(sem, b'{"semaphore":1,"max":1,"holders":null}'))
    assert {k: doc[k] for k in ("semaphore", "max", "holders")} == {
        "semaphore": 3,
        "max": 4,
        "holders": ["a"],
    }


def test_encode_round_trips_and_keeps_foreign_fields() -> None:
    sem = Semaphore(
        slots=2,
        holders=(Holder("b", 10.5, 3), Holder("a", 0.0, 0)),
        next_grant_id=4,
        free_counter=0,
        paused=True,
    )
    raw = LAYOUT.encode(sem, b'{"semaphore":9,"max":9,"holders":null,"note":"ops"}')
    doc = json.loads(raw)
    assert list(doc)[:3] == ["semaphore", "max", "holders"]
    assert doc["holders"] == ["a", "b"], "locksmith binary-searches a sorted list"
    assert doc["note"] == "ops"
    again = LAYOUT.decode(raw)
    assert again.paused and again.next_grant_id == 4
    assert {h.id: (h.granted_at, h.grant_id) for h in again.holders} == {
        "a": (0.0, 0),
        "b": (10.5, 3),
    }
    # What a locksmith write leaves (its three fields only) still decodes, details unknown.
    dropped = LAYOUT.decode(b'{"semaphore":0,"max":2,"holders":["a","b"]}')
    assert not dropped.paused
    assert all((h.granted_at, h.grant_id) == (0.0, 0) for h in dropped.holders)


def test_new_group_written_by_lockd_starts_locksmiths_counter() -> None:
    sem, _ = semaphore.lock(Semaphore.new(3), "n1", now=5.0)
    doc = json.loads(LAYOUT.encode(sem, None))
    assert (doc["semaphore"], doc["max"], doc["holders"]) == (2, 3, ["n1"])
    empty = json.loads(LAYOUT.encode(Semaphore.new(1), None))
    assert empty["holders"] is None


# The URL


def test_from_url() -> None:
    b = open_backend("etcd2://10.0.0.1:2379,10.0.0.2:2379?root=/x/y&timeout_s=1.5")
    assert isinstance(b, Etcd2Backend)
    assert b.endpoints == ["10.0.0.1:2379", "10.0.0.2:2379"]
    assert (b.root, b.timeout) == ("/x/y", 1.5)
    assert open_backend("etcd2://h:2379").root == ""  # type: ignore[attr-defined]
    # The layout is the store's, not the backend's: etcd2:// holds locksmith's only.
    store = open_store("etcd2://10.0.0.1:2379?root=/x/y&layout=locksmith")
    assert isinstance(store.backend, Etcd2Backend) and store.backend.root == "/x/y"
    assert store.layout.name == "locksmith"
    assert open_store("etcd2://h:2379").layout.name == "locksmith"
    with pytest.raises(InvalidBackendURL, match="layout='native'"):
        open_store("etcd2://h:2379?layout=native")
    for bad in (
        "etcd2://",
        "etcd2://h",
        "etcd2://h:2379/path",
        "etcd2://h:2379?timeout_s=0",
        "etcd2://h:2379?layout=locksmith",  # open_backend knows no layouts
        "etcd2://h:2379?bogus=1",
        "etcd2://u:p@h:2379",
    ):
        with pytest.raises(InvalidBackendURL):
            open_backend(bad)


# On a real etcd


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_root_and_escaping_on_the_wire(
    etcd2_endpoint: str, unique: str, session: aiohttp.ClientSession
) -> None:
    """lockd and locksmith address the same v2 key, escaped twice; root only prefixes it."""
    backend = Etcd2Backend([etcd2_endpoint])
    rooted = Etcd2Backend([etcd2_endpoint], root=f"/r-{unique}")
    group = f"odd {unique}%+/"  # only a locksmith node could use such a group
    try:
        key = LAYOUT.key(group)
        doc = b'{"semaphore":1,"max":1,"holders":null}'
        assert (await backend.compare_and_set(key, doc, None)).stored
        sem = await LocksmithClient(session, etcd2_endpoint, group).get()
        assert (sem.semaphore, sem.max, sem.holders) == (1, 1, None)
        assert group in await _service(backend, GroupSettings()).list_groups()
        # The rooted handle sees nothing of it, and writes under its root.
        assert await rooted.get(key) == (None, None)
        assert (await rooted.compare_and_set(key, b"{}", None)).stored
        async with session.get(
            f"http://{etcd2_endpoint}/v2/keys/r-{unique}", params={"recursive": "true"}
        ) as resp:
            listing = json.dumps(await resp.json())
        assert f"/r-{unique}/coreos.com/updateengine/rebootlock/groups/" in listing
    finally:
        await backend.close()
        await rooted.close()


async def test_compare_and_set_answers_modified_index_and_the_state_it_lost_to(
    etcd2_url: str, etcd2_endpoint: str, session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write answers its own modifiedIndex (no read); a lost one answers the current state.

    A version is ``(modifiedIndex, value)``."""
    backend = open_backend(etcd2_url)
    assert isinstance(backend, Etcd2Backend)
    read = backend.get
    reads = count_reads(backend, monkeypatch)
    try:
        key = LAYOUT.key("swap-native")
        ok, value, v1 = await backend.compare_and_set(key, b"one", None)
        assert ok and value == b"one"
        assert isinstance(v1, tuple) and isinstance(v1[0], int) and v1[1] == "one"
        ok, value, v2 = await backend.compare_and_set(key, b"two", v1)
        assert ok and value == b"two"
        assert isinstance(v2, tuple) and isinstance(v2[0], int) and v2[0] > v1[0]
        assert v2[1] == "two"
        assert reads == []  # the native path: the PUT's answer gave the version
        assert await read(key) == (b"two", v2)
        # Another writer (a locksmith node, say) moves the key on.
        async with session.put(
            f"http://{etcd2_endpoint}{backend._path(key)}", data={"value": "foreign"}
        ) as resp:
            v3 = ((await resp.json())["node"]["modifiedIndex"], "foreign")
        assert await backend.compare_and_set(key, b"three", v2) == (False, b"foreign", v3)
        assert await backend.compare_and_set(key, b"three", None) == (False, b"foreign", v3)
        # A compare-and-set on an absent key is told so by the PUT itself (errorCode 100),
        # unread.
        reads.clear()
        absent = LAYOUT.key("swap-absent")
        assert await backend.compare_and_set(absent, b"x", v3) == (False, None, None)
        assert reads == []
    finally:
        await backend.close()


async def test_failover_to_a_live_endpoint(etcd2_endpoint: str, unique: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    backend = Etcd2Backend([dead, etcd2_endpoint], root=f"/f-{unique}", timeout=2)
    try:
        service = _service(backend, GroupSettings(default_slots=1))
        assert await service.pre_reboot("g", "a") is Outcome.GRANTED
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        await backend.ping()
    finally:
        await backend.close()


@pytest.fixture
async def black_hole() -> AsyncIterator[str]:
    """A TCP endpoint that accepts and never answers: a hung etcd member."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for w in held:
            w.close()
        server.close()


async def test_a_group_too_large_for_a_request_is_value_too_large(
    etcd2_endpoint: str, unique: str
) -> None:
    """The expected value travels in the URL; past etcd's 1 MiB of request header (HTTP
    431) lockd says "too large", not "etcd v2 unreachable", and the key keeps its value."""
    dead = f"127.0.0.1:{free_port()}"
    backend = Etcd2Backend([etcd2_endpoint, dead], root=f"/big-{unique}")
    try:
        key = LAYOUT.key("crowded")
        big = json.dumps({"semaphore": 0, "max": 1, "holders": ["x" * 1_100_000]}).encode()
        created = await backend.compare_and_set(key, big, None)  # the body may be large
        assert created.stored
        with pytest.raises(ValueTooLarge, match="HTTP 431"):
            await backend.compare_and_set(key, b'{"semaphore":1,"max":1,"holders":null}',
                                          created.version)
        assert await backend.get(key) == (big, created.version)
    finally:
        await backend.close()


async def test_a_hung_member_times_out_then_fails_over(
    black_hole: str, etcd2_endpoint: str, unique: str
) -> None:
    both = Etcd2Backend([black_hole, etcd2_endpoint], root=f"/t-{unique}", timeout=0.3)
    alone = Etcd2Backend([black_hole], timeout=0.3)
    try:
        assert (await both.compare_and_set("k", b"v", None)).stored
        assert (await both.get("k"))[0] == b"v"
        with pytest.raises(BackendUnavailable, match="etcd v2 unreachable"):
            await alone.get("k")
        service = _service(alone, GroupSettings())
        with pytest.raises(LockdError) as err:
            await service.pre_reboot("g", "a")
        assert err.value.kind is Kind.backend_unavailable
    finally:
        await both.close()
        await alone.close()


async def test_readyz_and_503_follow_etcd(aiohttp_client, etcd2_endpoint: str) -> None:  # type: ignore[no-untyped-def]
    for endpoints, ready in (([f"127.0.0.1:{free_port()}"], False), ([etcd2_endpoint], True)):
        backend = Etcd2Backend(endpoints, root="/readyz", timeout=1)
        try:
            app = create_app(Settings(), _service(backend, GroupSettings(), timeout=3))
            client = await aiohttp_client(app)
            resp = await client.get("/readyz")
            assert resp.status == (200 if ready else 503)
            if not ready:
                assert (await resp.json())["kind"] == "backend_unavailable"
                resp = await client.post(
                    "/v1/pre-reboot",
                    headers=HEADERS,
                    data=b'{"client_params":{"id":"a","group":"g"}}',
                )
                assert resp.status == 503
                assert (await resp.json())["kind"] == "backend_unavailable"
        finally:
            await backend.close()


async def test_three_replicas_keep_the_invariant(
    tmp_path: Path, etcd_server: EtcdServer, unique: str
) -> None:
    """Three lockd processes on one etcd v2 keyspace, checked from the clients' history."""
    slots = {"one": 1, "two": 2}
    url = f"etcd2://{etcd_server.endpoint}?root=/storm-{unique}"
    groups = [a for g, n in slots.items() for a in ("--group", f"{g}={n}")]
    replicas = [
        Lockd(tmp_path, "--backend", url, "--no-admin", *groups, name=f"lockd{i}") for i in range(3)
    ]
    try:
        for r in replicas:
            r.start()
        report = await storm([r.url for r in replicas], slots, clients=16, rounds=5, seed=3)
        assert report.grants == 80 and len(report.holds) == 80
        assert violations(report.holds, slots) == []
        assert report.statuses.get(500, 0) == 0 and report.statuses.get(0, 0) == 0
        assert report.statuses[423] > 0, "the storm never contended; it proves nothing"
        backend = Etcd2Backend([etcd_server.endpoint], root=f"/storm-{unique}")
        try:
            for g, n in slots.items():
                raw, _ = await backend.get(LAYOUT.key(g))
                assert raw is not None
                doc = json.loads(raw)
                assert (doc["semaphore"], doc["max"], doc["holders"]) == (n, n, [])
        finally:
            await backend.close()
    finally:
        for r in replicas:
            r.stop()


async def _settle(call, deadline: float = 15.0):  # type: ignore[no-untyped-def]
    """Retry ``call`` through a leader election: 503s are allowed, wrong answers are not."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        try:
            return await call()
        except LockdError as exc:
            assert exc.kind in (Kind.backend_unavailable, Kind.backend_contention)
            if loop.time() > end:
                raise
            await asyncio.sleep(0.2)


async def test_three_member_cluster_loses_and_regains_quorum(tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path / "cluster").start()
    backend = Etcd2Backend([m.endpoint for m in cluster.members], timeout=1)
    service = _service(backend, GroupSettings(default_slots=2), timeout=4)
    try:
        assert await _settle(lambda: service.pre_reboot("g", "a")) is Outcome.GRANTED
        assert await service.pre_reboot("g", "b") is Outcome.GRANTED

        # One member down (the first endpoint): the service goes on.
        cluster.members[0].stop()
        assert await _settle(lambda: service.pre_reboot("g", "c")) is Outcome.FULL
        assert await _settle(lambda: service.steady_state("g", "a")) is Outcome.RELEASED
        assert await _settle(lambda: service.pre_reboot("g", "c")) is Outcome.GRANTED

        # Two down: no quorum. Every answer is 503; no grant, no release slips through.
        cluster.members[1].stop()
        for call in (
            lambda: service.pre_reboot("g", "d"),
            lambda: service.steady_state("g", "b"),
            service.ready,
        ):
            with pytest.raises(LockdError) as err:
                await call()
            assert err.value.kind is Kind.backend_unavailable

        # Both back: the same backend object recovers. A 503 is "not decided yet": a
        # write that reached the surviving member's log may commit once quorum returns.
        # So b and d do what zincati does, ask again until they get 200.
        cluster.members[0].start(wait=False)
        cluster.members[1].start(wait=False)
        released = await _settle(lambda: service.steady_state("g", "b"))
        assert released in (Outcome.RELEASED, Outcome.NOT_HELD)
        granted = await _settle(lambda: service.pre_reboot("g", "d"))
        assert granted in (Outcome.GRANTED, Outcome.ALREADY_HELD)
        sem = await service.read("g")
        assert sem is not None and sorted(h.id for h in sem.holders) == ["c", "d"]
        assert sem.free_counter == 0  # locksmith's counter is exact after all of it
    finally:
        await backend.close()
        cluster.stop()
