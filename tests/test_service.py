"""The service's compare-and-set loop: bounded retries, timeouts, and what it writes."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

import pytest

from lockd.backends import CasResult, ValueTooLarge, Version
from lockd.backends.memory import MemoryBackend
from lockd.errors import Kind, LockdError
from lockd.groups import GroupSettings
from lockd.layouts import NativeLayout
from lockd.semaphore import Outcome, Semaphore
from lockd.service import (
    LockService,
    Pending,
    apply_in_order,
    decision_stands,
    must_read_first,
    still_waiting,
)
from lockd.store import Store


def on(backend: MemoryBackend) -> Store:
    return Store(backend, NativeLayout())


class RivalWriter(MemoryBackend):
    """A real memory store where another replica writes the key just before each of our
    next ``rival_writes`` swaps: the worst interleaving a CAS loop meets."""

    def __init__(self, rival_writes: int) -> None:
        super().__init__()
        self.rival_writes = rival_writes
        self.swaps = 0
        self.reads = 0

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        self.reads += 1
        return await super().get(key)

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        if self.rival_writes > 0:
            self.rival_writes -= 1
            current, version = await MemoryBackend.get(self, key)
            if current is not None:  # same bytes, new version
                await MemoryBackend.compare_and_set(self, key, current, version)
        self.swaps += 1
        return await MemoryBackend.compare_and_set(self, key, value, expected)


async def seeded(backend: MemoryBackend) -> LockService:
    service = LockService(on(backend), GroupSettings(default_slots=2), max_attempts=5,
                          backoff_base=0.0001)
    assert await service.pre_reboot("g", "first") is Outcome.GRANTED
    return service


async def test_lost_races_are_retried_until_they_win() -> None:
    backend = RivalWriter(rival_writes=0)
    service = await seeded(backend)
    backend.rival_writes = 3
    assert await service.pre_reboot("g", "second") is Outcome.GRANTED
    assert backend.swaps == 1 + 4  # the seed, three lost swaps and the winning one
    sem = await service.read("g")
    assert sem is not None and [h.id for h in sem.holders] == ["first", "second"]


async def test_retries_are_bounded_and_end_in_503() -> None:
    backend = RivalWriter(rival_writes=0)
    service = await seeded(backend)
    backend.rival_writes = 1000
    with pytest.raises(LockdError) as err:
        await service.pre_reboot("g", "second")
    assert err.value.kind is Kind.backend_contention and err.value.status == 503
    backend.rival_writes = 0
    sem = await service.read("g")
    assert sem is not None and [h.id for h in sem.holders] == ["first"]


class HungStore(MemoryBackend):
    """A store that stops answering (a SIGSTOPped server, a dead network path)."""

    hung = False

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        if self.hung:
            await asyncio.Event().wait()
        return await super().get(key)

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        if self.hung:
            await asyncio.Event().wait()
        return await super().compare_and_set(key, value, expected)


async def test_a_hung_store_gives_503_within_the_timeout() -> None:
    backend = HungStore()
    service = LockService(on(backend), GroupSettings(), timeout=0.2)
    assert await service.pre_reboot("g", "a") is Outcome.GRANTED
    backend.hung = True
    for call in (service.pre_reboot("g", "b"), service.steady_state("g", "a"), service.ready()):
        with pytest.raises(LockdError) as err:
            await call
        assert err.value.kind is Kind.backend_unavailable
    backend.hung = False
    assert await service.pre_reboot("g", "b") is Outcome.FULL  # nothing was lost


async def test_concurrent_requests_share_one_round_trip() -> None:
    backend = RivalWriter(rival_writes=0)
    service = LockService(on(backend), GroupSettings(default_slots=2))
    outcomes = await asyncio.gather(*(service.pre_reboot("g", f"n{i}") for i in range(50)))
    # Arrival order decides: the first two are granted, the rest refused, one write.
    assert outcomes[:2] == [Outcome.GRANTED] * 2 and set(outcomes[2:]) == {Outcome.FULL}
    assert (backend.reads, backend.swaps) == (1, 1)
    relocks = await asyncio.gather(*(service.pre_reboot("g", "n0") for _ in range(50)))
    assert set(relocks) == {Outcome.ALREADY_HELD}
    assert (backend.reads, backend.swaps) == (2, 1), "re-locks by the holder must not write"


async def test_a_write_skips_the_read_but_a_refusal_never_trusts_memory() -> None:
    """Two replicas on one store: what one remembers may be stale; it must never decide
    a read-only answer on it, and a stale write must fail and decide again."""
    store = RivalWriter(rival_writes=0)
    a = LockService(on(store), GroupSettings(default_slots=1))
    b = LockService(on(store), GroupSettings(default_slots=1))
    assert await a.pre_reboot("g", "n1") is Outcome.GRANTED
    assert await a.steady_state("g", "n1") is Outcome.RELEASED
    assert (store.reads, store.swaps) == (1, 2), "the release went straight to the swap"
    assert await b.pre_reboot("g", "n2") is Outcome.GRANTED  # a's memory is now stale
    # a remembers a free slot: its grant's swap fails, it sees n2 and refuses.
    assert await a.pre_reboot("g", "n3") is Outcome.FULL
    # a remembers n2 holding, but n2 released and n4 took the slot through b. Answering
    # n2's re-lock from memory would be a wrong 200: a reads first, and refuses.
    assert await b.steady_state("g", "n2") is Outcome.RELEASED
    assert await b.pre_reboot("g", "n4") is Outcome.GRANTED
    before = store.reads
    assert await a.pre_reboot("g", "n2") is Outcome.FULL
    assert store.reads == before + 1


async def test_decisions_reach_observers() -> None:
    service = LockService(on(MemoryBackend()), GroupSettings())
    seen = []
    service.observers.append(seen.append)
    service.observers.append(lambda d: 1 / 0)  # a broken observer changes nothing
    await service.pre_reboot("g", "a")
    await service.pre_reboot("g", "b")
    await service.steady_state("g", "a")
    assert [(d.action, d.id, d.outcome) for d in seen] == [
        ("pre-reboot", "a", Outcome.GRANTED),
        ("pre-reboot", "b", Outcome.FULL),
        ("steady-state", "a", Outcome.RELEASED),
    ]


async def test_strict_groups_refuse_unknown_groups_without_writing() -> None:
    backend = MemoryBackend()
    service = LockService(on(backend), GroupSettings(slots={"w": 1}, strict=True))
    with pytest.raises(LockdError) as err:
        await service.pre_reboot("other", "a")
    assert err.value.kind is Kind.unknown_group
    assert await backend.scan("") == []


async def test_configuration_changes_apply_once_and_set_max_survives() -> None:
    backend = MemoryBackend()
    service = LockService(on(backend), GroupSettings(slots={"w": 1}))
    await service.pre_reboot("w", "a")
    await service.set_slots("w", 3)
    service.reconfigure(GroupSettings(slots={"w": 1}))  # same config: set-max stands
    await service.apply_configuration()
    assert (await service.read("w")).slots == 3  # type: ignore[union-attr]
    service.reconfigure(GroupSettings(slots={"w": 2}))  # config changed: it wins
    await service.apply_configuration()
    assert (await service.read("w")).slots == 2  # type: ignore[union-attr]
    assert await service.list_groups() == ["w"]


# The service's named rules, each alone.


def pending(transition) -> Pending:  # type: ignore[no-untyped-def]
    return Pending(transition, asyncio.get_running_loop().create_future())


async def test_still_waiting_drops_answered_requests() -> None:
    a, b, c = (pending(lambda s: (s, Outcome.UNCHANGED)) for _ in range(3))
    b.future.set_exception(LockdError(Kind.backend_unavailable, "timed out"))
    b.future.exception()  # retrieved, so the loop does not warn
    assert still_waiting([a, b, c]) == [a, c]


async def test_apply_in_order_keeps_each_failure_its_own() -> None:
    def boom(sem: Semaphore) -> tuple[Semaphore, Outcome]:
        raise RuntimeError("a bug in one decision")

    from lockd import semaphore

    batch = [
        pending(lambda s: semaphore.lock(s, "a", 1.0)),
        pending(boom),
        pending(lambda s: semaphore.lock(s, "b", 2.0)),
    ]
    after, results = apply_in_order(Semaphore.new(2), batch, attempt=1)
    assert [h.id for h in after.holders] == ["a", "b"]
    assert results[0][1] is Outcome.GRANTED and results[2][1] is Outcome.GRANTED  # type: ignore[index]
    assert isinstance(results[1], LockdError) and results[1].kind is Kind.internal_error


def test_must_read_first_only_for_unchecked_decisions() -> None:
    assert must_read_first(writes=False, fresh=False)
    assert not must_read_first(writes=False, fresh=True)
    assert not must_read_first(writes=True, fresh=False)  # the compare-and-set checks it
    assert not must_read_first(writes=True, fresh=True)


async def test_one_failing_transition_does_not_fail_its_batch() -> None:
    service = LockService(on(MemoryBackend()), GroupSettings(default_slots=2))

    def boom(sem: Semaphore) -> tuple[Semaphore, Outcome]:
        raise RuntimeError("a bug in one decision")

    results = await asyncio.gather(
        service.pre_reboot("g", "a"), service.update("g", boom), service.pre_reboot("g", "b"),
        return_exceptions=True,
    )
    assert results[0] is Outcome.GRANTED and results[2] is Outcome.GRANTED
    assert isinstance(results[1], LockdError) and results[1].kind is Kind.internal_error


async def test_a_request_answered_during_retries_is_not_applied() -> None:
    """A release whose client gave up while its batch was losing races must not be applied
    by a later attempt of the same batch."""
    backend = RivalWriter(rival_writes=0)
    service = LockService(on(backend), GroupSettings(default_slots=2), max_attempts=10,
                          backoff_base=0.05, timeout=5)
    assert await service.pre_reboot("g", "n1") is Outcome.GRANTED
    backend.rival_writes = 5  # the release loses five races, sleeping between them
    release = asyncio.ensure_future(service.steady_state("g", "n1"))
    await asyncio.sleep(0.01)
    release.cancel()  # the handler is cancelled: its client hung up
    await asyncio.sleep(0.5)
    sem = await service.read("g")
    assert sem is not None and [h.id for h in sem.holders] == ["n1"]


class CountingWrites(MemoryBackend):
    writes = 0

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        result = await super().compare_and_set(key, value, expected)
        self.writes += result.stored
        return result


async def test_replicas_that_disagree_on_slots_do_not_fight() -> None:
    """Two replicas on one store, configured with 3 and 2 slots (a rolling change): the
    group is not rewritten on every request, a set-max stands, the disagreement is shown."""
    backend = CountingWrites()
    a = LockService(on(backend), GroupSettings(slots={"w": 3}))
    b = LockService(on(backend), GroupSettings(slots={"w": 2}))
    assert await a.pre_reboot("w", "holder") is Outcome.GRANTED  # creates it with 3
    await b.apply_configuration()  # b starts after a: its configuration is applied once
    assert (await a.read("w")).slots == 2  # type: ignore[union-attr]
    writes = backend.writes
    for i in range(10):
        service = (a, b)[i % 2]
        await service.pre_reboot("w", f"n{i % 3}")
    assert backend.writes == writes + 1, "only n0's grant wrote; no slots ping-pong"
    assert a.config_mismatches == {"w": (3, 2)} and b.config_mismatches == {}
    await b.set_slots("w", 5)
    for service in (a, b, a, b):
        await service.pre_reboot("w", "holder")
    assert (await b.read("w")).slots == 5  # type: ignore[union-attr]
    # a's configuration changes to agree (a reload): applied once, mismatch gone.
    a.reconfigure(GroupSettings(slots={"w": 2}))
    await a.pre_reboot("w", "holder")
    assert a.config_mismatches == {}


class SizeLimited(MemoryBackend):
    """A real memory store with a value size limit, as etcd has (--max-request-bytes)."""

    limit = 400

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        if len(value) > self.limit:
            raise ValueTooLarge(f"value of {len(value)} bytes is over {self.limit}")
        return await super().compare_and_set(key, value, expected)


async def test_a_group_too_large_for_the_store_says_so() -> None:
    service = LockService(on(SizeLimited()), GroupSettings(default_slots=100))
    outcomes = []
    with pytest.raises(LockdError) as err:
        for i in range(100):
            outcomes.append(await service.pre_reboot("g", f"node-{i:03d}"))
    assert err.value.kind is Kind.backend_group_too_large and err.value.status == 507
    assert set(outcomes) == {Outcome.GRANTED}
    # Releases still work, and so does everything the store can still hold.
    assert await service.steady_state("g", "node-000") is Outcome.RELEASED


async def test_per_group_memory_is_bounded() -> None:
    """Nothing in the service grows without bound with the number of distinct groups."""
    service = LockService(on(MemoryBackend()), GroupSettings(default_slots=1), remember=50)
    for i in range(300):
        await service.pre_reboot(f"g{i}", "n")
        await service.steady_state(f"g{i}", "n")
    assert len(service._seen) <= 50 and len(service._applied) <= 50
    assert not service._queues and not service._drainers
    # A forgotten group still decides right: its configuration is simply applied again.
    assert await service.pre_reboot("g0", "n") is Outcome.GRANTED
class CountingLayout(NativeLayout):
    """The native layout, counting how often a stored value is decoded."""

    decodes = 0

    def decode(self, raw: bytes) -> Semaphore:
        self.decodes += 1
        return super().decode(raw)


@pytest.mark.parametrize("with_view", [False, True])
async def test_a_document_is_decoded_once_per_change_not_per_request(with_view: bool) -> None:
    """The service keeps the state it wrote (a lossless layout) and each value's decoding
    (LockService._stored), so grants, releases, re-locks and refusals decode no stored
    value again; every decision is still made on what the store holds."""
    from lockd.view import View, follow

    layout = CountingLayout()
    backend = MemoryBackend()
    service = LockService(Store(backend, layout), GroupSettings(default_slots=1))
    feed = None
    if with_view:
        service.view = View(max_age=60.0)
        feed = asyncio.create_task(follow(backend, layout.group_prefix(), service.view))
        await asyncio.sleep(0)
    try:
        for _ in range(20):
            assert await service.pre_reboot("g", "a") is Outcome.GRANTED
            assert await service.pre_reboot("g", "a") is Outcome.ALREADY_HELD
            assert await service.pre_reboot("g", "b") is Outcome.FULL
            assert await service.steady_state("g", "a") is Outcome.RELEASED
        assert layout.decodes == 0  # every value read was one this service wrote
        # Another writer's value is decoded (once), and decided on.
        raw, version = await backend.get(layout.key("g"))
        other = layout.encode(Semaphore(slots=1, holders=(), next_grant_id=99,
                                        config_slots=1, paused=True), raw)
        assert (await backend.compare_and_set(layout.key("g"), other, version)).stored
        for _ in range(5):
            assert await service.pre_reboot("g", "a") is Outcome.PAUSED
        assert layout.decodes == 1
    finally:
        if feed is not None:
            feed.cancel()


# The reboot policy through the service (lockd.policy): gates asked outside the loop and
# only for would-be grants, sweeps through the same compare-and-set, events once.


def policy_service(backend: MemoryBackend, policy, gates=None, slots: int = 1):  # type: ignore[no-untyped-def]
    from lockd.groups import GroupSettings as GS

    service = LockService(on(backend), GS(default_slots=slots, policy=policy), gates=gates)
    clock = [1_000_000.0]
    service.clock = lambda: clock[0]
    return service, clock


async def test_gates_are_asked_only_for_requests_that_would_be_granted() -> None:
    from lockd.gates import Gates, WebhookGate
    from lockd.policy import GroupPolicy
    from tests.receivers import Receiver

    with Receiver(answers=[423], body="ceph is rebalancing") as hook:
        gates = Gates([WebhookGate("ceph", hook.url + "/may-reboot")], cache_s=0)
        service, _ = policy_service(MemoryBackend(), GroupPolicy(gates=("ceph",)), gates)
        try:
            answer = await service.try_lock("g", "a")  # the hook says 423: closed
            assert answer.outcome is Outcome.GATE_CLOSED
            err = service.refusal("g", answer)
            assert err.kind is Kind.failed_lock_gate_closed and "rebalancing" in err.value
            assert await service.pre_reboot("g", "a") is Outcome.GRANTED  # now 200
            assert [r.json() for r in hook.requests()] == [
                {"gate": "ceph", "group": "g", "id": "a"}] * 2
            # A holder's re-lock, a full group and unlocks never ask.
            assert await service.pre_reboot("g", "a") is Outcome.ALREADY_HELD
            assert await service.pre_reboot("g", "b") is Outcome.FULL
            assert await service.steady_state("g", "b") is Outcome.NOT_HELD
            assert len(hook.requests()) == 2
        finally:
            await gates.close()


async def test_an_unreachable_gate_refuses() -> None:
    from bench.procs import free_port
    from lockd.gates import Gates, WebhookGate
    from lockd.policy import GroupPolicy

    gates = Gates([WebhookGate("hook", f"http://127.0.0.1:{free_port()}/", timeout=1)])
    service, _ = policy_service(MemoryBackend(), GroupPolicy(gates=("hook",)), gates)
    try:
        answer = await service.try_lock("g", "a")
        assert answer.outcome is Outcome.GATE_UNREACHABLE
        assert service.refusal("g", answer).kind is Kind.failed_lock_gate_unreachable
        assert await service.read("g") is None  # nothing written
    finally:
        await gates.close()


async def test_two_replicas_sweep_and_exactly_one_reports_each_expiry() -> None:
    from lockd.policy import GroupPolicy

    backend = MemoryBackend()
    p = GroupPolicy(expire_after=100.0, stale_after=50.0, report_stale=True, history=5)
    a, clock_a = policy_service(backend, p, slots=3)
    b, clock_b = policy_service(backend, p, slots=3)
    events: list[tuple[str, str, str]] = []
    a.observers.append(lambda d: events.extend(("a", e.kind, e.id) for e in d.events))
    b.observers.append(lambda d: events.extend(("b", e.kind, e.id) for e in d.events))
    assert await a.pre_reboot("g", "old") is Outcome.GRANTED
    clock_a[0] = clock_b[0] = clock_a[0] + 60
    assert await b.pre_reboot("g", "young") is Outcome.GRANTED
    await asyncio.gather(a.sweep(), b.sweep())  # 60 s: "old" is stale
    clock_a[0] = clock_b[0] = clock_a[0] + 45
    await asyncio.gather(a.sweep(), b.sweep())  # 105 s: "old" expires
    sem = await a.read("g")
    assert sem is not None and [h.id for h in sem.holders] == ["young"]
    assert [(r.id, r.ended) for r in sem.policy.reboots] == [("old", "expiry")]
    reported = sorted((kind, id_) for _, kind, id_ in events)
    assert reported == [("expiry", "old"), ("grant", "old"), ("grant", "young"),
                        ("stale", "old")], events


async def test_a_sweep_with_nothing_to_do_writes_nothing() -> None:
    from lockd.policy import GroupPolicy

    backend = CountingWrites()
    service, _ = policy_service(backend, GroupPolicy(expire_after=100.0))
    assert await service.pre_reboot("g", "a") is Outcome.GRANTED
    writes = backend.writes
    seen = []
    service.observers.append(seen.append)
    for _ in range(3):
        await service.sweep()
    assert backend.writes == writes and seen == []  # and no decision line either


# The idle clock (public mode's tenant groups; lockd.semaphore.touch)


def test_touch_sets_the_clock_in_writes_and_refreshes_it_only_when_old() -> None:
    from lockd.semaphore import Holder, touch

    empty = Semaphore.new(1)
    assert touch(empty, 50.0, 10.0, writes=True, exists=False).touched == 50.0
    # Absent and not written: nothing to create.
    assert touch(empty, 50.0, 10.0, writes=False, exists=False) == empty
    stamped = touch(empty, 50.0, 10.0, writes=False, exists=True)
    assert stamped.touched == 50.0  # a stored group without a clock gets one
    assert touch(stamped, 59.0, 10.0, writes=False, exists=True) == stamped
    assert touch(stamped, 60.0, 10.0, writes=False, exists=True).touched == 60.0
    held = Semaphore(slots=1, holders=(Holder("a", 1.0, 1),), touched=1.0)
    assert touch(held, 1e9, 10.0, writes=False, exists=True) == held


async def test_the_idle_clock_is_written_coarsely() -> None:
    backend = MemoryBackend()
    service = LockService(on(backend), GroupSettings(default_slots=1), touch_every=100.0)
    clock = [1000.0]
    service.clock = lambda: clock[0]
    key = NativeLayout().key("g")

    def touched() -> float | None:
        raw = backend._data[key][0]
        return NativeLayout().decode(raw).touched

    assert await service.steady_state("g", "nobody") is Outcome.NOT_HELD
    assert await backend.get(key) == (None, None), "a poll of an absent group created it"
    assert await service.pre_reboot("g", "a") is Outcome.GRANTED
    assert touched() == 1000.0
    clock[0] = 5000.0
    before = await backend.get(key)
    assert await service.pre_reboot("g", "b") is Outcome.FULL  # refusals never write
    assert await service.pre_reboot("g", "a") is Outcome.ALREADY_HELD
    assert await backend.get(key) == before
    assert await service.steady_state("g", "a") is Outcome.RELEASED
    assert touched() == 5000.0  # in the write the release made anyway
    clock[0] = 5099.0
    before = await backend.get(key)
    assert await service.steady_state("g", "nobody") is Outcome.NOT_HELD
    assert await backend.get(key) == before  # younger than touch_every: no write
    clock[0] = 5100.0
    assert await service.steady_state("g", "nobody") is Outcome.NOT_HELD
    assert touched() == 5100.0


async def test_without_an_idle_clock_nothing_is_touched() -> None:
    backend = MemoryBackend()
    service = LockService(on(backend), GroupSettings(default_slots=1))
    assert await service.pre_reboot("g", "a") is Outcome.GRANTED
    raw, _ = await backend.get(NativeLayout().key("g"))
    assert raw is not None and b"touched" not in raw


async def test_stop_ends_a_task_that_swallowed_its_cancellation() -> None:
    """Python 3.11's asyncio.wait_for can swallow a cancellation (CPython gh-86296), as it
    did inside redis-py under the GC loop; stop() cancels again until the task ends."""
    from lockd.service import stop

    swallowed = []

    async def loop_that_swallows_once() -> None:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)  # as wait_for does: carry on as if not cancelled
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(loop_that_swallows_once())
    await asyncio.sleep(0.02)
    stopping = asyncio.create_task(stop(task))
    done, _ = await asyncio.wait({stopping}, timeout=10)
    if not done:  # the old stop(): waits forever on a task that goes on
        stopping.cancel()
        task.cancel()
    assert done and swallowed and task.cancelled()


async def test_a_decision_stands_only_on_the_very_value_and_a_whole_batch() -> None:
    loop = asyncio.get_running_loop()
    batch = [Pending(lambda s: (s, Outcome.ALREADY_HELD), loop.create_future()) for _ in range(2)]
    assert decision_stands(b"v1", b"v1", batch)
    assert decision_stands(b"v1", b"v1v1"[2:], batch)  # equal bytes, not the same object
    assert not decision_stands(b"v1", b"v2", batch)  # someone wrote since
    assert not decision_stands(b"v1", None, batch)  # deleted since
    batch[0].future.set_result(None)  # answered meanwhile (its client timed out)
    assert not decision_stands(b"v1", b"v1", batch)


async def test_a_relock_is_decided_once_per_fresh_read_and_again_on_a_new_value() -> None:
    """A re-lock is decided on the remembered value and then read (must_read_first); when
    the read finds that same value, the decision stands, and is not made a second time.
    When the read finds another value, the request is decided again on it."""
    backend = MemoryBackend()
    layout = NativeLayout()
    service = LockService(Store(backend, layout), GroupSettings(default_slots=1))
    assert await service.pre_reboot("g", "a") is Outcome.GRANTED
    calls = 0

    def relock(s: Semaphore) -> tuple[Semaphore, Outcome]:
        nonlocal calls
        calls += 1
        return s, (Outcome.ALREADY_HELD if s.holder("a") else Outcome.NOT_HELD)

    for n in range(1, 4):
        _, outcome, _, _ = await service.update("g", relock)
        assert (outcome, calls) == (Outcome.ALREADY_HELD, n)
    # Another writer frees the slot behind the service's back: the remembered value is
    # stale, the read finds the new one, and the request is decided again on it.
    raw, version = await backend.get(layout.key("g"))
    freed = layout.encode(Semaphore(slots=1, holders=(), next_grant_id=9, config_slots=1), raw)
    assert (await backend.compare_and_set(layout.key("g"), freed, version)).stored
    calls = 0
    _, outcome, _, _ = await service.update("g", relock)
    assert (outcome, calls) == (Outcome.NOT_HELD, 2)


class GatedStore(MemoryBackend):
    """A real memory store whose compare-and-set waits at a gate, counting those that
    reached it: a round trip held in flight for as long as a test needs."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.swaps = 0
        self.waiting = 0

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        self.swaps += 1
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().compare_and_set(key, value, expected)


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


