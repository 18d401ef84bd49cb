"""The linearizability checker (bench/linearizability.py) on hand-made and generated histories.

A checker that passes everything is worse than none, so each kind of violation has a test
that must fail, and generated histories are compared with a brute-force search over every
order (tiny histories) and with the truth of a simulated run (larger ones).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bench.linearizability import (
    HistoryRecorder,
    Kind,
    Operation,
    Result,
    check,
    check_durability,
    check_group,
    history_from_json,
    history_to_json,
    result_from_status,
)

INF = float("inf")


def op(kind: Kind, node: str, invoke: float, complete: float | None, result: Result = "ok",
       *, group: str = "g", process: str = "", slots: int | None = None,
       observed: Iterable[str] | None = None) -> Operation:
    seen = None if observed is None else frozenset(observed)
    return Operation(process or node, group, kind, node, invoke, complete, result, slots, seen)


def lock(node: str, i: float, c: float | None, r: Result = "ok", **kw: object) -> Operation:
    return op("lock", node, i, c, r, **kw)  # type: ignore[arg-type]


def unlock(node: str, i: float, c: float | None, r: Result = "ok", **kw: object) -> Operation:
    return op("unlock", node, i, c, r, **kw)  # type: ignore[arg-type]


def verdict(history: Sequence[Operation], slots: int = 1, **kw: object) -> str:
    return check(history, slots, **kw).verdict  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Hand-made histories


def test_sequential_history_is_linearizable_and_the_witness_is_in_order() -> None:
    h = [lock("a", 0, 1), unlock("a", 2, 3), lock("b", 4, 5), lock("b", 6, 7)]
    result = check(h, 1)
    assert result.ok and result.verdict == "linearizable"
    assert result.groups["g"].linearization == tuple(h)
    assert result.groups["g"].holders == {"b"}


def test_two_overlapping_grants_of_one_slot_are_a_violation() -> None:
    h = [lock("a", 0, 2), lock("b", 1, 3)]
    result = check(h, 1)
    assert not result.ok and result.verdict == "violation"
    g = result.groups["g"]
    # The explanation: one grant fits, the other cannot be placed after it.
    assert len(g.linearization) == 1 and g.blocked is not None
    assert {g.linearization[0], g.blocked} == set(h)
    assert "cannot be placed next" in result.explain()


def test_two_overlapping_grants_fit_two_slots() -> None:
    assert verdict([lock("a", 0, 2), lock("b", 1, 3)], slots=2) == "linearizable"


def test_grant_release_grant_chain() -> None:
    h = [lock("a", 0, 1), unlock("a", 2, 3), lock("b", 4, 5), unlock("b", 6, 7),
         lock("a", 8, 9)]
    assert verdict(h) == "linearizable"


def test_release_overlapping_the_next_grant_may_come_first() -> None:
    # b's grant overlaps a's release: the release may have taken effect first.
    assert verdict([lock("a", 0, 1), unlock("a", 2, 4), lock("b", 3, 5)]) == "linearizable"


def test_grant_before_the_release_was_even_sent_is_a_violation() -> None:
    assert verdict([lock("a", 0, 1), lock("b", 2, 3), unlock("a", 4, 5)]) == "violation"


def test_recursive_relock_takes_no_new_slot() -> None:
    h = [lock("a", 0, 1), lock("a", 2, 3), lock("a", 2.5, 3.5), unlock("a", 4, 5),
         lock("b", 6, 7)]
    assert verdict(h) == "linearizable"


def test_one_unlock_releases_a_recursive_holder_entirely() -> None:
    h = [lock("a", 0, 1), lock("a", 2, 3), unlock("a", 4, 5), lock("b", 6, 7)]
    assert verdict(h) == "linearizable"


def test_unknown_unlock_may_explain_a_second_grant() -> None:
    lost = unlock("a", 2, None, "unknown")
    assert verdict([lock("a", 0, 1), lost, lock("b", 3, 4)]) == "linearizable"
    assert verdict([lock("a", 0, 1), lock("b", 3, 4)]) == "violation"


def test_unknown_unlock_may_take_effect_after_the_client_gave_up() -> None:
    # Its recorded completion (a timeout at 2.5) does not bound when it takes effect.
    timed_out = unlock("a", 2, 2.5, "unknown")
    assert verdict([lock("a", 0, 1), timed_out, lock("b", 3, 4)]) == "linearizable"


def test_unknown_unlock_cannot_act_before_it_was_sent() -> None:
    h = [lock("a", 0, 1), lock("b", 3, 4), unlock("a", 5, None, "unknown")]
    assert verdict(h) == "violation"


def test_unknown_lock_may_never_have_happened() -> None:
    assert verdict([lock("a", 0, None, "unknown"), lock("b", 1, 2)]) == "linearizable"


def test_unknown_lock_may_have_happened() -> None:
    # Only a grant to a explains the refusal of b (when refusals are checked).
    h = [lock("a", 0, 1, "unknown"), lock("b", 2, 3, "refused")]
    assert verdict(h, strict_refusals=True) == "linearizable"
    assert verdict(h[1:], strict_refusals=True) == "violation"


def test_unknown_lock_that_happened_still_holds_its_slot() -> None:
    # a's unknown grant explains the refusal, so it happened before 3, so b cannot be
    # granted at 4 with a never released.
    h = [lock("a", 0, 1, "unknown"), lock("c", 2, 3, "refused"), lock("b", 4, 5)]
    assert verdict(h, strict_refusals=True) == "violation"
    assert verdict(h, strict_refusals=False) == "linearizable"


def test_refusal_while_a_slot_was_free_is_only_a_violation_when_strict() -> None:
    h = [lock("a", 0, 1, "refused")]
    assert verdict(h) == "linearizable"  # lockd may refuse on a recent view
    assert verdict(h, strict_refusals=True) == "violation"
    full = [lock("b", 0, 1), lock("a", 2, 3, "refused")]
    assert verdict(full, strict_refusals=True) == "linearizable"


def test_refusal_of_a_holder_is_a_violation_when_strict() -> None:
    h = [lock("a", 0, 1), lock("b", 1.5, 1.6), lock("a", 2, 3, "refused")]
    assert verdict(h, slots=2, strict_refusals=True) == "violation"


def test_force_unlock_releases_like_unlock() -> None:
    h = [lock("a", 0, 1), op("force_unlock", "a", 2, 3), lock("b", 4, 5)]
    assert verdict(h) == "linearizable"


def test_set_slots_allows_more_grants_only_after_it() -> None:
    more = op("set_slots", "", 2, 3, slots=2, process="admin")
    assert verdict([lock("a", 0, 1), more, lock("b", 4, 5)]) == "linearizable"
    assert verdict([lock("a", 0, 1), lock("b", 1.5, 1.9), more]) == "violation"


def test_fewer_slots_keep_existing_holders_but_grant_nobody_new() -> None:
    fewer = op("set_slots", "", 2, 3, slots=1, process="admin")
    h = [lock("a", 0, 1), lock("b", 0, 1), fewer, lock("a", 4, 5)]
    assert verdict(h, slots=2) == "linearizable"  # a holder's re-lock still succeeds
    h2 = [lock("a", 0, 1), lock("b", 0, 1), fewer, unlock("a", 4, 5), lock("c", 6, 7)]
    assert verdict(h2, slots=2) == "violation"  # b alone fills the one slot


def test_read_must_see_the_exact_holders() -> None:
    read = op("read", "", 2, 3, observed={"a"}, process="admin")
    assert verdict([lock("a", 0, 1), read]) == "linearizable"
    wrong = replace(read, observed=frozenset({"a", "b"}))
    assert verdict([lock("a", 0, 1), wrong], slots=2) == "violation"
    forgot = replace(read, observed=frozenset())
    assert verdict([lock("a", 0, 1), forgot]) == "violation"


def test_groups_are_independent_objects() -> None:
    h = [lock("a", 0, 2, group="x"), lock("b", 1, 3, group="x"),
         lock("a", 0, 2, group="y"), lock("b", 1, 3, group="y")]
    result = check(h, {"x": 1, "y": 2})
    assert result.groups["x"].verdict == "violation"
    assert result.groups["y"].verdict == "linearizable"
    assert [v.group for v in result.failures()] == ["x"]
    # Same ids in another group hold nothing here.
    assert verdict([lock("a", 0, 1, group="x"), lock("b", 2, 3, group="y")]) == "linearizable"


def test_slot_counts_must_cover_every_group() -> None:
    with pytest.raises(ValueError, match="no slot count"):
        check([lock("a", 0, 1, group="x")], {"y": 1})


def test_initial_holders_occupy_slots() -> None:
    h = [lock("b", 0, 1)]
    assert check(h, 1, initial_holders={"g": ["a"]}).verdict == "violation"
    assert check(h, 2, initial_holders={"g": ["a"]}).verdict == "linearizable"


def test_budget_exhausted_is_undecided_not_a_verdict() -> None:
    h = [lock(f"n{i}", 0, 10) for i in range(6)] + [unlock(f"n{i}", 11, 12) for i in range(6)]
    result = check(h, 3, max_steps=5)
    assert result.verdict == "undecided" and not result.ok
    assert check(h, 3).verdict == "violation"


def test_unlock_of_a_non_holder_may_still_release_a_concurrent_grant() -> None:
    # The unlock is a no-op when it is sent, but a's concurrent grant may act first and
    # then the unlock releases it, making room for b. (A search that placed the no-op
    # unlock "for good" at once would wrongly call this a violation.)
    h = [unlock("a", 0, 3), lock("a", 1, 2), lock("b", 4, 5)]
    assert verdict(h) == "linearizable"


def test_horizon_bounds_when_an_unknown_op_may_act() -> None:
    # a's timed-out unlock, then a locks again and b is granted. Unbounded, the stale unlock
    # may act at 7 and release a's second hold; within a 1 s horizon it acted by 3, before
    # a's second grant, so a still holds when b is granted.
    h = [lock("a", 0, 1), unlock("a", 2, None, "unknown"), lock("a", 5, 6), lock("b", 10, 11)]
    assert verdict(h) == "linearizable"
    assert verdict(h, unknown_horizon=8.0) == "linearizable"
    assert verdict(h, unknown_horizon=1.0) == "violation"


def test_horizon_an_unknown_op_may_be_needed_before_a_read() -> None:
    # The unknown set_slots must act at 0 (its horizon), before the read that is certainly
    # later; placing the read first "for good" would push the clock past that deadline.
    more = op("set_slots", "", 0, None, "unknown", slots=1, process="admin")
    read = op("read", "", 5, 9, observed=(), process="admin")
    h = [more, read, lock("c", 7, 8)]
    assert check(h, 0, unknown_horizon=0.0).verdict == "linearizable"


def test_answered_operations_need_a_completion() -> None:
    with pytest.raises(ValueError):
        lock("a", 1, None, "ok")
    with pytest.raises(ValueError):
        lock("a", 2, 1, "ok")
    with pytest.raises(ValueError):
        op("set_slots", "", 0, 1)


def test_many_retried_unknown_unlocks_stay_cheap() -> None:
    # A node retrying steady-state through a long outage: identical unknown ops, then 200.
    h = [lock("a", 0, 1)]
    h += [unlock("a", 2 + i, None, "unknown") for i in range(200)]
    h += [unlock("a", 300, 301), lock("b", 302, 303)]
    h += [lock(f"c{i}", 304 + i, 304.5 + i, "refused") for i in range(100)]
    g = check_group(h, 1, strict_refusals=True)
    assert g.verdict == "linearizable" and g.steps < 10_000


# --------------------------------------------------------------------------------------------
# Durability


def test_unreleased_grant_missing_at_the_end_is_lost() -> None:
    h = [lock("a", 0, 1), lock("b", 2, 3), unlock("b", 4, 5)]
    assert check_durability(h, {"g": {"a"}}).ok
    lost = check_durability(h, {"g": set()})
    assert not lost.ok and [o.node for o in lost.lost] == ["a"]
    assert "lost grant: g/a" in lost.explain()


def test_a_possible_release_excuses_a_missing_grant() -> None:
    assert check_durability([lock("a", 0, 2), unlock("a", 1, 3)], {"g": []}).ok  # concurrent
    assert check_durability([lock("a", 0, 1), unlock("a", 2, None, "unknown")], {"g": []}).ok
    assert check_durability([lock("a", 0, 1), op("force_unlock", "a", 2, 3)], {"g": []}).ok


def test_a_release_that_cannot_follow_the_grant_excuses_nothing() -> None:
    before = [unlock("a", 0, 1), lock("a", 2, 3)]
    assert not check_durability(before, {"g": []}).ok
    refused = [lock("a", 0, 1), unlock("a", 2, 3, "refused")]
    assert not check_durability(refused, {"g": []}).ok
    other_group = [lock("a", 0, 1), unlock("a", 2, 3, group="h")]
    assert not check_durability(other_group, {"g": [], "h": []}).ok


def test_durability_needs_every_granted_group() -> None:
    with pytest.raises(ValueError, match="no final holders"):
        check_durability([lock("a", 0, 1)], {})


# --------------------------------------------------------------------------------------------
# Recording and saving


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def test_recorder_stamps_invoke_and_complete() -> None:
    rec = HistoryRecorder(clock=FakeClock())
    a = rec.invoke("lock", "g", "a", process="p1")
    b = rec.invoke("lock", "g", "b", process="p2")
    rec.complete(a, "ok")
    rec.complete_status(b, 423)
    never = rec.invoke("unlock", "g", "a")
    ops = rec.history()
    assert [(o.invoke, o.complete, o.result) for o in ops] == [
        (1.0, 3.0, "ok"), (2.0, 4.0, "refused"), (5.0, None, "unknown")]
    assert check(ops, 1).ok
    with pytest.raises(ValueError, match="twice"):
        rec.complete(a, "ok")
    rec.complete(never, "ok")
    assert rec.history()[2].result == "ok"


@pytest.mark.parametrize(("status", "result"), [
    (200, "ok"), (423, "refused"), (429, "refused"), (400, "refused"), (408, "unknown"),
    (503, "unknown"), (500, "unknown"), (None, "unknown"),
])
def test_status_to_result(status: int | None, result: Result) -> None:
    assert result_from_status(status) == result


async def test_recorder_from_asyncio_tasks() -> None:
    rec = HistoryRecorder()

    async def client(node: str, status: int | None) -> None:
        with rec.recording("lock", "g", node, process=node) as out:
            await asyncio.sleep(0.001)
            if status is None:
                raise ConnectionResetError  # a failure inside the block records unknown
            out.status = status

    results = await asyncio.gather(client("a", 200), client("b", 423), client("c", None),
                                   return_exceptions=True)
    assert isinstance(results[2], ConnectionResetError)
    ops = {o.node: o for o in rec.history()}
    assert (ops["a"].result, ops["b"].result, ops["c"].result) == ("ok", "refused", "unknown")
    assert all(o.complete is not None and o.complete >= o.invoke for o in ops.values())
    assert check(list(ops.values()), 1).ok


def test_recorded_read_keeps_what_it_observed() -> None:
    rec = HistoryRecorder(clock=FakeClock())
    with rec.recording("read", "g", process="admin") as out:
        out.result, out.observed = "ok", ["a"]
    (read,) = rec.history()
    assert read.observed == {"a"}


def test_history_round_trips_through_json() -> None:
    h = [lock("a", 0, 1), unlock("a", 2, None, "unknown"),
         op("set_slots", "", 3, 4, slots=2), op("read", "", 5, 6, observed={"a", "b"})]
    assert history_from_json(history_to_json(h)) == h


# --------------------------------------------------------------------------------------------
# Generated histories: against brute force, and against the truth of a simulated run


def _legal(order: Sequence[Operation], slots: int, strict: bool) -> bool:
    """Replay ``order`` through the specification; unknown ops may have any result."""
    holders: set[str] = set()
    for o in order:
        if o.result == "refused" and not (strict and o.kind == "lock"):
            continue
        if o.kind == "lock":
            granted = o.node in holders or len(holders) < slots
            if (o.result == "ok" and not granted) or (o.result == "refused" and granted):
                return False
            if granted and o.result != "refused":
                holders.add(o.node)
        elif o.kind in ("unlock", "force_unlock"):
            holders.discard(o.node)
        elif o.kind == "set_slots":
            slots = o.slots or 0
        elif o.result == "ok" and holders != o.observed:
            return False
    return True


def brute_force(history: Sequence[Operation], slots: int, strict: bool,
                horizon: float | None = None) -> bool:
    """Every subset of the unknown ops, every order that respects real time."""
    def end(o: Operation) -> float:
        if o.result != "unknown":
            return o.complete or 0.0
        return INF if horizon is None else o.invoke + horizon

    unknown = [o for o in history if o.result == "unknown"]
    known = [o for o in history if o.result != "unknown"]
    for r in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, r):
            for order in itertools.permutations(known + list(chosen)):
                in_time = all(end(order[j]) >= order[i].invoke
                              for i in range(len(order)) for j in range(i + 1, len(order)))
                if in_time and _legal(order, slots, strict):
                    return True
    return False


@st.composite
def tiny_histories(draw: st.DrawFn) -> list[Operation]:
    ops = []
    for k in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["lock", "lock", "unlock", "force_unlock", "set_slots",
                                     "read"]))
        invoke = draw(st.integers(0, 6))
        complete = invoke + draw(st.integers(0, 3))
        result = draw(st.sampled_from(["ok", "ok", "refused", "unknown"]))
        node = draw(st.sampled_from("abc")) if kind in ("lock", "unlock", "force_unlock") else ""
        seen = frozenset(draw(st.sets(st.sampled_from("abc"), max_size=2)))
        ops.append(Operation(
            str(k), "g", kind, node, invoke,
            None if result == "unknown" and draw(st.booleans()) else complete, result,
            draw(st.integers(0, 2)) if kind == "set_slots" else None,
            seen if kind == "read" else None))
    return ops


@settings(max_examples=200, deadline=None)
@given(tiny_histories(), st.integers(0, 2), st.booleans(),
       st.sampled_from([None, 0.0, 1.0, 2.5]))
def test_agrees_with_brute_force(history: list[Operation], slots: int, strict: bool,
                                 horizon: float | None) -> None:
    got = check_group(history, slots, strict_refusals=strict, unknown_horizon=horizon)
    assert got.ok == brute_force(history, slots, strict, horizon)


@st.composite
def lock_only_histories(draw: st.DrawFn) -> list[Operation]:
    """Only lock/unlock/force_unlock: the shape where unknown locks are left out."""
    return [o for o in draw(tiny_histories()) if o.kind not in ("set_slots", "read")]


@settings(max_examples=150, deadline=None)
@given(lock_only_histories(), st.integers(1, 2), st.sampled_from([None, 1.0]))
def test_agrees_with_brute_force_without_reads_or_slot_changes(
        history: list[Operation], slots: int, horizon: float | None) -> None:
    got = check_group(history, slots, unknown_horizon=horizon)
    assert got.ok == brute_force(history, slots, False, horizon)


@dataclass
class Run:
    """A simulated run: what clients recorded, and the true final holders."""

    history: list[Operation]
    slots: int
    holders: set[str]


@dataclass(frozen=True)
class Planned:
    """One client operation of a simulated run, before its answer is known."""

    effect: float  # when it acts on the semaphore; inf: never
    seq: int
    process: str
    kind: Kind
    node: str
    invoke: float
    complete: float
    fate: str  # ok (answered), lost (acted, answer lost), late (acted later), never
    slots: int | None


@st.composite
def simulated_runs(draw: st.DrawFn, with_set_slots: bool = True, busy: bool = False) -> Run:
    """Concurrent clients on a correct semaphore; each op acts at one instant of its own.

    Each client runs its operations one after another, each over a random interval; the
    operation takes effect at a random instant inside it. A lost answer is recorded as
    unknown, and then the effect may also happen later than the interval (a late commit)
    or never. Replaying effects in time order through a correct sequential semaphore gives
    every answer, so the history is linearizable by construction. ``busy`` runs have fewer
    slots and more locks, so that every slot is often certainly held.
    """
    slots = draw(st.integers(1, 2 if busy else 3))
    ids = [f"n{i}" for i in range(draw(st.integers(1, 5)))]
    kinds: list[Kind] = ["lock", "lock", "unlock", "force_unlock"]
    if busy:
        kinds = ["lock", "lock", "lock", "unlock"]
    if with_set_slots:
        kinds.append("set_slots")
    planned: list[Planned] = []
    for c in range(draw(st.integers(1, 5))):
        t = float(draw(st.integers(0, 5)))
        for _ in range(draw(st.integers(0, 7))):
            kind = draw(st.sampled_from(kinds))
            length = draw(st.integers(0, 6))
            fates = ["ok", "ok", "ok", "lost", "late", "never"]
            fate = draw(st.sampled_from(fates[:4] if busy else fates))
            at = t + draw(st.integers(0, length))
            if fate == "late":
                at += length + draw(st.integers(1, 20))
            node = "" if kind == "set_slots" else draw(st.sampled_from(ids))
            arg = draw(st.integers(1, 3)) if kind == "set_slots" else None
            planned.append(Planned(INF if fate == "never" else at, len(planned), f"c{c}",
                                   kind, node, t, t + length, fate, arg))
            t += length + draw(st.integers(0, 3))
    return _replay(planned, slots)


def _replay(planned: list[Planned], start_slots: int) -> Run:
    """Apply the effects in time order to a correct semaphore; record what clients saw."""
    holders: set[str] = set()
    slots = start_slots
    history = []
    for p in sorted(planned, key=lambda p: (p.effect, p.seq)):
        result: Result = "ok"
        if p.fate != "never":
            if p.kind == "lock" and not (p.node in holders or len(holders) < slots):
                result = "refused"
            elif p.kind == "lock":
                holders.add(p.node)
            elif p.kind == "set_slots":
                slots = p.slots or 0
            else:
                holders.discard(p.node)
        complete: float | None = p.complete
        if p.fate != "ok":
            result = "unknown"
            complete = None if p.fate == "never" else complete
        history.append(Operation(p.process, "g", p.kind, p.node, p.invoke, complete, result,
                                 p.slots))
    return Run(history, start_slots, holders)


@settings(max_examples=100, deadline=None)
@given(simulated_runs(), st.booleans())
def test_a_correct_semaphore_always_gives_a_linearizable_history(run: Run,
                                                                 strict: bool) -> None:
    result = check(run.history, run.slots, strict_refusals=strict)
    assert result.verdict == "linearizable", result.explain()
    # A final read of the true holders, after everything answered, fits too.
    end = max((o.complete or o.invoke for o in run.history), default=0.0) + 100
    final = Operation("admin", "g", "read", "", end, end + 1, "ok", None,
                      frozenset(run.holders))
    assert check([*run.history, final], run.slots).ok
    assert check_durability(run.history, {"g": run.holders}).ok


def certain_holders_at(history: Sequence[Operation], t: float) -> set[str]:
    """Nodes that hold at instant ``t`` in every linearization, judged conservatively.

    A grant answered before ``t`` holds at ``t`` unless some release of that node (answered
    or unknown) may act after the grant and was sent no later than ``t``. Equal instants
    count as concurrent, as in the checker.
    """
    held = set()
    for g in history:
        if g.kind != "lock" or g.result != "ok" or not (g.complete or 0) < t:
            continue
        releases = [u for u in history if u.node == g.node and u.result != "refused"
                    and u.kind in ("unlock", "force_unlock")
                    and (u.result == "unknown" or (u.complete or 0) >= g.invoke)]
        if all(u.invoke > t for u in releases):
            held.add(g.node)
    return held


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(simulated_runs(with_set_slots=False, busy=True), st.data())
def test_an_extra_grant_while_every_slot_is_certainly_held_is_caught(
        run: Run, data: st.DataObject) -> None:
    grants = sorted({(o.complete or 0) + 0.5 for o in run.history
                     if o.kind == "lock" and o.result == "ok"})
    full = [t for t in grants if len(certain_holders_at(run.history, t)) >= run.slots]
    assume(full)
    t = data.draw(st.sampled_from(full))
    intruder = Operation("intruder", "g", "lock", "intruder", t, t, "ok")
    for strict in (False, True):
        result = check([*run.history, intruder], run.slots, strict_refusals=strict)
        assert result.verdict == "violation", [o.describe() for o in run.history]
