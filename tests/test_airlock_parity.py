"""airlock parity: lockd and airlock share one etcd keyspace without losing a lock.

``Airlock`` below does on the wire exactly what coreos/airlock's ``internal/lock`` does
(re-stated from its source, not imported): key ``com.coreos.airlock/groups/<QueryEscape(group)>
/v1/semaphore``; init with ``Txn(If(Version==0)).Then(Put({"total_slots":N,"holders":[]}))``;
read with a plain Get and decode like Go's ``encoding/json`` into
``struct{TotalSlots uint64; Holders []string}`` (unknown members ignored, then dropped on the
next write); holders looked up with ``sort.SearchStrings``; write with
``Txn(If(Version==seen)).Then(Put)``. A conflict is an error (airlock never retries).
airlock sends these over gRPC; here they go through etcd's JSON gateway
(``tests/etcd3raw.py``), which is the same Range and Txn on the same store.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote_plus

import pytest

from bench.servers import EtcdServer
from lockd.groups import GroupSettings
from lockd.semaphore import Outcome
from lockd.service import LockService
from lockd.store import Store, open_store
from tests.etcd3raw import RawEtcd, compare, put_op


class AirlockError(Exception):
    pass


@dataclass
class AirlockSemaphore:
    total_slots: int
    holders: list[str]


class Airlock:
    """airlock's lock manager for one group, on the wire."""

    def __init__(self, client: RawEtcd, group: str) -> None:
        self.client = client
        self.key = f"com.coreos.airlock/groups/{quote_plus(group)}/v1/semaphore".encode()

    async def ensure_init(self, slots: int) -> None:
        value = json.dumps({"total_slots": slots, "holders": []}, separators=(",", ":"))
        await self.client.txn(
            [compare(self.key, "VERSION", 0)], [put_op(self.key, value.encode())], []
        )

    async def get(self) -> tuple[AirlockSemaphore, int]:
        kv = await self.client.get(self.key)
        if kv is None or kv.version == 0 or not kv.value:
            raise AirlockError("no semaphore")
        doc = json.loads(kv.value)  # Go: a JSON syntax error fails the request
        slots = doc.get("total_slots", 0)
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 0:
            raise AirlockError(f"cannot unmarshal total_slots {slots!r} into uint64")
        holders = doc.get("holders")
        if holders is not None and not (
            isinstance(holders, list) and all(isinstance(h, str) for h in holders)
        ):
            raise AirlockError(f"cannot unmarshal holders {holders!r} into []string")
        return AirlockSemaphore(slots, list(holders or [])), kv.version

    async def _set(self, sem: AirlockSemaphore, version: int) -> None:
        # Go marshals only the struct's two fields: anything else in the value is dropped.
        value = json.dumps({"total_slots": sem.total_slots, "holders": sem.holders},
                           separators=(",", ":"))
        answer = await self.client.txn(
            [compare(self.key, "VERSION", version)], [put_op(self.key, value.encode())], []
        )
        if not answer.get("succeeded"):
            raise AirlockError("conflict on semaphore detected, aborting")

    async def recursive_lock(self, id_: str) -> None:
        sem, version = await self.get()
        loc = bisect.bisect_left(sem.holders, id_)  # sort.SearchStrings
        if loc < len(sem.holders) and sem.holders[loc] == id_:
            return
        if len(sem.holders) >= sem.total_slots:
            raise AirlockError(f"all {sem.total_slots} semaphore slots currently locked")
        sem.holders.insert(loc, id_)
        await self._set(sem, version)

    async def unlock_if_held(self, id_: str) -> None:
        sem, version = await self.get()
        loc = bisect.bisect_left(sem.holders, id_)
        if loc < len(sem.holders) and sem.holders[loc] == id_:
            del sem.holders[loc]
        await self._set(sem, version)  # airlock writes even when nothing changed


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[RawEtcd]:
    async with RawEtcd(etcd_server.endpoint) as client:
        yield client


@pytest.fixture
async def store(etcd_server: EtcdServer) -> AsyncIterator[Store]:
    # No namespace: these tests use airlock's real keys, kept apart by unique group names.
    s = open_store(f"etcd://{etcd_server.endpoint}?layout=airlock")
    await s.backend.open()
    try:
        yield s
    finally:
        await s.backend.close()


async def mod_revision(client: RawEtcd, key: bytes) -> int:
    kv = await client.get(key)
    assert kv is not None
    return kv.mod_revision