async def test_requests_during_a_lone_round_trip_share_the_next_one() -> None:
    """An idle group's request runs its own round trip; those arriving meanwhile wait
    for it and then share one compare-and-set."""
    backend = GatedStore()
    service = LockService(on(backend), GroupSettings(default_slots=3))
    backend.gate.clear()
    first = asyncio.ensure_future(service.pre_reboot("g", "a"))
    await until(lambda: backend.waiting == 1)
    rest = [asyncio.ensure_future(service.pre_reboot("g", n)) for n in ("b", "c", "d")]
    await asyncio.sleep(0.01)
    assert backend.swaps == 1 and not any(t.done() for t in rest)
    backend.gate.set()
    assert await first is Outcome.GRANTED
    assert await asyncio.gather(*rest) == [Outcome.GRANTED, Outcome.GRANTED, Outcome.FULL]
    assert backend.swaps == 2, "the three that waited share one compare-and-set"
    sem = await service.read("g")
    assert sem is not None and [h.id for h in sem.holders] == ["a", "b", "c"]
    assert not service._queues and not service._drainers


async def test_a_lone_round_trip_cancelled_strands_nobody_behind_it() -> None:
    """The request running its own round trip is cancelled (its handler, at shutdown):
    the requests that queued behind it are still answered, and it is not applied."""
    backend = GatedStore()
    service = LockService(on(backend), GroupSettings(default_slots=3))
    backend.gate.clear()
    first = asyncio.ensure_future(service.pre_reboot("g", "a"))
    await until(lambda: backend.waiting == 1)
    rest = [asyncio.ensure_future(service.pre_reboot("g", n)) for n in ("b", "c")]
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    backend.gate.set()
    assert await asyncio.wait_for(asyncio.gather(*rest), 5) == [Outcome.GRANTED] * 2
    sem = await service.read("g")
    assert sem is not None and [h.id for h in sem.holders] == ["b", "c"]
    assert not service._queues and not service._drainers


