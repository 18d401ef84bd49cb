"""The view (lockd.view): its trust rules one by one, the service's use of it, and a model
test in which several processes' views lag the store arbitrarily."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lockd import semaphore
from lockd import service as service_module
from lockd.backends import Version
from lockd.backends.memory import MemoryBackend
from lockd.groups import GroupSettings
from lockd.layouts import NativeLayout
from lockd.semaphore import Outcome
from lockd.service import LockService, verdict_keeps, view_may_refuse
from lockd.store import Store
from lockd.view import (
    View,
    feed_connected,
    filled_after_subscribe,
    raced_a_change,
    young_enough,
)

LAYOUT = NativeLayout()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# The trust rules, each alone.


def test_feed_connected() -> None:
    assert feed_connected(True) and not feed_connected(False)


def test_filled_after_subscribe() -> None:
    assert filled_after_subscribe(3, 3)
    assert not filled_after_subscribe(2, 3)


def test_raced_a_change() -> None:
    assert not raced_a_change(token_seq=5, change_seq=5, change_version=None, read_version=1)
    assert raced_a_change(token_seq=5, change_seq=6, change_version=None, read_version=1)
    assert raced_a_change(token_seq=5, change_seq=6, change_version=2, read_version=1)
    # The change reported is the very value the read returned: no race.
    assert not raced_a_change(token_seq=5, change_seq=6, change_version=1, read_version=1)


def test_young_enough() -> None:
    assert young_enough(10.0, 10.9, 1.0)
    assert not young_enough(10.0, 11.0, 1.0)
    assert not young_enough(10.0, 9.0, 1.0)  # the clock stepped back


def test_view_may_refuse_only_refusals() -> None:
    assert view_may_refuse(Outcome.FULL) and view_may_refuse(Outcome.PAUSED)
    assert view_may_refuse(Outcome.OUTSIDE_WINDOW) and view_may_refuse(Outcome.COOLDOWN)
    assert view_may_refuse(Outcome.GATE_CLOSED)
    for outcome in (Outcome.GRANTED, Outcome.ALREADY_HELD, Outcome.GATE_PENDING):
        assert not view_may_refuse(outcome)


# The view applying them.


def test_an_entry_filled_before_the_feed_subscribed_is_not_trusted() -> None:
    view = View(clock=Clock())
    token = view.token()
    view.subscribed()
    view.fill("k", b"v", 1, token)
    assert view.lookup("k") is None
    view.fill("k", b"v", 1, view.token())
    assert view.lookup("k") is not None


def test_nothing_is_trusted_while_the_feed_is_down() -> None:
    view = View(clock=Clock())
    view.fill("k", b"v", 1, view.token())
    assert view.lookup("k") is None
    view.subscribed()
    view.fill("k", b"v", 1, view.token())
    assert view.lookup("k") is not None
    view.lost()
    assert view.lookup("k") is None
    view.subscribed()  # back: still empty until read again
    assert view.lookup("k") is None


def test_a_read_that_raced_a_notification_does_not_count() -> None:
    view = View(clock=Clock())
    view.subscribed()
    token = view.token()
    view.changed("k", 2)  # arrives while the read is under way
    view.fill("k", b"old", 1, token)
    assert view.lookup("k") is None
    token = view.token()
    view.changed("k", 3)
    view.fill("k", b"new", 3, token)  # the change reported is the value read
    assert view.lookup("k") is not None


def test_a_notification_forgets_the_key_unless_it_is_the_value_known() -> None:
    view = View(clock=Clock())
    view.subscribed()
    view.fill("k", b"v", 1, view.token())
    view.changed("k", 1)  # our own write, reported back
    assert view.lookup("k") is not None
    view.changed("other")
    assert view.lookup("k") is not None
    view.changed("k")
    assert view.lookup("k") is None
    view.fill("k", b"v", 4, view.token())
    view.changed(None)  # anything may have changed
    assert view.lookup("k") is None


def test_staleness_is_bounded_by_max_age() -> None:
    clock = Clock()
    view = View(max_age=1.5, clock=clock)
    view.subscribed()
    view.fill("k", b"v", 1, view.token())
    clock.now += 1.4
    assert view.lookup("k") is not None
    clock.now += 0.1
    assert view.lookup("k") is None


def test_a_forgotten_key_counts_as_changed() -> None:
    view = View(remember=2, clock=Clock())
    view.subscribed()
    token = view.token()
    for key in ("a", "b", "c"):  # "a"'s change is forgotten: it may have been "k"'s
        view.changed(key)
    view.fill("k", b"v", 1, token)
    assert view.lookup("k") is None


# The service with a view, on a real memory store.


class CountingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, key: str) -> tuple[bytes | None, Version]:
        self.reads += 1
        return await super().get(key)


@contextlib.asynccontextmanager
async def following(backend: MemoryBackend, view: View):  # type: ignore[no-untyped-def]
    task = asyncio.create_task(backend.watch(LAYOUT.group_prefix(), view))
    await asyncio.sleep(0)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_refusal_from_the_view_reads_nothing() -> None:
    backend = CountingBackend()
    view = View()
    service = LockService(Store(backend, LAYOUT), GroupSettings(default_slots=1), view=view)
    async with following(backend, view):
        assert await service.pre_reboot("g", "a") is Outcome.GRANTED
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        reads = backend.reads
        for _ in range(5):
            assert await service.pre_reboot("g", "b") is Outcome.FULL
        assert backend.reads == reads
        assert view.hits >= 5
        # The holder's re-lock is a 200: decided on the store, whatever the view says.
        assert await service.pre_reboot("g", "a") is Outcome.ALREADY_HELD
        assert backend.reads == reads + 1


async def test_a_stale_view_never_gives_a_holder_its_slot_back() -> None:
    """The view still shows "a" holding after an operator freed it and "b" took the slot
    through another replica: a's pre-reboot must be refused (the store), not 200."""
    backend = MemoryBackend()
    view = View()
    here = LockService(Store(backend, LAYOUT), GroupSettings(default_slots=1), view=view)
    other = LockService(Store(backend, LAYOUT), GroupSettings(default_slots=1))
    view.subscribed()  # connected, but (as if every notification were lost) told nothing
    assert await here.pre_reboot("g", "a") is Outcome.GRANTED
    assert await other.force_unlock("g", "a") is Outcome.RELEASED
    assert await other.pre_reboot("g", "b") is Outcome.GRANTED
    assert await here.pre_reboot("g", "a") is Outcome.FULL
    assert await here.steady_state("g", "b") is Outcome.RELEASED  # not "not held"


