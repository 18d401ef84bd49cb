"""The pure semaphore model: unit cases, then a model-based test against a reference."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lockd import semaphore
from lockd.groups import GroupSettings
from lockd.policy import GroupPolicy
from lockd.policystate import PolicyState
from lockd.semaphore import Holder, Outcome, Semaphore, lock, unlock
from lockd.service import LockService
from lockd.store import open_store
from lockd.windows import parse_schedule


def test_lock_is_recursive_and_counts_slots() -> None:
    s = Semaphore.new(2)
    s, o = semaphore.lock(s, "a", 10.0)
    assert o is Outcome.GRANTED and s.holders == (Holder("a", 10.0, 1),)
    again, o = semaphore.lock(s, "a", 20.0)
    assert o is Outcome.ALREADY_HELD and again is s  # nothing new, not even the time
    s, o = semaphore.lock(s, "b", 30.0)
    assert o is Outcome.GRANTED and s.available == 0
    full, o = semaphore.lock(s, "c", 40.0)
    assert o is Outcome.FULL and full is s


def test_unlock_if_held() -> None:
    s, _ = semaphore.lock(Semaphore.new(1), "a", 1.0)
    same, o = semaphore.unlock(s, "b")
    assert o is Outcome.NOT_HELD and same is s
    s, o = semaphore.unlock(s, "a")
    assert o is Outcome.RELEASED and s.holders == () and s.available == 1


def test_grant_ids_are_monotonic_across_releases() -> None:
    s = Semaphore.new(1)
    ids = []
    for node in ("a", "b", "c"):
        s, _ = semaphore.lock(s, node, 0.0)
        ids.append(s.holder(node).grant_id)  # type: ignore[union-attr]
        s, _ = semaphore.unlock(s, node)
    assert ids == [1, 2, 3]


def test_ids_are_case_sensitive() -> None:
    s, _ = semaphore.lock(Semaphore.new(2), "Node", 0.0)
    s, o = semaphore.lock(s, "node", 0.0)
    assert o is Outcome.GRANTED and len(s.holders) == 2


def test_lowering_slots_evicts_nobody_but_refuses_grants() -> None:
    s = Semaphore.new(3)
    for node in "abc":
        s, _ = semaphore.lock(s, node, 0.0)
    s, o = semaphore.set_slots(s, 1)
    assert o is Outcome.CHANGED and len(s.holders) == 3 and s.available == 0
    s, _ = semaphore.unlock(s, "a")
    s, _ = semaphore.unlock(s, "b")
    _, o = semaphore.lock(s, "d", 0.0)
    assert o is Outcome.FULL  # c still holds the one slot


def test_apply_config_once_per_change() -> None:
    s = Semaphore.new(1)
    s, _ = semaphore.set_slots(s, 5)  # an operator's set-max
    assert semaphore.apply_config(s, 1) is s  # same configuration: set-max stands
    s = semaphore.apply_config(s, 2)  # configuration changed: it wins
    assert (s.slots, s.config_slots) == (2, 2)


def test_pause_refuses_new_grants_only() -> None:
    s, _ = semaphore.lock(Semaphore.new(2), "a", 0.0)
    s, _ = semaphore.set_paused(s, True)
    assert semaphore.lock(s, "a", 1.0)[1] is Outcome.ALREADY_HELD
    assert semaphore.lock(s, "b", 1.0)[1] is Outcome.PAUSED
    assert semaphore.unlock(s, "a")[1] is Outcome.RELEASED
    s, _ = semaphore.set_paused(s, False)
    assert semaphore.lock(s, "b", 1.0)[1] is Outcome.GRANTED


def test_foreign_counter_limits_and_moves() -> None:
    # locksmith's free counter: kept exactly, and never grants beyond it.
    s = Semaphore(slots=2, free_counter=0)
    assert semaphore.lock(s, "a", 0.0)[1] is Outcome.FULL
    s = Semaphore(slots=2, free_counter=2)
    s, _ = semaphore.lock(s, "a", 0.0)
    assert s.free_counter == 1
    s, _ = semaphore.set_slots(s, 4)
    assert s.free_counter == 3
    s, _ = semaphore.unlock(s, "a")
    assert s.free_counter == 4


IDS = st.sampled_from(["a", "b", "c", "d", "e", "f", "E", "0b1e3a7c"])
GROUPS = st.sampled_from(["default", "workers", "db"])
SLOTS = st.integers(min_value=1, max_value=4)


@dataclass(frozen=True)
class RefPolicy:
    """A reboot policy as a person states it: reboots between 06:00 and 18:00 UTC, a freed
    slot rests ``cooldown`` seconds, a holder is let go after ``expire_after`` seconds, the
    last ``history`` reboots are kept."""

    cooldown: float = 30.0
    expire_after: float = 300.0
    history: int = 5

    def window_open(self, now: float) -> bool:
        return 6 <= datetime.fromtimestamp(now, UTC).hour < 18


class Reference:
    """The semaphore as a person would describe it: a set of holders and a number (and,
    with a policy, when each holder came, when slots were freed, and what happened)."""

    def __init__(self, slots: int, policy: RefPolicy | None = None) -> None:
        self.slots, self.config_slots = slots, slots
        self.holders: list[str] = []
        self.paused = False
        self.policy = policy
        self.since: dict[str, float] = {}
        self.freed: list[float] = []
        self.history: list[tuple[str, str]] = []

    def expire(self, now: float) -> None:
        if self.policy is None:
            return
        for id_ in list(self.holders):
            if now - self.since[id_] >= self.policy.expire_after:
                self.release(id_, now, "expiry")

    def release(self, id_: str, now: float, how: str) -> None:
        self.holders.remove(id_)
        self.freed.append(now)
        self.history.append((id_, how))

    def lock(self, id_: str, now: float = 0.0) -> Outcome:
        self.expire(now)
        if id_ in self.holders:
            return Outcome.ALREADY_HELD
        if self.paused:
            return Outcome.PAUSED
        if self.policy is not None and not self.policy.window_open(now):
            return Outcome.OUTSIDE_WINDOW
        free = self.slots - len(self.holders)
        if free <= 0:
            return Outcome.FULL
        if self.policy is not None:
            resting = sum(1 for t in self.freed if now - t < self.policy.cooldown)
            if free - resting <= 0:
                return Outcome.COOLDOWN
        self.holders.append(id_)
        self.since[id_] = now
        return Outcome.GRANTED

    def unlock(self, id_: str, now: float = 0.0, how: str = "release") -> Outcome:
        self.expire(now)
        if id_ not in self.holders:
            return Outcome.NOT_HELD
        self.release(id_, now, how)
        return Outcome.RELEASED


class SemaphoreMachine(RuleBasedStateMachine):
    """Random lock/unlock/set-slots/pause/reconfigure sequences through the real service.

    Runs the pure model behind LockService over a backend, so the CAS loop, the layout's
    encoding and the application of configuration are exercised on every step.
    """

    backend_url = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = open_store(self.backend_url)
        self.backend = self.store.backend
        self.loop.run_until_complete(self.backend.open())
        self.config: dict[str, int] = {}
        self.default = 1
        self.service = LockService(self.store, self.group_settings())
        self.clock = self.start
        self.service.clock = lambda: self.clock
        self.ref: dict[str, Reference] = {}

    def teardown(self) -> None:
        self.loop.run_until_complete(self.backend.close())
        self.loop.close()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    #: The reboot policy every group has (none here; see PolicyMachine).
    policy: GroupPolicy = GroupPolicy()
    ref_policy: RefPolicy | None = None
    start = 0.0

    def group_settings(self) -> GroupSettings:
        return GroupSettings(default_slots=self.default, slots=dict(self.config),
                             policy=self.policy)

    def configured(self, group: str) -> int:
        return self.config.get(group, self.default)

    def reference(self, group: str) -> Reference:
        if group not in self.ref:
            self.ref[group] = Reference(self.configured(group), self.ref_policy)
        ref = self.ref[group]
        if ref.config_slots != self.configured(group):  # a configuration change applies once
            ref.slots = ref.config_slots = self.configured(group)
        return ref

    @rule(group=GROUPS, id_=IDS)
    def lock(self, group: str, id_: str) -> None:
        self.clock += 1
        expected = self.reference(group).lock(id_, self.clock)
        assert self.run(self.service.pre_reboot(group, id_)) is expected
        if expected is Outcome.GRANTED:
            sem = self.run(self.service.read(group))
            assert sem is not None and len(sem.holders) <= sem.slots, "granted beyond slots"

    @rule(group=GROUPS, id_=IDS)
    def unlock(self, group: str, id_: str) -> None:
        expected = self.reference(group).unlock(id_, self.clock)
        assert self.run(self.service.steady_state(group, id_)) is expected

    @rule(group=GROUPS, slots=SLOTS)
    def set_slots(self, group: str, slots: int) -> None:
        self.reference(group).slots = slots
        assert self.run(self.service.set_slots(group, slots)).slots == slots

    @rule(group=GROUPS, paused=st.booleans())
    def pause(self, group: str, paused: bool) -> None:
        self.reference(group).paused = paused
        self.run(self.service.set_paused(group, paused))

    @rule(group=GROUPS, slots=SLOTS)
    def reconfigure(self, group: str, slots: int) -> None:
        self.config[group] = slots
        self.service.reconfigure(self.group_settings())
        self.run(self.service.apply_configuration())  # what start-up and SIGHUP do

    @precondition(lambda self: self.ref)
    @invariant()
    def agrees_with_reference(self) -> None:
        for group in self.ref:
            ref = self.reference(group)
            sem = self.run(self.service.read(group))
            holders = [] if sem is None else [h.id for h in sem.holders]
            assert holders == ref.holders
            if sem is not None:
                assert sem.slots == ref.slots and sem.paused == ref.paused
                ids = [h.grant_id for h in sem.holders]
                assert ids == sorted(ids) and len(set(ids)) == len(ids)
                assert all(h.grant_id < sem.next_grant_id for h in sem.holders)


TestSemaphoreModel = SemaphoreMachine.TestCase
TestSemaphoreModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


class PolicyMachine(SemaphoreMachine):
    """The same sequences under a reboot policy, with time passing, sweeps and operators'
    force-unlocks: windows, cooldown, expiry and history against the reference's plain
    description of them."""

    ref_policy = RefPolicy()
    policy = GroupPolicy(
        windows=parse_schedule("06:00 12h"), cooldown=30.0, expire_after=300.0, history=5
    )
    start = 5 * 3600.0  # an hour before the window opens

    @rule(seconds=st.sampled_from([1, 10, 29, 30, 31, 120, 299, 300, 3600, 6 * 3600]))
    def tick(self, seconds: int) -> None:
        self.clock += seconds

    @rule()
    def sweep(self) -> None:
        for ref in self.ref.values():
            ref.expire(self.clock)
        self.run(self.service.sweep())

    @rule(group=GROUPS, id_=IDS)
    def force_unlock(self, group: str, id_: str) -> None:
        expected = self.reference(group).unlock(id_, self.clock, "operator")
        assert self.run(self.service.force_unlock(group, id_)) is expected

    @precondition(lambda self: self.ref)
    @invariant()
    def history_agrees(self) -> None:
        for group, ref in self.ref.items():
            sem = self.run(self.service.read(group))
            reboots = [] if sem is None else [(r.id, r.ended) for r in sem.policy.reboots]
            assert reboots == ref.history[-5:]


TestPolicyModel = PolicyMachine.TestCase
TestPolicyModel.settings = settings(max_examples=120, stateful_step_count=50, deadline=None)


def test_model_on_sqlite(tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    """The same machine over the durable default, with a fresh file per example."""

    class Machine(SemaphoreMachine):
        def __init__(self) -> None:
            type(self).backend_url = f"sqlite://{tmp_path_factory.mktemp('m') / 'lockd.db'}"
            super().__init__()

    Machine.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
    Machine.TestCase().runTest()


def test_grants_and_releases_keep_every_other_field() -> None:
    """with_holders passes every field by hand (it is cheaper than dataclasses.replace): a
    field added to Semaphore must be added there too, or grants would drop it."""
    assert [f.name for f in fields(Semaphore)] == [
        "slots", "holders", "next_grant_id", "config_slots", "paused", "free_counter",
        "policy", "touched",
    ], "a new Semaphore field: pass it on in semaphore.with_holders, then update this list"
    sem = Semaphore(slots=3, holders=(Holder("a", 1.0, 4),), next_grant_id=5, config_slots=2,
                    paused=False, free_counter=2, policy=PolicyState(releases=(1.0,)),
                    touched=9.0)
    granted, outcome = lock(sem, "b", 10.0)
    assert outcome is Outcome.GRANTED
    assert granted == replace(sem, holders=(*sem.holders, Holder("b", 10.0, 5)),
                              next_grant_id=6, free_counter=1)
    released, outcome = unlock(granted, "a")
    assert outcome is Outcome.RELEASED
    assert released == replace(granted, holders=(Holder("b", 10.0, 5),), free_counter=2)


def test_the_native_layout_knows_every_policy_field() -> None:
    """NativeLayout.encode tells an empty policy state by its fields, not by building
    PolicyState() to compare: a new field must be added there (and to the encoding)."""
    assert [f.name for f in fields(PolicyState)] == ["releases", "reboots", "stale_reported"], (
        "a new PolicyState field: test it in NativeLayout.encode and encode it, then update"
        " this list"
    )
