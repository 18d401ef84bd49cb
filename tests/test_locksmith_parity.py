"""locksmith parity, on the wire: locksmithd nodes and FleetLock nodes share ONE semaphore.

A locksmith node is played by tests/locksmith_client.py (locksmith's exact etcd v2 request
sequence); a FleetLock node is an HTTP client of a real ``lockd serve --backend etcd2://``
subprocess. Both work on locksmith's real key paths on a real etcd with v2 enabled; each test
uses its own group name so they stay apart.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.procs import Lockd
from bench.servers import EtcdServer
from lockd.groups import GroupSettings
from lockd.semaphore import Outcome
from lockd.service import LockService
from lockd.store import open_store
from tests.history import HEADERS, Hold, storm, violations
from tests.locksmith_client import LocksmithClient, LocksmithError


@pytest.fixture(scope="module")
def lockd_etcd2(
    tmp_path_factory: pytest.TempPathFactory, etcd_server: EtcdServer
) -> Iterator[Lockd]:
    """One lockd on locksmith's real keyspace (no root), shared by this module's tests."""
    proc = Lockd(
        tmp_path_factory.mktemp("lockd-parity"),
        "--backend",
        f"etcd2://{etcd_server.endpoint}",
        "--default-slots",
        "1",
        "--no-admin",
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s


@pytest.fixture
def group(unique: str) -> str:
    return f"parity-{unique}"


async def fleetlock(
    session: aiohttp.ClientSession, lockd: Lockd, op: str, group: str, id: str
) -> tuple[int, dict]:
    # Exactly what flatcar/fleetlock sends: compact body, no Content-Type.
    body = json.dumps({"client_params": {"id": id, "group": group}}, separators=(",", ":"))
    async with session.post(
        lockd.url.rstrip("/") + f"/v1/{op}", data=body.encode(), headers=HEADERS
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def pre_reboot_after_outside_write(
    session: aiohttp.ClientSession, lockd: Lockd, group: str, id: str
) -> int:
    """A pre-reboot after locksmith freed a slot. lockd may refuse from its view until the
    etcd watch tells it of locksmith's write, and for no longer than view_max_age_s (1 s):
    then it reads the store. So ask until the answer is not 423, for 1 s and a margin."""
    deadline = time.monotonic() + 1 + 4
    while (status := (await fleetlock(session, lockd, "pre-reboot", group, id))[0]) == 423 \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return status


def stored(raw: str) -> dict:
    return json.loads(raw)


async def test_fleetlock_and_locksmith_share_one_slot(
    session: aiohttp.ClientSession, lockd_etcd2: Lockd, etcd2_endpoint: str, group: str
) -> None:
    smith = LocksmithClient(session, etcd2_endpoint, group)

    # locksmith's very first write, byte for byte.
    await smith.init()
    raw, _ = await smith.raw()
    assert raw == '{"semaphore":1,"max":1,"holders":null}'

    await smith.lock("machine-a")
    status, body = await fleetlock(session, lockd_etcd2, "pre-reboot", group, "node-b")
    assert status == 423 and body["kind"] == "failed_lock_semaphore_full"

    await smith.unlock("machine-a")
    assert await pre_reboot_after_outside_write(session, lockd_etcd2, group, "node-b") == 200
    raw, index = await smith.raw()
    assert {k: stored(raw)[k] for k in ("semaphore", "max", "holders")} == {
        "semaphore": 0,
        "max": 1,
        "holders": ["node-b"],
    }

    # locksmith now sees the slot taken.
    with pytest.raises(LocksmithError, match="semaphore is at 0"):
        await smith.lock("machine-a")

    # FleetLock semantics for FleetLock nodes, without touching the store.
    status, _ = await fleetlock(session, lockd_etcd2, "pre-reboot", group, "node-b")
    assert status == 200, "a holder re-locking must get 200"
    status, _ = await fleetlock(session, lockd_etcd2, "steady-state", group, "node-c")
    assert status == 200, "an unlock by a non-holder must get 200"
    assert (await smith.raw())[1] == index, "a read that changes nothing wrote"

    status, _ = await fleetlock(session, lockd_etcd2, "steady-state", group, "node-b")
    assert status == 200
    sem = await smith.get()
    assert (sem.semaphore, sem.max, sem.holders) == (1, 1, [])
    await smith.lock("machine-a")
    assert await smith.status() == "Available: 0\nMax: 1\n\nMACHINE ID\nmachine-a\n"


async def test_default_group_is_locksmiths_default_semaphore(
    session: aiohttp.ClientSession, lockd_etcd2: Lockd, etcd2_endpoint: str
) -> None:
    smith = LocksmithClient(session, etcd2_endpoint, "")  # locksmith's default group
    # Only this test uses the default key of this test session's etcd: start it known.
    await smith.write_raw('{"semaphore":2,"max":2,"holders":null}')
    await smith.lock("machine-a")
    before = await smith.get()
    fleet_id = "node-f"
    status, _ = await fleetlock(session, lockd_etcd2, "pre-reboot", "default", fleet_id)
    assert status == 200
    after = await smith.get()
    assert fleet_id in (after.holders or [])
    assert after.semaphore == before.semaphore - 1 and after.max == before.max
    status, _ = await fleetlock(session, lockd_etcd2, "steady-state", "default", fleet_id)
    assert status == 200
    final = await smith.get()
    assert (final.semaphore, final.max, final.holders) == (1, 2, ["machine-a"])


async def test_locksmith_set_max_is_honoured_by_lockd(
    session: aiohttp.ClientSession, lockd_etcd2: Lockd, etcd2_endpoint: str, group: str
) -> None:
    smith = LocksmithClient(session, etcd2_endpoint, group)
    assert await smith.set_max(2) == 1  # locksmithctl set-max 2 prints Old-Max: 1
    for node in ("node-a", "node-b"):
        status, _ = await fleetlock(session, lockd_etcd2, "pre-reboot", group, node)
        assert status == 200
    status, _ = await fleetlock(session, lockd_etcd2, "pre-reboot", group, "node-c")
    assert status == 423
    assert await smith.status() == "Available: 0\nMax: 2\n\nMACHINE ID\nnode-a\nnode-b\n"

    # set-max below the holders: the counter goes negative, exactly as locksmith keeps it.
    await smith.set_max(1)
    sem = await smith.get()
    assert (sem.semaphore, sem.max) == (-1, 1)
    status, _ = await fleetlock(session, lockd_etcd2, "steady-state", group, "node-a")
    assert status == 200
    status, _ = await fleetlock(session, lockd_etcd2, "pre-reboot", group, "node-c")
    assert status == 423, "one holder left and max 1: still full"
    sem = await smith.get()
    assert (sem.semaphore, sem.max, sem.holders) == (0, 1, ["node-b"])


async def test_lockd_set_slots_is_seen_by_locksmith(
    session: aiohttp.ClientSession, etcd2_endpoint: str, group: str
) -> None:
    smith = LocksmithClient(session, etcd2_endpoint, group)
    await smith.lock("machine-a")
    store = open_store(f"etcd2://{etcd2_endpoint}")
    backend = store.backend
    await backend.open()
    try:
        # Configured slots do not override the store: locksmith's max stays authoritative.
        service = LockService(store, GroupSettings(default_slots=5))
        sem = await service.read(group)
        assert sem is not None and sem.slots == 1 and sem.available == 0
        await service.set_slots(group, 3)
        assert await smith.status() == "Available: 2\nMax: 3\n\nMACHINE ID\nmachine-a\n"
        await smith.lock("machine-b")
        assert await service.pre_reboot(group, "node-c") is Outcome.GRANTED
        assert await service.pre_reboot(group, "node-d") is Outcome.FULL
        # Both views agree on what `locksmithctl status` shows.
        sem = await service.read(group)
        smith_sem = await smith.get()
        assert sem is not None
        assert (sem.free_counter, sem.slots, sorted(h.id for h in sem.holders)) == (
            smith_sem.semaphore,
            smith_sem.max,
            smith_sem.holders,
        )
        assert smith_sem.holders == ["machine-a", "machine-b", "node-c"]
    finally:
        await backend.close()


async def test_tolerates_what_locksmith_writes_in_the_wild(
    session: aiohttp.ClientSession, lockd_etcd2: Lockd, etcd2_endpoint: str, group: str
) -> None:
    smith = LocksmithClient(session, etcd2_endpoint, group)

    # A counter that disagrees with max - holders: lockd is never laxer than locksmith.
    await smith.write_raw('{"semaphore":0,"max":3,"holders":["machine-a"]}')
    status, _ = await fleetlock(session, lockd_etcd2, "pre-reboot", group, "node-b")
    assert status == 423
    # A release by a FleetLock node moves the counter the way locksmith would.
    await smith.write_raw('{"semaphore":0,"max":3,"holders":["machine-a","node-b"]}')
    status, _ = await fleetlock(session, lockd_etcd2, "steady-state", group, "node-b")
    assert status == 200
    sem = await smith.get()
    assert (sem.semaphore, sem.max, sem.holders) == (1, 3, ["machine-a"])

    # A negative counter, then holders: null (as a fresh locksmith key has).
    await smith.write_raw('{"semaphore":-2,"max":1,"holders":null}')
    status, _ = await fleetlock(session, lockd_etcd2, "pre-reboot", group, "node-b")
    assert status == 423
    await smith.set_max(4)  # -2 + 3 = 1 free
    assert await pre_reboot_after_outside_write(session, lockd_etcd2, group, "node-b") == 200
    raw, _ = await smith.raw()
    assert {k: stored(raw)[k] for k in ("semaphore", "max", "holders")} == {
        "semaphore": 0,
        "max": 4,
        "holders": ["node-b"],
    }


async def test_lockd_holder_survives_a_locksmith_write(
    session: aiohttp.ClientSession, lockd_etcd2: Lockd, etcd2_endpoint: str, group: str
) -> None:
    """locksmith drops lockd's extra field; the holder itself must never be lost."""
    smith = LocksmithClient(session, etcd2_endpoint, group)
    await smith.set_max(2)
    status, _ = await fleetlock(session, lockd_etcd2, "pre-reboot", group, "node-b")
    assert status == 200
    raw, _ = await smith.raw()
    assert "lockd" in stored(raw), "lockd keeps its grant time beside locksmith's fields"
    await smith.lock("machine-a")
    raw, _ = await smith.raw()
    assert "lockd" not in stored(raw)
    status, _ = await fleetlock(session, lockd_etcd2, "pre-reboot", group, "node-b")
    assert status == 200  # still the holder: re-lock
    status, _ = await fleetlock(session, lockd_etcd2, "pre-reboot", group, "node-c")
    assert status == 423
    status, _ = await fleetlock(session, lockd_etcd2, "steady-state", group, "node-b")
    assert status == 200
    sem = await smith.get()
    assert (sem.semaphore, sem.max, sem.holders) == (1, 2, ["machine-a"])


