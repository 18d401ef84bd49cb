"""The backend contract, one suite run on every store in conftest.BACKENDS.

A backend is a versioned store with compare-and-set; these tests say exactly what each method
of :class:`lockd.backends.Backend` means, and then drive a LockService over it to show the
layouts round-trip. The keys come from the store's layout (etcd2 accepts only its paths).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from lockd.groups import GroupSettings
from lockd.semaphore import Outcome
from lockd.service import LockService
from lockd.store import Store, open_store


def k(store: Store, name: str) -> str:
    return store.layout.key(name)


async def test_absent_key_reads_none(store: Store) -> None:
    assert await store.backend.get(k(store, "absent")) == (None, None)


async def test_create_only_if_absent(store: Store) -> None:
    b, key = store.backend, k(store, "create")
    assert (await b.compare_and_set(key, b"one", None)).stored is True
    assert (await b.compare_and_set(key, b"two", None)).stored is False
    value, version = await b.get(key)
    assert value == b"one" and version is not None


async def test_compare_and_set_needs_current_version(store: Store) -> None:
    b, key = store.backend, k(store, "swap")
    assert (await b.compare_and_set(key, b"v1", None)).stored
    _, v1 = await b.get(key)
    assert (await b.compare_and_set(key, b"v2", v1)).stored
    _, v2 = await b.get(key)
    assert v2 != v1
    # The old version no longer matches, even with the same bytes.
    assert (await b.compare_and_set(key, b"v3", v1)).stored is False
    assert (await b.compare_and_set(key, b"v2", v2)).stored
    value, v3 = await b.get(key)
    assert value == b"v2" and v3 not in (v1, v2)


async def test_versions_never_repeat(store: Store) -> None:
    """Writing the same bytes again gives a version never seen before, so a remembered
    version matches only the write it was seen with."""
    b, key = store.backend, k(store, "aba")
    await b.compare_and_set(key, b"A", None)
    seen = []
    for value in (b"A", b"B", b"A", b"B", b"A"):
        _, version = await b.get(key)
        seen.append(version)
        assert (await b.compare_and_set(key, value, version)).stored
    seen.append((await b.get(key))[1])
    assert len(set(map(repr, seen))) == len(seen)
    for old in seen[:-1]:
        assert (await b.compare_and_set(key, b"stale", old)).stored is False


async def test_compare_and_set_reports_the_state_after(store: Store) -> None:
    b, key = store.backend, k(store, "swap-report")
    result = await b.compare_and_set(key, b"one", None)
    assert result.stored and result.value == b"one"
    assert result.version in (None, (await b.get(key))[1])
    current = await b.get(key)
    result = await b.compare_and_set(key, b"two", current[1])
    assert result.stored and result.value == b"two"
    assert result.version in (None, (await b.get(key))[1])
    # A lost compare-and-set answers what is stored now, exactly as get() would.
    result = await b.compare_and_set(key, b"three", current[1])
    assert not result.stored and (result.value, result.version) == await b.get(key)
    result = await b.compare_and_set(key, b"four", None)
    assert not result.stored and (result.value, result.version) == await b.get(key)
    result = await b.compare_and_set(k(store, "swap-absent"), b"x", current[1])
    assert tuple(result) == (False, None, None)


async def test_compare_and_delete_needs_current_version(store: Store) -> None:
    b, key = store.backend, k(store, "delete")
    assert (await b.compare_and_set(key, b"v1", None)).stored
    _, v1 = await b.get(key)
    assert (await b.compare_and_set(key, b"v2", v1)).stored
    # A stale version never deletes, and answers what is stored now.
    result = await b.compare_and_delete(key, v1)
    assert not result.stored and (result.value, result.version) == await b.get(key)
    value, v2 = await b.get(key)
    assert value == b"v2"
    assert tuple(await b.compare_and_delete(key, v2)) == (True, None, None)
    assert await b.get(key) == (None, None)
    assert k(store, "delete") not in await b.scan(store.layout.group_prefix())
    # Gone: the same version deletes nothing more.
    assert tuple(await b.compare_and_delete(key, v2)) == (False, None, None)


async def test_a_version_from_before_a_delete_never_matches_again(store: Store) -> None:
    """Delete, then create the same bytes again: the old version can neither delete nor
    overwrite the new key (versions never repeat, across a delete too)."""
    b, key = store.backend, k(store, "recreate")
    assert (await b.compare_and_set(key, b"same", None)).stored
    _, old = await b.get(key)
    assert (await b.compare_and_delete(key, old)).stored
    assert (await b.compare_and_set(key, b"same", None)).stored
    value, new = await b.get(key)
    assert value == b"same" and repr(new) != repr(old)
    assert (await b.compare_and_delete(key, old)).stored is False
    assert (await b.compare_and_set(key, b"overwritten", old)).stored is False
    assert await b.get(key) == (b"same", new)


async def test_a_delete_and_a_write_on_one_version_never_both_win(store: Store) -> None:
    """A write that lands between a read and a delete on that read's version survives."""
    b, key = store.backend, k(store, "delete-race")
    await b.compare_and_set(key, b"idle", None)
    _, version = await b.get(key)
    for _ in range(5):
        deleted, written = await asyncio.gather(
            b.compare_and_delete(key, version), b.compare_and_set(key, b"held", version)
        )
        assert [deleted.stored, written.stored].count(True) == 1
        if deleted.stored:
            assert await b.get(key) == (None, None)
            await b.compare_and_set(key, b"idle", None)
        else:
            assert (await b.get(key))[0] == b"held"
        _, version = await b.get(key)


