"""Safety under concurrency, checked from recorded histories (tests/history.py)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from bench.procs import Lockd
from lockd.config import Settings
from lockd.frontend import create_app
from tests.history import storm, violations
from tests.httpcall import lock


async def test_200_clients_3_slots_over_http(aiohttp_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(backend=f"sqlite://{tmp_path / 'l.db'}", groups={"storm": 3})
    server = await aiohttp_server(create_app(settings))
    report = await storm(
        [str(server.make_url("/"))], {"storm": 3}, clients=200, rounds=1, hold=(0.0, 0.005)
    )
    assert report.grants == 200 and len(report.holds) == 200
    assert violations(report.holds, {"storm": 3}) == []
    assert report.statuses[500] == 0 and report.statuses[0] == 0
    # The check is not vacuous: the storm really filled the semaphore and was refused.
    assert report.kinds["failed_lock_semaphore_full"] > 0


async def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    slots = {"a": 1, "b": 2, "c": 3}
    flags = [f"--group={g}={n}" for g, n in slots.items()]
    replicas = [
        Lockd(tmp_path, "--backend", f"sqlite://{db}", *flags, name=f"r{i}").start()
        for i in range(2)
    ]
    try:
        report = await storm(
            [r.url for r in replicas], slots, clients=60, rounds=3, hold=(0.0, 0.01), seed=2
        )
    finally:
        codes = [r.stop() for r in replicas]
    assert report.grants == 180
    assert violations(report.holds, slots) == []
    assert report.statuses[500] == 0
    assert codes == [0, 0], "SIGTERM must stop lockd cleanly"


def test_holders_survive_sigkill_on_the_default_backend(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Lockd(tmp_path, "--state-dir", str(state), name="first").start()
    try:
        assert lock(first.url, "pre-reboot", "node-a", "default")[0] == 200
    finally:
        first.proc.signal(signal.SIGKILL)  # type: ignore[union-attr]
        first.stop()
    assert (state / "lockd.db").exists(), "the default backend is sqlite in the state dir"
    second = Lockd(tmp_path, "--state-dir", str(state), name="second").start()
    try:
        assert lock(second.url, "pre-reboot", "node-a", "default")[0] == 200  # still the holder
        status, doc = lock(second.url, "pre-reboot", "node-b", "default")
        assert (status, doc["kind"]) == (423, "failed_lock_semaphore_full")
    finally:
        second.stop()


async def test_a_request_whose_client_hung_up_is_not_applied_late(tmp_path: Path) -> None:
    """A release that waited while the store was stuck, and whose client gave up, must not
    be applied afterwards: by then the node may hold a slot again."""
    db = tmp_path / "l.db"
    server = Lockd(
        tmp_path, "--backend", f"sqlite://{db}?busy_timeout=8", "--default-slots", "2"
    ).start()
    try:
        assert lock(server.url, "pre-reboot", "a", "default")[0] == 200
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # the store stops answering writes
        body = {"client_params": {"id": "x", "group": "default"}}
        headers = {"fleet-lock-protocol": "true"}
        async with aiohttp.ClientSession() as session:
            # x's grant (a write) takes the group's round trip and waits on the store...
            stuck = asyncio.create_task(
                session.post(f"{server.url}/v1/pre-reboot", json=body, headers=headers)
            )
            await asyncio.sleep(0.3)
            # ...so a's release queues behind it; a's client gives up and hangs up.
            body_a = {"client_params": {"id": "a", "group": "default"}}
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await session.post(
                        f"{server.url}/v1/steady-state", json=body_a, headers=headers
                    )
            await asyncio.sleep(0.3)
            blocker.execute("ROLLBACK")
            blocker.close()
            resp = await stuck
            assert resp.status == 200  # x's grant was in flight: it completes
        status, doc = lock(server.url, "pre-reboot", "a", "default")
        assert (status, doc["outcome"]) == (200, "already_held"), "the dropped release ran"
    finally:
        server.stop()