async def test_lockd_honours_and_updates_what_airlock_wrote(
    etcd: RawEtcd, store: Store, unique: str
) -> None:
    group = f"p-{unique}"
    airlock = Airlock(etcd, group)
    assert store.layout.key(group).encode() == airlock.key
    await airlock.ensure_init(2)
    await airlock.recursive_lock("node-b")
    await airlock.recursive_lock("node-a")
    service = LockService(store, GroupSettings(default_slots=2))

    before = await mod_revision(etcd, airlock.key)
    assert await service.pre_reboot(group, "node-c") is Outcome.FULL
    assert await service.pre_reboot(group, "node-a") is Outcome.ALREADY_HELD
    assert await mod_revision(etcd, airlock.key) == before, "a read wrote to airlock's key"
    sem = await service.read(group)
    assert sem is not None
    assert {(h.id, h.granted_at, h.grant_id) for h in sem.holders} == {
        ("node-a", 0.0, 0),
        ("node-b", 0.0, 0),
    }

    assert await service.steady_state(group, "node-a") is Outcome.RELEASED
    assert await service.pre_reboot(group, "node-c") is Outcome.GRANTED
    # airlock reads lockd's value back and agrees on who holds what.
    seen, _ = await airlock.get()
    assert (seen.total_slots, seen.holders) == (2, ["node-b", "node-c"])
    await airlock.recursive_lock("node-c")  # a holder: no second slot, no error
    with pytest.raises(AirlockError, match="slots currently locked"):
        await airlock.recursive_lock("node-d")

    # airlock releases and rewrites the key without lockd's extra member.
    await airlock.unlock_if_held("node-b")
    assert "lockd" not in json.loads((await etcd.get(airlock.key)).value)  # type: ignore[union-attr]
    assert await service.pre_reboot(group, "node-c") is Outcome.ALREADY_HELD
    assert await service.pre_reboot(group, "node-d") is Outcome.GRANTED
    assert await service.pre_reboot(group, "node-e") is Outcome.FULL
    seen, _ = await airlock.get()
    assert seen.holders == ["node-c", "node-d"]


async def test_lockd_value_is_airlock_format(
    etcd: RawEtcd, store: Store, unique: str
) -> None:
    group = f"f-{unique}"
    service = LockService(store, GroupSettings(default_slots=3))
    # Granted out of order: airlock's binary search needs the stored list sorted.
    for node in ("zz-node", "aa-node", "mm-node"):
        assert await service.pre_reboot(group, node) is Outcome.GRANTED
    key = f"com.coreos.airlock/groups/{group}/v1/semaphore".encode()
    kv = await etcd.get(key)
    assert kv is not None
    doc = json.loads(kv.value)
    assert doc["total_slots"] == 3 and type(doc["total_slots"]) is int
    assert doc["holders"] == ["aa-node", "mm-node", "zz-node"]
    assert set(doc) == {"total_slots", "holders", "lockd"}
    # lockd's own fields ride along for lockd, and airlock ignores them.
    assert set(doc["lockd"]["grants"]) == {"aa-node", "mm-node", "zz-node"}
    airlock = Airlock(etcd, group)
    for node in ("aa-node", "mm-node", "zz-node"):
        await airlock.recursive_lock(node)  # each is found: no error, no extra slot
    with pytest.raises(AirlockError):
        await airlock.recursive_lock("new-node")
    await airlock.unlock_if_held("mm-node")
    assert (await airlock.get())[0].holders == ["aa-node", "zz-node"]


async def test_configured_slots_apply_to_airlock_keys(
    etcd: RawEtcd, store: Store, unique: str
) -> None:
    """airlock#81: airlock froze slots at creation; lockd applies its configuration."""
    group = f"s-{unique}"
    airlock = Airlock(etcd, group)
    await etcd.put(airlock.key, b'{"total_slots":1,"holders":null}')  # null, as Go may write
    service = LockService(store, GroupSettings(default_slots=1, slots={group: 3}))
    for node in ("a", "b", "c"):
        assert await service.pre_reboot(group, node) is Outcome.GRANTED
    assert await service.pre_reboot(group, "d") is Outcome.FULL
    assert (await airlock.get())[0].total_slots == 3

    # A run-time set-slots lasts until airlock rewrites the key without lockd's fields;
    # then the configured slots apply again (documented in docs/migrating-from-airlock.md).
    await service.set_slots(group, 4)
    assert (await airlock.get())[0].total_slots == 4
    await airlock.unlock_if_held("a")
    sem = await service.read(group)
    assert sem is not None and sem.slots == 3 and [h.id for h in sem.holders] == ["b", "c"]


async def test_lockd_and_airlock_race_on_one_key(
    etcd: RawEtcd, store: Store, unique: str
) -> None:
    """Two kinds of writer, two kinds of compare (version vs mod_revision and value): never
    more holders than slots."""
    group = f"r-{unique}"
    airlock = Airlock(etcd, group)
    await airlock.ensure_init(2)
    service = LockService(store, GroupSettings(default_slots=2))

    async def by_airlock(node: str) -> bool:
        try:
            await airlock.recursive_lock(node)
        except AirlockError:
            return False
        return True

    async def by_lockd(node: str) -> bool:
        return await service.pre_reboot(group, node) is Outcome.GRANTED

    results = await asyncio.gather(
        *(by_airlock(f"air-{i}") for i in range(10)), *(by_lockd(f"ld-{i}") for i in range(10))
    )
    holders = (await airlock.get())[0].holders
    assert results.count(True) == 2 == len(holders)
    winners = {n for n, ok in zip([f"air-{i}" for i in range(10)] +
                                  [f"ld-{i}" for i in range(10)], results, strict=True) if ok}
    assert winners == set(holders)