async def test_a_stale_refusal_ends_at_max_age() -> None:
    backend = MemoryBackend()
    clock = Clock()
    view = View(max_age=1.0, clock=clock)
    here = LockService(Store(backend, LAYOUT), GroupSettings(default_slots=1), view=view)
    other = LockService(Store(backend, LAYOUT), GroupSettings(default_slots=1))
    view.subscribed()  # every notification lost
    assert await here.pre_reboot("g", "a") is Outcome.GRANTED
    assert await here.pre_reboot("g", "b") is Outcome.FULL
    assert await other.steady_state("g", "a") is Outcome.RELEASED
    assert await here.pre_reboot("g", "b") is Outcome.FULL  # stale, but only a refusal
    clock.now += 1.0
    assert await here.pre_reboot("g", "b") is Outcome.GRANTED


async def test_a_closed_gate_refuses_from_the_view_an_open_one_grants_on_the_store() -> None:
    """GATE_PENDING on the view asks the gates; their "closed" is a refusal the view gives,
    their "open" goes on to a grant decided on the store."""
    from lockd.gates import Gates, WebhookGate
    from lockd.policy import GroupPolicy
    from tests.receivers import Receiver

    backend = CountingBackend()
    view = View()
    groups = GroupSettings(default_slots=1, policy=GroupPolicy(gates=("hook",)))
    with Receiver(answers=[423, 423, 200], body="busy") as hook:
        gates = Gates([WebhookGate("hook", hook.url + "/may-reboot")], cache_s=0)
        service = LockService(Store(backend, LAYOUT), groups, gates=gates, view=view)
        try:
            async with following(backend, view):
                assert (await service.try_lock("g", "a")).outcome is Outcome.GATE_CLOSED
                reads = backend.reads  # the first read filled the view
                answer = await service.try_lock("g", "a")
                assert answer.outcome is Outcome.GATE_CLOSED and answer.gate is not None
                assert backend.reads == reads and view.hits == 1
                assert await service.pre_reboot("g", "a") is Outcome.GRANTED
                assert len(hook.requests()) == 3
                sem = await service.read("g")
                assert sem is not None and [h.id for h in sem.holders] == ["a"]
        finally:
            await gates.close()


