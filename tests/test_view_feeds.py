"""Each change feed's reconnect path, with a real store killed and restarted under a
running lockd: refusals come from the view only while its feed is connected, the view is
emptied on reconnect (a change made while the feed was down is seen at once, long before
the max age), and nothing from the view is ever a 200."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from bench.procs import Lockd
from bench.servers import EtcdServer, RedisClusterServer, RedisServer
from lockd.backends import open_backend
from lockd.service import stop
from lockd.view import View, follow
from tests.history import storm, violations
from tests.replicas import post, replica

#: Far longer than the test waits for a fresh answer: a 200 within it comes from the
#: resync, not from an entry growing old.
MAX_AGE = 60.0
WAIT = 20.0


def view_metrics(lockd: Lockd) -> dict[str, float]:
    with urllib.request.urlopen(lockd.admin_url.rstrip("/") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("lockd_view_"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


async def until(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.05)


def with_view(tmp: Path, url: str, name: str, *extra: str) -> Lockd:
    lockd = replica(tmp, url, {"g": 1}, name)
    lockd.args = [a for a in lockd.args if a != "--no-admin"]  # /metrics on admin
    lockd.args += ["--set", f"storage.view_max_age_s={MAX_AGE}", *extra]
    return lockd


async def outage_and_back(tmp: Path, url: str, kill: Callable[[], None],
                          restart: Callable[[], None], replicas: list[Lockd]) -> None:
    here = with_view(tmp, url, "here").start()
    replicas.append(here)
    # Another replica, view off, writes what "here" must learn of.
    other = with_view(tmp, url, "other", "--set", "storage.view=false").start()
    replicas.append(other)
    async with aiohttp.ClientSession() as s:
        async def answer(lockd: Lockd, op: str, node: str) -> int:
            try:
                status, _ = await post(s, lockd.url, op, "g", node)
            except aiohttp.ClientError:
                return 0
            return status

        async def connected() -> bool:
            return view_metrics(here).get("lockd_view_feed_connected") == 1

        await until(connected, "the feed connected")
        assert await answer(here, "pre-reboot", "a") == 200
        for _ in range(5):
            assert await answer(here, "pre-reboot", "b") == 423
        hits = view_metrics(here)['lockd_view_lookups_total{result="hit"}']
        assert hits >= 4, "the refusals did not come from the view"
        assert view_metrics(other).get("lockd_view_feed_connected") is None

        kill()

        async def refused_by_store_outage() -> bool:
            return await answer(here, "pre-reboot", "b") == 503

        # With the feed down nothing is answered from the view: the store's 503 it is.
        await until(refused_by_store_outage, "a 503 while the store is down")
        assert view_metrics(here)["lockd_view_feed_connected"] == 0
        restart()

        async def released() -> bool:
            return await answer(other, "steady-state", "a") == 200

        await until(released, "a's release through the other replica")

        # b's slot is free now: "here" must grant it well before MAX_AGE, whatever its
        # view held before the outage.
        deadline = time.monotonic() + WAIT
        status = 0
        while time.monotonic() < deadline:
            status = await answer(here, "pre-reboot", "b")
            if status == 200:
                break
            assert status in (423, 503), status
            await asyncio.sleep(0.05)
        assert status == 200, "a stale refusal outlived the feed's resync"
        # And the view gives no 200: a, no longer holding, is refused (the store says
        # b holds), and b's re-lock is the store's 200.
        assert await answer(here, "pre-reboot", "a") == 423
        assert await answer(here, "pre-reboot", "b") == 200
        await until(connected, "the feed connected again")
        assert view_metrics(here)["lockd_view_resyncs_total"] >= 2


async def test_redis_feed_resyncs_after_a_restart(tmp_path: Path,
                                                  replicas: list[Lockd]) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        def kill() -> None:
            assert server.proc is not None
            server.proc.kill()

        await outage_and_back(tmp_path, server.url, kill, server.start, replicas)
    finally:
        server.stop()


async def test_redis_cluster_feed_resyncs_after_a_failover(tmp_path: Path,
                                                           replicas: list[Lockd]) -> None:
    """The master of group g killed, its replica promoted: the feed ends with the master,
    and follows the new topology once the promotion is done."""
    cluster = RedisClusterServer(tmp_path / "cluster", node_timeout_ms=1000).start()
    try:
        victim = cluster.master_of("lockd:{lockd/v1/groups/g}")

        def kill() -> None:
            assert victim.proc is not None
            victim.proc.kill()

        def promoted() -> None:
            cluster.wait_ok(30, linked=False)
            assert cluster.master_of("lockd:{lockd/v1/groups/g}") is not victim

        await outage_and_back(tmp_path, cluster.url + "?timeout=1", kill, promoted, replicas)
    finally:
        cluster.stop()


@pytest.mark.parametrize("scheme", ["etcd", "etcd2"])
async def test_etcd_feed_resyncs_after_a_restart(tmp_path: Path, scheme: str,
                                                 replicas: list[Lockd]) -> None:
    server = EtcdServer(tmp_path / "etcd").start()
    try:
        def kill() -> None:
            assert server.proc is not None
            server.proc.kill()
            server.proc = None

        url = f"{scheme}://{server.endpoint}"
        await outage_and_back(tmp_path, url, kill, server.start, replicas)
    finally:
        server.stop()


# The history-checked replica storm with the view on (the default), on every store with a
# feed, showing the view answered.

STORM_SLOTS = {"g0": 1, "g1": 2, "g2": 1}


@pytest.mark.parametrize("store", ["sqlite", "redis", "redis_cluster", "etcd_native", "etcd2"])
async def test_replicas_with_views_never_exceed_slots(
    tmp_path: Path, store: str, request: pytest.FixtureRequest, replicas: list[Lockd]
) -> None:
    url = f"sqlite://{tmp_path / 'shared.db'}" if store == "sqlite" else \
        request.getfixturevalue(f"{store}_url")
    for i in range(3):
        lockd = replica(tmp_path, url, STORM_SLOTS, f"lockd{i}")
        lockd.args = [a for a in lockd.args if a != "--no-admin"]
        replicas.append(lockd.start())
    report = await storm([r.url for r in replicas], STORM_SLOTS, clients=60, rounds=2,
                         hold=(0.0, 0.02), seed=11)
    assert report.grants == 120 and len(report.holds) == 120
    assert violations(report.holds, STORM_SLOTS) == []
    assert report.statuses.get(500, 0) == 0
    assert report.kinds["failed_lock_semaphore_full"] > 0
    hits = sum(view_metrics(r)['lockd_view_lookups_total{result="hit"}'] for r in replicas)
    assert hits > 0, "no refusal came from a view: the storm did not test it"


@pytest.mark.parametrize("store", ["redis", "redis_cluster"])
async def test_a_feed_stops_when_cancelled_at_any_moment(
    store: str, request: pytest.FixtureRequest
) -> None:
    """lockd stops its feed by cancelling it (on shutdown, right after start-up too). A
    cancel that arrives while redis-py connects can be swallowed by redis-py; the feed must
    end anyway, or shutdown hangs."""
    backend = open_backend(request.getfixturevalue(f"{store}_url"))
    await backend.open()
    try:
        for steps in range(40):  # cancel after 0, 1, 2 ... turns of the event loop
            view = View()
            task = asyncio.create_task(follow(backend, "lockd/v1/groups/", view))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()  # what stop() does, but waiting a bounded time
            done, _ = await asyncio.wait([task], timeout=10)
            if not done:
                await stop(task)  # a second cancel ends it; the test has failed already
                raise AssertionError(f"the feed ignored a cancel after {steps} turns")
            assert task.cancelled()
    finally:
        await backend.close()
