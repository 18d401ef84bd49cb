"""The backend contract, one suite run on every store in conftest.BACKENDS.

A backend is a versioned store with compare-and-set; these tests say exactly what that
means, and then drive a LockService over it to show the layouts round-trip.
"""

from __future__ import annotations

import asyncio

from backends import Backend, open_backend
from lockd.semaphore import Outcome
from lockd.service import GroupSettings, LockService


def k(backend: Backend, name: str) -> str:
    """A key in the backend's own layout namespace (etcd2 only accepts its own paths)."""
    return backend.layout.key(name)


async def test_absent_key_reads_none(backend: Backend) -> None:
    assert await backend.get(k(backend, "absent")) == (None, None)


async def test_create_only_if_absent(backend: Backend) -> None:
    key = k(backend, "create")
    assert await backend.compare_and_set(key, b"one", None) is True
    assert await backend.compare_and_set(key, b"two", None) is False
    value, version = await backend.get(key)
    assert value == b"one" and version is not None


async def test_swap_needs_current_version(backend: Backend) -> None:
    key = k(backend, "swap")
    assert await backend.compare_and_set(key, b"v1", None)
    _, v1 = await backend.get(key)
    assert await backend.compare_and_set(key, b"v2", v1)
    _, v2 = await backend.get(key)
    assert v2 != v1
    # The old version no longer matches, even with the same bytes.
    assert await backend.compare_and_set(key, b"v3", v1) is False
    assert await backend.compare_and_set(key, b"v2", v2)
    value, v3 = await backend.get(key)
    assert value == b"v2" and v3 not in (v1, v2)


async def test_delete_needs_current_version(backend: Backend) -> None:
    key = k(backend, "delete")
    await backend.compare_and_set(key, b"x", None)
    _, v1 = await backend.get(key)
    await backend.compare_and_set(key, b"y", v1)
    assert await backend.delete(key, v1) is False
    _, v2 = await backend.get(key)
    assert await backend.delete(key, v2) is True
    assert await backend.get(key) == (None, None)
    # Recreated after delete: versions never repeat, so old ones cannot match again.
    assert await backend.compare_and_set(key, b"z", None)
    for _ in range(3):
        _, v = await backend.get(key)
        assert await backend.compare_and_set(key, b"z", v)
    assert await backend.compare_and_set(key, b"w", v1) is False
    assert await backend.compare_and_set(key, b"w", v2) is False


async def test_swap_reports_the_state_after(backend: Backend) -> None:
    key = k(backend, "swap-report")
    ok, value, version = await backend.swap(key, b"one", None)
    assert ok and value == b"one"
    assert version in (None, (await backend.get(key))[1])
    current = await backend.get(key)
    ok, value, version = await backend.swap(key, b"two", current[1])
    assert ok and value == b"two" and version in (None, (await backend.get(key))[1])
    # A lost swap returns what is stored now, exactly as get() would.
    ok, value, version = await backend.swap(key, b"three", current[1])
    assert not ok and (value, version) == await backend.get(key)
    ok, value, version = await backend.swap(key, b"four", None)
    assert not ok and (value, version) == await backend.get(key)
    ok, value, version = await backend.swap(k(backend, "swap-absent"), b"x", current[1])
    assert (ok, value, version) == (False, None, None)


async def test_values_round_trip_bytes(backend: Backend) -> None:
    key = k(backend, "bytes")
    payload = '{"holders":["ünïcode","e0f3745b"],"n":1}'.encode()
    assert await backend.compare_and_set(key, payload, None)
    assert (await backend.get(key))[0] == payload


async def test_scan_lists_only_the_prefix(backend: Backend) -> None:
    for name in ("b-group", "a-group", "c.group"):
        assert await backend.compare_and_set(k(backend, name), b"{}", None)
    keys = await backend.scan(backend.layout.group_prefix())
    groups = sorted(g for g in map(backend.layout.group_of, keys) if g)
    assert groups == ["a-group", "b-group", "c.group"]


async def test_only_one_concurrent_swap_wins(backend: Backend) -> None:
    key = k(backend, "race")
    await backend.compare_and_set(key, b"start", None)
    _, version = await backend.get(key)
    results = await asyncio.gather(
        *(backend.compare_and_set(key, f"w{i}".encode(), version) for i in range(20))
    )
    assert results.count(True) == 1
    value, _ = await backend.get(key)
    assert value == f"w{results.index(True)}".encode()


async def test_ping(backend: Backend) -> None:
    await backend.ping()


async def test_service_over_backend(backend: Backend) -> None:
    service = LockService(backend, GroupSettings(default_slots=2))
    assert await service.pre_reboot("workers", "a") is Outcome.GRANTED
    assert await service.pre_reboot("workers", "a") is Outcome.ALREADY_HELD
    assert await service.pre_reboot("workers", "b") is Outcome.GRANTED
    assert await service.pre_reboot("workers", "c") is Outcome.FULL
    assert await service.steady_state("workers", "z") is Outcome.NOT_HELD
    assert await service.steady_state("workers", "a") is Outcome.RELEASED
    assert await service.pre_reboot("workers", "c") is Outcome.GRANTED
    sem = await service.read("workers")
    assert sem is not None and sorted(h.id for h in sem.holders) == ["b", "c"]
    assert "workers" in await service.list_groups()


async def test_reads_that_change_nothing_write_nothing(backend: Backend) -> None:
    service = LockService(backend, GroupSettings(default_slots=1))
    key = backend.layout.key("quiet")
    await service.steady_state("quiet", "nobody")
    assert await backend.get(key) == (None, None), "an unlock on an empty group created it"
    await service.pre_reboot("quiet", "a")
    before = await backend.get(key)
    await service.pre_reboot("quiet", "a")  # holder re-lock
    await service.pre_reboot("quiet", "b")  # full
    await service.steady_state("quiet", "b")  # not held
    assert await backend.get(key) == before


async def test_concurrent_grants_through_two_handles(shared_backend_url: str) -> None:
    """Two handles on one store (two lockd replicas): slots are never exceeded."""
    backend, other = open_backend(shared_backend_url), open_backend(shared_backend_url)
    await backend.open()
    await other.open()
    try:
        services = [LockService(b, GroupSettings(default_slots=3)) for b in (backend, other)]
        outcomes = await asyncio.gather(
            *(services[i % 2].pre_reboot("shared", f"node{i}") for i in range(24))
        )
        assert outcomes.count(Outcome.GRANTED) == 3
        assert outcomes.count(Outcome.FULL) == 21
        sem = await services[1].read("shared")
        assert sem is not None and len(sem.holders) == 3
    finally:
        await other.close()
        await backend.close()