async def test_mixed_fleet_storm_keeps_the_invariant(
    tmp_path: Path, session: aiohttp.ClientSession, etcd2_endpoint: str, unique: str
) -> None:
    """FleetLock nodes over two lockd replicas and locksmith nodes, one semaphore each group.

    Every hold (FleetLock and locksmith alike) goes into one history; no instant may show
    more holders than the group's max.
    """
    slots = {f"mix1-{unique}": 1, f"mix2-{unique}": 2}
    backend = f"etcd2://{etcd2_endpoint}"
    group_args = [a for g, n in slots.items() for a in ("--group", f"{g}={n}")]
    replicas = [
        Lockd(tmp_path, "--backend", backend, "--no-admin", *group_args, name=f"lockd{i}")
        for i in range(2)
    ]
    for r in replicas:
        r.start()
    try:
        for g, n in slots.items():  # locksmith creates its groups the locksmith way
            smith = LocksmithClient(session, etcd2_endpoint, g)
            if n != 1:
                await smith.set_max(n)
            else:
                await smith.init()

        smith_holds: list[Hold] = []

        async def locksmith_node(n: int) -> None:
            rng = random.Random(n)
            for r in range(3):
                g = rng.choice(sorted(slots))
                client, me = LocksmithClient(session, etcd2_endpoint, g), f"smith-{n}"
                while True:
                    try:
                        await client.lock(me)
                        break
                    except LocksmithError:
                        await asyncio.sleep(rng.uniform(0.005, 0.03))
                start = time.monotonic()
                await asyncio.sleep(rng.uniform(0, 0.01))
                end = time.monotonic()
                while True:
                    try:
                        await client.unlock(me)
                        break
                    except LocksmithError:
                        await asyncio.sleep(rng.uniform(0.005, 0.03))
                smith_holds.append(Hold(g, f"{me}#{r}", start, end))

        report, *_ = await asyncio.gather(
            storm([r.url for r in replicas], slots, clients=10, rounds=3, seed=7),
            *(locksmith_node(n) for n in range(4)),
        )
        holds = report.holds + smith_holds
        assert len(report.holds) == 30 and len(smith_holds) == 12
        assert violations(holds, slots) == []
        assert report.statuses.get(500, 0) == 0
        for g, n in slots.items():
            sem = await LocksmithClient(session, etcd2_endpoint, g).get()
            assert (sem.semaphore, sem.max, sem.holders) == (n, n, [])
    finally:
        for r in replicas:
            r.stop()


