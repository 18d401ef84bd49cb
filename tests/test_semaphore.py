"""The pure semaphore model: unit cases, then a model-based test against a reference."""

from __future__ import annotations

import asyncio

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lockd import semaphore
from lockd.groups import GroupSettings
from lockd.semaphore import Holder, Outcome, Semaphore
from lockd.service import LockService
from lockd.store import open_store


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


class Reference:
    """The semaphore as a person would describe it: a set of holders and a number."""

    def __init__(self, slots: int) -> None:
        self.slots, self.config_slots = slots, slots
        self.holders: list[str] = []
        self.paused = False

    def lock(self, id_: str) -> Outcome:
        if id_ in self.holders:
            return Outcome.ALREADY_HELD
        if self.paused:
            return Outcome.PAUSED
        if len(self.holders) >= self.slots:
            return Outcome.FULL
        self.holders.append(id_)
        return Outcome.GRANTED

    def unlock(self, id_: str) -> Outcome:
        if id_ not in self.holders:
            return Outcome.NOT_HELD
        self.holders.remove(id_)
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
        self.service = LockService(self.store, GroupSettings(default_slots=1))
        self.clock = 0.0
        self.service.clock = lambda: self.clock
        self.ref: dict[str, Reference] = {}

    def teardown(self) -> None:
        self.loop.run_until_complete(self.backend.close())
        self.loop.close()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def configured(self, group: str) -> int:
        return self.config.get(group, self.default)

    def reference(self, group: str) -> Reference:
        if group not in self.ref:
            self.ref[group] = Reference(self.configured(group))
        ref = self.ref[group]
        if ref.config_slots != self.configured(group):  # a configuration change applies once
            ref.slots = ref.config_slots = self.configured(group)
        return ref

    @rule(group=GROUPS, id_=IDS)
    def lock(self, group: str, id_: str) -> None:
        self.clock += 1
        expected = self.reference(group).lock(id_)
        assert self.run(self.service.pre_reboot(group, id_)) is expected
        if expected is Outcome.GRANTED:
            sem = self.run(self.service.read(group))
            assert sem is not None and len(sem.holders) <= sem.slots, "granted beyond slots"

    @rule(group=GROUPS, id_=IDS)
    def unlock(self, group: str, id_: str) -> None:
        expected = self.reference(group).unlock(id_)
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
        self.service.reconfigure(GroupSettings(default_slots=self.default, slots=self.config))
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


def test_model_on_sqlite(tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    """The same machine over the durable default, with a fresh file per example."""

    class Machine(SemaphoreMachine):
        def __init__(self) -> None:
            type(self).backend_url = f"sqlite://{tmp_path_factory.mktemp('m') / 'lockd.db'}"
            super().__init__()

    Machine.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
    Machine.TestCase().runTest()