async def test_a_leader_cancelled_before_its_round_trip_strands_nobody() -> None:
    """Requests that joined an idle group's first request in the same loop iteration are
    answered by one batch even if that first one is cancelled before its round trip."""
    backend = GatedStore()
    service = LockService(on(backend), GroupSettings(default_slots=3))
    tasks = [asyncio.ensure_future(service.pre_reboot("g", n)) for n in ("a", "b", "c")]
    await asyncio.sleep(0)  # each has queued; the first has not yet run its round trip
    tasks[0].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [Outcome.GRANTED] * 2 and backend.swaps == 1
    sem = await service.read("g")
    assert sem is not None and [h.id for h in sem.holders] == ["b", "c"]
    assert not service._queues and not service._drainers


async def test_a_lone_request_to_a_hung_store_gets_503_and_is_never_applied() -> None:
    backend = GatedStore()
    service = LockService(on(backend), GroupSettings(default_slots=1), timeout=0.2)
    backend.gate.clear()
    with pytest.raises(LockdError) as err:
        await service.pre_reboot("g", "a")
    assert err.value.kind is Kind.backend_unavailable
    backend.gate.set()
    assert await service.pre_reboot("g", "b") is Outcome.GRANTED
    assert not service._queues and not service._drainers


class JitteredStore(MemoryBackend):
    """A real memory store whose reads and swaps sometimes yield or take a little while,
    so that lone round trips, joined batches and drain tasks all interleave."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    async def _pause(self) -> None:
        r = self.rng.random()
        if r < 0.3:
            await asyncio.sleep(0)
        elif r < 0.4:
            await asyncio.sleep(self.rng.random() * 0.002)

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        await self._pause()
        return await super().get(key)

    async def compare_and_set(self, key: str, value: bytes, expected: Version) -> CasResult:
        await self._pause()
        return await super().compare_and_set(key, value, expected)


@pytest.mark.parametrize("seed", range(4))
async def test_no_request_is_stranded_whatever_is_cancelled(seed: int) -> None:
    """Clients locking and releasing in few groups, some cancelled at random moments
    (before, during and after their round trip): every request that is not cancelled is
    answered, no group ever has more holders than slots, and nothing is left queued."""
    rng = random.Random(seed)
    service = LockService(on(JitteredStore(rng)), GroupSettings(default_slots=2), timeout=5)
    answered = 0

    async def client(group: str, node: str) -> None:
        nonlocal answered
        for _ in range(60):
            op = service.pre_reboot if rng.random() < 0.5 else service.steady_state
            task = asyncio.ensure_future(op(group, node))
            if rng.random() < 0.1:
                await asyncio.sleep(rng.choice([0, 0, 0.0005]))
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                # Far below the service's timeout: a stranded request fails here.
                await asyncio.wait_for(asyncio.shield(task), 2.5)
                answered += 1
            sem = await service.read(group)
            assert sem is None or len(sem.holders) <= 2

    await asyncio.gather(*(client(f"g{i % 3}", f"n{i}") for i in range(12)))
    await asyncio.sleep(0.01)
    assert answered > 12 * 60 // 2
    assert not service._queues and not service._drainers