async def test_lockd_status_prints_what_locksmithctl_prints(
    session: aiohttp.ClientSession,
    etcd2_endpoint: str,
    group: str,
    tmp_path: Path,
) -> None:
    """`lockd status` shows locksmith's own counter, negative after a set-max below the
    holders, exactly as `locksmithctl status` does."""
    smith = LocksmithClient(session, etcd2_endpoint, group)
    await smith.lock("machine-a")
    await smith.set_max(2)
    await LocksmithClient(session, etcd2_endpoint, group).lock("machine-b")
    await smith.set_max(1)  # 2 holders, 1 slot: locksmith's counter goes to -1
    server = Lockd(tmp_path, "--backend", f"etcd2://{etcd2_endpoint}").start()

    async def lockd_says(*command: str) -> str:
        argv = [sys.executable, "-m", "lockd", *command, "--server", server.admin_url]
        done = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout

    try:
        out = await lockd_says("status", group)
        listing = await lockd_says("groups")
    finally:
        server.stop()
    ours, theirs = out.splitlines()[:2], (await smith.status()).splitlines()[:2]
    assert ours == theirs == ["Available: -1", "Max: 1"]
    # lockd groups prints the same Available as lockd status and locksmithctl.
    row = next(line.split() for line in listing.splitlines() if line.split()[0] == group)
    assert row[3] == "-1"
