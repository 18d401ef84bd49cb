"""Several lockd replicas on etcd v3, history-checked (tests/history.py), through etcd failures.

Safety comes only from etcd's linearizable compare-and-set on ``mod_revision``: three lockd
processes share each semaphore, and the recorded history must never show more holders than
slots, whatever etcd members are doing.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest

from bench.procs import Lockd
from bench.servers import EtcdCluster, EtcdServer
from tests.history import HEADERS, storm, violations

SLOTS = {"one": 1, "two": 2, "three": 3}


async def start_replicas(tmp: Path, urls: Sequence[str], *extra: str) -> list[Lockd]:
    groups = [f"--group={g}={n}" for g, n in SLOTS.items()]
    replicas = [
        Lockd(tmp, "--backend", url, *groups, "--no-admin", *extra, name=f"lockd{i}")
        for i, url in enumerate(urls)
    ]
    # Start them side by side: each is a Python start-up of about a second.
    started = await asyncio.gather(
        *(asyncio.to_thread(r.start) for r in replicas), return_exceptions=True
    )
    failed = [s for s in started if isinstance(s, BaseException)]
    if failed:
        for r in replicas:
            r.stop()
        raise failed[0]
    return replicas


@pytest.mark.parametrize("layout", ["native", "airlock"])
async def test_three_replicas_share_one_etcd(
    tmp_path: Path, etcd_server: EtcdServer, unique: str, layout: str
) -> None:
    url = f"etcd://{etcd_server.endpoint}?layout={layout}&namespace=s-{unique}/"
    replicas = await start_replicas(tmp_path, [url] * 3)
    try:
        report = await storm([r.url for r in replicas], SLOTS, clients=45, rounds=2,
                             hold=(0.0, 0.01), seed=7)
    finally:
        codes = [r.stop() for r in replicas]
    assert report.grants == 90 and len(report.holds) == 90
    assert violations(report.holds, SLOTS) == []
    assert report.statuses[500] == 0 and report.statuses[0] == 0
    # Not vacuous: the replicas really contended for full semaphores.
    assert report.kinds["failed_lock_semaphore_full"] > 0
    assert codes == [0, 0, 0]


def leader(cluster: EtcdCluster) -> EtcdServer:
    """The member that is raft leader now (v2 stats are on: the fixtures enable v2)."""
    for member in cluster.members:
        if member.proc is None:
            continue
        try:
            with urllib.request.urlopen(
                f"http://{member.endpoint}/v2/stats/self", timeout=2
            ) as resp:
                if json.load(resp).get("state") == "StateLeader":
                    return member
        except OSError:
            continue
    raise AssertionError("no etcd leader")


async def post_all(
    urls: Sequence[str], ids: Sequence[str], op: str = "pre-reboot"
) -> list[tuple[int, str]]:
    """One request per id, all at once, spread over the replicas: (status, kind)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(i: int, id_: str) -> tuple[int, str]:
            url = urls[i % len(urls)].rstrip("/") + f"/v1/{op}"
            body = {"client_params": {"id": id_, "group": "one"}}
            async with session.post(url, json=body, headers=HEADERS) as resp:
                doc = await resp.json(content_type=None)
                return resp.status, doc.get("kind", "")

        return await asyncio.gather(*(one(i, id_) for i, id_ in enumerate(ids)))


async def readyz(url: str) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(url.rstrip("/") + "/readyz") as resp:
            return resp.status


async def test_cluster_loses_one_member_then_quorum_then_recovers(tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path / "etcd").start()
    endpoints = [m.endpoint for m in cluster.members]
    # Each replica starts on a different member, so a stop hits one of them mid-request.
    urls = [
        "etcd://" + ",".join(endpoints[i:] + endpoints[:i]) + "?timeout=1"
        for i in range(len(endpoints))
    ]
    replicas: list[Lockd] = []
    try:
        replicas = await start_replicas(tmp_path, urls, "--set", "storage.timeout_s=4")
        lockd_urls = [r.url for r in replicas]

        # 1. Under load, stop the raft leader: service continues, invariant holds.
        first = leader(cluster)
        load = asyncio.create_task(
            storm(lockd_urls, SLOTS, clients=30, rounds=6, hold=(0.0, 0.02), seed=11)
        )
        await asyncio.sleep(0.5)
        assert not load.done(), "the storm ended before the failure; make it longer"
        await asyncio.to_thread(first.stop)
        report = await asyncio.wait_for(load, 60)
        assert report.grants == 180
        assert violations(report.holds, SLOTS) == []
        assert report.statuses[500] == 0

        # 2. Stop a second member: no quorum. Every answer is a 503, never a 200.
        second = next(m for m in cluster.members if m.proc is not None)
        await asyncio.to_thread(second.stop)
        answers = await post_all(lockd_urls, [f"late-{i}" for i in range(12)])
        assert set(answers) == {(503, "backend_unavailable")}
        assert [await readyz(u) for u in lockd_urls] == [503, 503, 503]

        # 3. Restart both: the same lockd processes recover by themselves.
        for member in (first, second):
            member.start(wait=False)
        for member in (first, second):
            await asyncio.to_thread(member.wait_healthy)
        # A 503 means "not decided yet", not "refused": a write that the last member had
        # logged may still commit once quorum is back. So, like zincati, every late node
        # keeps asking until it is granted, reboots, and releases.
        async def late_node(i: int) -> None:
            url = lockd_urls[i % len(lockd_urls)]
            while (await post_all([url], [f"late-{i}"]))[0][0] != 200:
                await asyncio.sleep(0.02)
            assert await post_all([url], [f"late-{i}"], op="steady-state") == [(200, "")]

        await asyncio.wait_for(asyncio.gather(*(late_node(i) for i in range(12))), 60)
        again = await asyncio.wait_for(
            storm(lockd_urls, SLOTS, clients=20, rounds=2, hold=(0.0, 0.01), seed=12), 60
        )
        assert again.grants == 40
        assert violations(report.holds + again.holds, SLOTS) == []
        assert [await readyz(u) for u in lockd_urls] == [200, 200, 200]
        assert [r.proc.proc.poll() for r in replicas] == [None, None, None]  # type: ignore[union-attr]
    finally:
        for r in replicas:
            r.stop()
        cluster.stop()