async def test_values_round_trip_bytes(store: Store) -> None:
    b, key = store.backend, k(store, "bytes")
    payload = '{"holders":["ünïcode","e0f3745b"],"n":1}'.encode()
    assert (await b.compare_and_set(key, payload, None)).stored
    assert (await b.get(key))[0] == payload


async def test_scan_lists_only_the_prefix(store: Store) -> None:
    for name in ("b-group", "a-group", "c.group"):
        assert (await store.backend.compare_and_set(k(store, name), b"{}", None)).stored
    keys = await store.backend.scan(store.layout.group_prefix())
    groups = sorted(g for g in map(store.layout.group_of, keys) if g)
    assert groups == ["a-group", "b-group", "c.group"]


async def test_only_one_concurrent_compare_and_set_wins(store: Store) -> None:
    b, key = store.backend, k(store, "race")
    await b.compare_and_set(key, b"start", None)
    _, version = await b.get(key)
    results = await asyncio.gather(
        *(b.compare_and_set(key, f"w{i}".encode(), version) for i in range(20))
    )
    stored = [r.stored for r in results]
    assert stored.count(True) == 1
    value, _ = await b.get(key)
    assert value == f"w{stored.index(True)}".encode()


async def test_ping(store: Store) -> None:
    await store.backend.ping()


async def test_describe_names_the_scheme(store: Store) -> None:
    assert store.backend.scheme in store.backend.describe()


async def test_service_over_backend(store: Store) -> None:
    service = LockService(store, GroupSettings(default_slots=2))
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


async def test_reads_that_change_nothing_write_nothing(store: Store) -> None:
    service = LockService(store, GroupSettings(default_slots=1))
    b, key = store.backend, store.layout.key("quiet")
    await service.steady_state("quiet", "nobody")
    assert await b.get(key) == (None, None), "an unlock on an empty group created it"
    await service.pre_reboot("quiet", "a")
    before = await b.get(key)
    await service.pre_reboot("quiet", "a")  # holder re-lock
    await service.pre_reboot("quiet", "b")  # full
    await service.steady_state("quiet", "b")  # not held
    assert await b.get(key) == before


async def test_concurrent_grants_through_two_handles(shared_backend_url: str) -> None:
    """Two handles on one store (two lockd replicas): slots are never exceeded."""
    one, other = open_store(shared_backend_url), open_store(shared_backend_url)
    await one.backend.open()
    await other.backend.open()
    try:
        services = [LockService(s, GroupSettings(default_slots=3)) for s in (one, other)]
        outcomes = await asyncio.gather(
            *(services[i % 2].pre_reboot("shared", f"node{i}") for i in range(24))
        )
        assert outcomes.count(Outcome.GRANTED) == 3
        assert outcomes.count(Outcome.FULL) == 21
        sem = await services[1].read("shared")
        assert sem is not None and len(sem.holders) == 3
    finally:
        await other.backend.close()
        await one.backend.close()


# The optional change feed (Backend.watch, where has_feed).


class Recorder:
    """A ChangeSink that keeps what the feed said."""

    def __init__(self) -> None:
        self.subscriptions = 0
        self.changes: list[tuple[str | None, object]] = []
        self.event = asyncio.Event()

    def subscribed(self) -> None:
        self.subscriptions += 1
        self.event.set()

    def changed(self, key: str | None, version: object = None) -> None:
        self.changes.append((key, version))
        self.event.set()

    async def until(self, check: Callable[[], bool], seconds: float = 20.0) -> None:
        async with asyncio.timeout(seconds):
            while not check():
                self.event.clear()
                await self.event.wait()


async def test_watch_reports_every_change_under_the_prefix(store: Store) -> None:
    b = store.backend
    if not b.has_feed:
        with pytest.raises(NotImplementedError):
            await b.watch(store.layout.group_prefix(), Recorder())
        return
    sink = Recorder()
    feed = asyncio.create_task(b.watch(store.layout.group_prefix(), sink))
    try:
        await sink.until(lambda: sink.subscriptions == 1)
        key = k(store, "watched")
        first = await b.compare_and_set(key, b"one", None)
        second = await b.compare_and_set(key, b"two", first.version)
        assert second.stored
        # Both writes are reported, in order; a version, where the feed gives one, is the
        # write's own (the view keeps an entry whose version it already has).
        await sink.until(lambda: len([c for c in sink.changes if c[0] == key]) >= 1
                         and (sink.changes[-1][0] != key or sink.changes[-1][1]
                              in (None, second.version)))
        reported = [v for c, v in sink.changes if c == key]
        assert reported[-1] in (None, second.version)
        assert all(v in (None, first.version, second.version) for v in reported)
        assert {c for c, _ in sink.changes} <= {key, None}
        assert not feed.done()
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed


async def test_watch_reports_a_conditional_delete(store: Store) -> None:
    """Public mode's GC deletes keys: a view fed by this feed must hear of it, or it would
    keep refusing from a group that no longer exists."""
    b = store.backend
    if not b.has_feed:  # then no view follows it, and watch says so
        with pytest.raises(NotImplementedError):
            await b.watch(store.layout.group_prefix(), Recorder())
        return
    key = k(store, "deleted")
    created = await b.compare_and_set(key, b"one", None)
    sink = Recorder()
    feed = asyncio.create_task(b.watch(store.layout.group_prefix(), sink))
    try:
        await sink.until(lambda: sink.subscriptions == 1)
        sink.changes.clear()
        assert (await b.compare_and_delete(key, created.version)).stored
        # Reported as the key without a version (deleted), or as "anything may have changed".
        await sink.until(lambda: (key, None) in sink.changes or (None, None) in sink.changes)
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