async def test_refusals_from_the_view_are_decisions_like_any_other() -> None:
    backend = MemoryBackend()
    view = View()
    service = LockService(Store(backend, LAYOUT), GroupSettings(default_slots=1), view=view)
    seen: list[service_module.Decision] = []
    service.observers.append(seen.append)
    async with following(backend, view):
        await service.pre_reboot("g", "a")
        await service.pre_reboot("g", "b")
        await service.pre_reboot("g", "b")
    # The grant's own compare-and-set filled the view: both refusals come from it.
    assert [(d.outcome, d.attempts) for d in seen] == [
        (Outcome.GRANTED, 1), (Outcome.FULL, 0), (Outcome.FULL, 0)]
    assert (view.hits, view.misses) == (2, 1)


# The refusal kept with a view entry (lockd.service.verdict_keeps): every change that can
# move a non-holder's answer must reach it. Each scenario is run as is, and again with the
# cache broken in one way (below), where it must fail.


def test_verdict_keeps_only_what_time_cannot_move() -> None:
    from lockd.policy import GroupPolicy
    from lockd.windows import Schedule, Window

    plain = GroupPolicy(cooldown=60.0, gates=("hook",))
    assert verdict_keeps(Outcome.FULL, plain) and verdict_keeps(Outcome.PAUSED, plain)
    for outcome in (Outcome.OUTSIDE_WINDOW, Outcome.COOLDOWN, Outcome.GATE_CLOSED,
                    Outcome.GATE_UNREACHABLE, Outcome.GATE_PENDING, Outcome.ALREADY_HELD,
                    Outcome.GRANTED):
        assert not verdict_keeps(outcome, plain), outcome
    windowed = GroupPolicy(windows=Schedule((Window(tuple(range(7)), 0, 3600),)))
    assert not verdict_keeps(Outcome.FULL, windowed)
    assert not verdict_keeps(Outcome.FULL, GroupPolicy(expire_after=60.0))
    assert not verdict_keeps(Outcome.PAUSED, GroupPolicy(expire_after=60.0))


async def kept_then_released() -> None:
    """A release (and then a new holder) replaces the entry: the kept "full" goes."""
    backend = MemoryBackend()
    view = View()
    service = LockService(Store(backend, LAYOUT), GroupSettings(default_slots=1), view=view)
    async with following(backend, view):
        assert await service.pre_reboot("g", "a") is Outcome.GRANTED
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        assert await service.pre_reboot("c", "x") is Outcome.GRANTED  # another group
        hits = view.hits
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        assert view.hits == hits + 1  # from the view, on the kept verdict
        entry = view.lookup(LAYOUT.key("g"))
        assert entry is not None and entry.verdict == (service.policy_for("g"), Outcome.FULL)
        assert await service.steady_state("g", "a") is Outcome.RELEASED
        assert await service.pre_reboot("g", "b") is Outcome.GRANTED
        assert await service.pre_reboot("g", "a") is Outcome.FULL


async def kept_but_not_for_a_holder() -> None:
    backend = MemoryBackend()
    view = View()
    service = LockService(Store(backend, LAYOUT), GroupSettings(default_slots=1), view=view)
    async with following(backend, view):
        assert await service.pre_reboot("g", "a") is Outcome.GRANTED
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        assert await service.pre_reboot("g", "a") is Outcome.ALREADY_HELD


async def kept_until_resumed() -> None:
    backend = MemoryBackend()
    view = View()
    service = LockService(Store(backend, LAYOUT), GroupSettings(default_slots=2), view=view)
    async with following(backend, view):
        assert await service.pre_reboot("g", "a") is Outcome.GRANTED
        await service.set_paused("g", True)
        assert await service.pre_reboot("g", "b") is Outcome.PAUSED
        assert await service.pre_reboot("g", "b") is Outcome.PAUSED
        await service.set_paused("g", False)
        assert await service.pre_reboot("g", "b") is Outcome.GRANTED
        assert await service.pre_reboot("g", "c") is Outcome.FULL


async def window_closes_on_full() -> None:
    """"full" inside a window becomes "outside the window" when it closes, on one
    unchanged and trusted entry (the view's clock stands still)."""
    from lockd.policy import GroupPolicy
    from lockd.windows import Schedule, Window

    backend = MemoryBackend()
    view = View(clock=Clock())
    clock = Clock()
    clock.now = 0.0  # Thursday 00:00 UTC, in the daily window 00:00-01:00
    policy = GroupPolicy(windows=Schedule((Window(tuple(range(7)), 0, 3600),)))
    service = LockService(Store(backend, LAYOUT),
                          GroupSettings(default_slots=1, policy=policy), view=view,
                          clock=clock)
    async with following(backend, view):
        assert await service.pre_reboot("g", "a") is Outcome.GRANTED
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        clock.now = 3600.0
        hits = view.hits
        assert await service.pre_reboot("g", "b") is Outcome.OUTSIDE_WINDOW
        assert view.hits == hits + 1  # still the view's answer, decided again


async def holder_expires() -> None:
    """With expire_after, the clock alone frees a slot: "full" is decided every time."""
    from lockd.policy import GroupPolicy

    backend = MemoryBackend()
    view = View(clock=Clock())
    clock = Clock()
    policy = GroupPolicy(expire_after=60.0)
    service = LockService(Store(backend, LAYOUT),
                          GroupSettings(default_slots=1, policy=policy), view=view,
                          clock=clock)
    async with following(backend, view):
        assert await service.pre_reboot("g", "a") is Outcome.GRANTED
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        clock.now += 60.0
        assert await service.pre_reboot("g", "b") is Outcome.GRANTED


async def policy_reloaded() -> None:
    """A reload that gives the group a closed window: the verdict kept under the old policy
    is not the new one's."""
    from lockd.policy import GroupPolicy
    from lockd.windows import Schedule, Window

    backend = MemoryBackend()
    view = View(clock=Clock())
    clock = Clock()
    clock.now = 7200.0  # 02:00 UTC: outside the daily window 00:00-01:00
    service = LockService(Store(backend, LAYOUT), GroupSettings(default_slots=1), view=view,
                          clock=clock)
    async with following(backend, view):
        assert await service.pre_reboot("g", "a") is Outcome.GRANTED
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        assert await service.pre_reboot("g", "b") is Outcome.FULL
        policy = GroupPolicy(windows=Schedule((Window(tuple(range(7)), 0, 3600),)))
        service.reconfigure(GroupSettings(default_slots=1, policy=policy))
        assert await service.pre_reboot("g", "b") is Outcome.OUTSIDE_WINDOW


KEPT_SCENARIOS = [kept_then_released, kept_but_not_for_a_holder, kept_until_resumed,
                  window_closes_on_full, holder_expires, policy_reloaded]


@pytest.mark.parametrize("scenario", KEPT_SCENARIOS, ids=lambda f: f.__name__)
async def test_the_kept_verdict_follows_every_change(scenario) -> None:  # type: ignore[no-untyped-def]
    await scenario()


def _keep_across_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken: the verdict is kept per key, not per entry (it outlives a change)."""
    lookup = View.lookup
    kept: dict[str, object] = {}

    def keeping(self, key):  # type: ignore[no-untyped-def]
        entry = lookup(self, key)
        if entry is not None:
            if entry.verdict is None:
                entry.verdict = kept.get(key)
            kept[key] = entry.verdict
        return entry
    monkeypatch.setattr(View, "lookup", keeping)


def _keep_for_anyone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken: the verdict is given to holders too."""
    decide = service_module.LockService._decide_on_view

    def anyone(self, group, id, slots, now, policy, verdict):  # type: ignore[no-untyped-def]
        entry = self.view.lookup(self.layout.key(group))
        if entry is not None and entry.verdict is not None and entry.verdict[0] is policy:
            return entry.decoded, entry.verdict[1]
        return decide(self, group, id, slots, now, policy, verdict)
    monkeypatch.setattr(service_module.LockService, "_decide_on_view", anyone)


def _keep_whatever_time_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken: every refusal is kept, whatever the policy."""
    monkeypatch.setattr(service_module, "verdict_keeps",
                        lambda outcome, policy: view_may_refuse(outcome))


def _keep_under_any_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken: the verdict is given under a policy other than its own."""
    decide = service_module.LockService._decide_on_view

    def any_policy(self, group, id, slots, now, policy, verdict):  # type: ignore[no-untyped-def]
        entry = self.view._entries.get(self.layout.key(group))
        if entry is not None and entry.verdict is not None:
            entry.verdict = (policy, entry.verdict[1])
        return decide(self, group, id, slots, now, policy, verdict)
    monkeypatch.setattr(service_module.LockService, "_decide_on_view", any_policy)


@pytest.mark.parametrize(("break_it", "scenario"), [
    (_keep_across_fills, kept_then_released),
    (_keep_across_fills, kept_until_resumed),
    (_keep_for_anyone, kept_but_not_for_a_holder),
    (_keep_whatever_time_says, window_closes_on_full),
    (_keep_whatever_time_says, holder_expires),
    (_keep_under_any_policy, policy_reloaded),
], ids=lambda f: f.__name__)
async def test_the_kept_verdict_scenarios_catch_a_broken_cache(  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch, break_it, scenario,
) -> None:
    break_it(monkeypatch)
    with pytest.raises(AssertionError):
        await scenario()


# The model: several processes, views that lag, drop and reorder notifications.


class Lagging:
    """A ChangeSink between the store's feed and a view that holds notifications back
    until the test delivers (in any order) or drops them."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.held: list[tuple[str | None, Version]] = []

    def subscribed(self) -> None:
        self.held.clear()
        self.view.subscribed()

    def changed(self, key: str | None, version: Version = None) -> None:
        self.held.append((key, version))


NODES = ("a", "b", "c")
PROCESSES = 3


class LaggingViews(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.backend = MemoryBackend()
        self.clock = Clock()
        self.views: list[View] = []
        self.sinks: list[Lagging] = []
        self.services: list[LockService] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.holders: set[str] = set()
        self.slots = 1

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @initialize(slots=st.integers(1, 2))
    def start(self, slots: int) -> None:
        self.slots = slots
        for _ in range(PROCESSES):
            view = View(max_age=1.0, clock=self.clock)
            sink = Lagging(view)
            service = LockService(Store(self.backend, LAYOUT),
                                  GroupSettings(default_slots=slots), view=view)
            self.views.append(view)
            self.sinks.append(sink)
            self.services.append(service)
            self.tasks.append(self.loop.create_task(
                self.backend.watch(LAYOUT.group_prefix(), sink)))
        self.run(asyncio.sleep(0))

    def stored(self) -> semaphore.Semaphore:
        raw, _ = self.run(self.backend.get(LAYOUT.key("g")))
        return semaphore.Semaphore.new(self.slots) if raw is None else LAYOUT.decode(raw)

    @rule(p=st.integers(0, PROCESSES - 1), node=st.sampled_from(NODES))
    def pre_reboot(self, p: int, node: str) -> None:
        before = self.stored()
        outcome = self.run(self.services[p].pre_reboot("g", node))
        if outcome.ok:
            # A 200 only where the store, at this moment, gives one.
            _, expected = semaphore.lock(before, node, 0.0)
            assert outcome is expected, (outcome, expected)
            self.holders.add(node)

    @rule(asks=st.lists(st.tuples(st.integers(0, PROCESSES - 1), st.sampled_from(NODES)),
                        min_size=2, max_size=4))
    def at_once(self, asks: list[tuple[int, str]]) -> None:
        """Pre-reboots in flight together, on several processes (their round trips and
        view answers interleave on the loop)."""
        async def together() -> list[Outcome]:
            return await asyncio.gather(
                *(self.services[p].pre_reboot("g", node) for p, node in asks))

        outcomes = self.run(together())
        after = {h.id for h in self.stored().holders}
        for (_, node), outcome in zip(asks, outcomes, strict=True):
            if outcome.ok:
                assert node in after, (node, outcome)
                self.holders.add(node)

    @rule(p=st.integers(0, PROCESSES - 1), node=st.sampled_from(NODES))
    def steady_state(self, p: int, node: str) -> None:
        before = self.stored()
        outcome = self.run(self.services[p].steady_state("g", node))
        _, expected = semaphore.unlock(before, node)
        assert outcome is expected, (outcome, expected)
        self.holders.discard(node)

    @rule(p=st.integers(0, PROCESSES - 1), node=st.sampled_from(NODES))
    def force_unlock(self, p: int, node: str) -> None:
        self.run(self.services[p].force_unlock("g", node))
        self.holders.discard(node)

    @rule(p=st.integers(0, PROCESSES - 1), data=st.data())
    def deliver(self, p: int, data: st.DataObject) -> None:
        sink = self.sinks[p]
        if sink.held:
            i = data.draw(st.integers(0, len(sink.held) - 1))  # any order
            sink.view.changed(*sink.held.pop(i))

    @rule(p=st.integers(0, PROCESSES - 1), data=st.data())
    def drop(self, p: int, data: st.DataObject) -> None:
        sink = self.sinks[p]
        if sink.held:
            sink.held.pop(data.draw(st.integers(0, len(sink.held) - 1)))

    @rule(p=st.integers(0, PROCESSES - 1))
    def reconnect(self, p: int) -> None:
        self.views[p].lost()
        self.sinks[p].subscribed()

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def no_holder_is_lost(self) -> None:
        if self.services:
            stored = self.stored()
            assert {h.id for h in stored.holders} == self.holders
            assert len(stored.holders) <= self.slots

    def teardown(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.run(asyncio.sleep(0))
        self.loop.close()


TestLaggingViews = LaggingViews.TestCase
TestLaggingViews.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_model_catches_a_view_that_may_answer_200(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model test can fail: with a rule that lets the view give any answer, it finds
    a 200 the store would not give, or a holder lost."""
    monkeypatch.setattr(service_module, "view_may_refuse", lambda outcome: True)
    machine = type("Broken", (LaggingViews,), {})
    case = machine.TestCase
    case.settings = settings(max_examples=200, stateful_step_count=40, deadline=None,
                             suppress_health_check=list(HealthCheck), database=None,
                             phases=[Phase.generate])  # no shrinking: found is enough
    with pytest.raises(AssertionError):
        case().runTest()
