"""The reboot policy's pure transitions: windows, expiry, cooldown, history, stale reports,
gate verdicts, the events a decision makes and the refusals a node is told."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import orjson
import pytest
from hypothesis import given, settings

from lockd import policy, semaphore
from lockd.errors import Kind
from lockd.layouts import AirlockLayout, NativeLayout, native
from lockd.policy import GateVerdict, GroupPolicy
from lockd.policystate import PolicyState, Reboot
from lockd.semaphore import Outcome, Semaphore
from lockd.windows import format_instant, parse_schedule
from tests.test_windows import at

OPEN = GateVerdict("open")
#: A grant time; 0 means "unknown" (a holder taken over from airlock or locksmith).
T = 1_000_000.0


def granted(sem: Semaphore, p: GroupPolicy, *ids_at: tuple[str, float]) -> Semaphore:
    for id_, t in ids_at:
        sem, o = policy.lock(sem, id_, t, p, OPEN)
        assert o is Outcome.GRANTED, (id_, o)
    return sem


def ids(sem: Semaphore) -> list[str]:
    return [h.id for h in sem.holders]


def test_the_default_policy_is_the_plain_semaphore() -> None:
    p = GroupPolicy()
    s = granted(Semaphore.new(1), p, ("a", 1.0))
    assert policy.lock(s, "a", 2.0, p)[1] is Outcome.ALREADY_HELD
    assert policy.lock(s, "b", 2.0, p)[1] is Outcome.FULL
    after, o = policy.unlock(s, "a", 3.0, p)
    assert o is Outcome.RELEASED and after.policy == PolicyState()  # nothing remembered


def test_windows_refuse_new_grants_only() -> None:
    p = GroupPolicy(windows=parse_schedule("Mon 10:00 1h"))
    inside, outside = at("2026-12-07 10:30"), at("2026-12-07 12:00")
    s = granted(Semaphore.new(2), p, ("a", inside))
    assert policy.lock(s, "b", outside, p)[1] is Outcome.OUTSIDE_WINDOW
    assert policy.lock(s, "a", outside, p)[1] is Outcome.ALREADY_HELD  # the holder re-locks
    assert policy.unlock(s, "a", outside, p)[1] is Outcome.RELEASED  # and releases


def test_refusals_come_in_a_fixed_order() -> None:
    p = GroupPolicy(windows=parse_schedule("Mon 10:00 1h"), gates=("g",))
    outside = at("2026-12-07 12:00")
    full = granted(Semaphore.new(1), p, ("a", at("2026-12-07 10:30")))
    paused = Semaphore(slots=1, paused=True)
    assert policy.lock(paused, "b", outside, p)[1] is Outcome.PAUSED  # the operator first
    assert policy.lock(full, "b", outside, p)[1] is Outcome.OUTSIDE_WINDOW  # says when
    inside = at("2026-12-07 10:40")
    assert policy.lock(full, "b", inside, p)[1] is Outcome.FULL  # before any gate is asked


def test_gates_are_asked_only_for_what_would_be_granted() -> None:
    p = GroupPolicy(gates=("prom",))
    s = Semaphore.new(2)
    assert policy.lock(s, "a", 1.0, p)[1] is Outcome.GATE_PENDING
    assert policy.lock(s, "a", 1.0, p, GateVerdict("closed", "prom", "x"))[1] is \
        Outcome.GATE_CLOSED
    assert policy.lock(s, "a", 1.0, p, GateVerdict("unreachable", "prom", "x"))[1] is \
        Outcome.GATE_UNREACHABLE
    s = granted(s, p, ("a", 1.0))
    assert policy.lock(s, "a", 2.0, p)[1] is Outcome.ALREADY_HELD  # no verdict needed
    s = granted(s, p, ("b", 2.0))
    assert policy.lock(s, "c", 3.0, p)[1] is Outcome.FULL  # none needed either


def test_a_full_group_expires_an_expired_holder_to_grant() -> None:
    p = GroupPolicy(expire_after=100.0, history=10)
    s = granted(Semaphore.new(1), p, ("a", T + 0.0))
    assert policy.lock(s, "b", T + 99.0, p)[1] is Outcome.FULL
    after, o = policy.lock(s, "b", T + 100.0, p, OPEN)
    assert o is Outcome.GRANTED and ids(after) == ["b"]
    assert after.policy.reboots == (Reboot("a", 1, T, T + 100.0, "expiry"),)
    events = policy.changes("g", s, after, T + 100.0)
    assert [(e.kind, e.id) for e in events] == [("expiry", "a"), ("grant", "b")]


def test_expiry_releases_exactly_the_expired_holder() -> None:
    p = GroupPolicy(expire_after=100.0)
    s = granted(Semaphore.new(3), p, ("a", T + 0.0), ("b", T + 60.0), ("c", T + 99.0))
    after, o = policy.sweep(s, T + 120.0, p)
    assert o is Outcome.CHANGED and ids(after) == ["b", "c"]
    again, o = policy.sweep(after, T + 120.0, p)
    assert o is Outcome.UNCHANGED and again is after
    # A holder of unknown grant time (taken over from airlock) never expires.
    foreign = Semaphore(slots=1, holders=(s.holders[0].__class__("x", 0.0, 0),))
    assert policy.sweep(foreign, 1e9, p)[1] is Outcome.UNCHANGED


def test_an_expired_holder_no_longer_holds() -> None:
    p = GroupPolicy(expire_after=100.0)
    s = granted(Semaphore.new(1), p, ("a", T + 0.0))
    after, o = policy.unlock(s, "a", T + 150.0, p)
    assert o is Outcome.NOT_HELD and ids(after) == []
    assert [e.kind for e in policy.changes("g", s, after, T + 150.0)] == ["expiry"]  # not release
    after, o = policy.lock(s, "a", T + 150.0, p, OPEN)  # its re-lock is a new grant
    assert o is Outcome.GRANTED and after.holders[0].granted_at == T + 150.0


def test_cooldown_rests_the_freed_slot() -> None:
    p = GroupPolicy(cooldown=30.0)
    s = granted(Semaphore.new(1), p, ("a", 0.0))
    s, _ = policy.unlock(s, "a", 10.0, p)
    assert s.policy.releases == (10.0,)
    assert policy.lock(s, "b", 39.9, p)[1] is Outcome.COOLDOWN
    assert policy.cooldown_ends(s, 20.0, p) == 40.0
    assert policy.lock(s, "b", 40.0, p)[1] is Outcome.GRANTED


def test_cooldown_counts_slots_not_the_group() -> None:
    p = GroupPolicy(cooldown=30.0)
    s = granted(Semaphore.new(3), p, ("a", 0.0), ("b", 0.0))
    s, _ = policy.unlock(s, "a", 10.0, p)  # 2 free: one resting, one free all along
    s = granted(s, p, ("c", 15.0))
    assert policy.lock(s, "d", 16.0, p)[1] is Outcome.COOLDOWN
    assert policy.cooldown_ends(s, 16.0, p) == 40.0
    s, _ = policy.unlock(s, "b", 20.0, p)  # two resting now; the first ends at 40
    assert policy.grantable(s, 30.0, p) == 0 and policy.cooldown_ends(s, 30.0, p) == 40.0
    assert policy.grantable(s, 40.0, p) == 1 and policy.grantable(s, 50.0, p) == 2


def test_an_operators_unlock_and_an_expiry_rest_the_slot_too() -> None:
    p = GroupPolicy(cooldown=30.0, expire_after=100.0, history=5)
    s = granted(Semaphore.new(1), p, ("a", 0.0))
    s, o = policy.unlock(s, "a", 10.0, p, by="operator")
    assert o is Outcome.RELEASED and s.policy.reboots[-1].ended == "operator"
    assert policy.lock(s, "b", 20.0, p)[1] is Outcome.COOLDOWN
    s = granted(s, p, ("b", 50.0))
    s, _ = policy.sweep(s, 150.0, p)
    assert s.policy.reboots[-1].ended == "expiry"
    assert policy.lock(s, "c", 160.0, p)[1] is Outcome.COOLDOWN


def test_history_keeps_the_last_n_with_durations() -> None:
    p = GroupPolicy(history=3)
    s = Semaphore.new(1)
    for i in range(5):
        s = granted(s, p, (f"n{i}", 100.0 * i))
        s, _ = policy.unlock(s, f"n{i}", 100.0 * i + 42, p)
    assert [r.id for r in s.policy.reboots] == ["n2", "n3", "n4"]
    assert [r.seconds for r in s.policy.reboots] == [42.0] * 3
    s, _ = policy.unlock(granted(s, GroupPolicy(history=1), ("x", 1000.0)), "x", 1001.0,
                         GroupPolicy(history=1))
    assert [r.id for r in s.policy.reboots] == ["x"]  # a smaller history trims


def test_stale_holders_are_reported_once_and_forgotten_on_release() -> None:
    p = GroupPolicy(stale_after=60.0, report_stale=True)
    s = granted(Semaphore.new(2), p, ("a", T + 0.0), ("b", T + 30.0))
    assert [policy.is_stale(h, T + 70.0, p) for h in s.holders] == [True, False]
    marked, o = policy.sweep(s, T + 70.0, p)
    assert o is Outcome.CHANGED and marked.policy.stale_reported == (1,)
    assert [(e.kind, e.id) for e in policy.changes("g", s, marked, T + 70.0)] == [("stale", "a")]
    assert policy.sweep(marked, T + 80.0, p)[1] is Outcome.UNCHANGED  # once
    released, _ = policy.unlock(marked, "a", T + 90.0, p)
    assert released.policy.stale_reported == ()
    # Without report_stale (a layout that cannot store marks) nothing is written.
    assert policy.sweep(s, T + 70.0, GroupPolicy(stale_after=60.0))[1] is Outcome.UNCHANGED


def test_stateless_keeps_what_needs_no_document() -> None:
    full = GroupPolicy(windows=parse_schedule("Sat 02:00 1h"), stale_after=60.0,
                       expire_after=100.0, cooldown=5.0, history=9, gates=("g",),
                       report_stale=True)
    assert full.stateless() == GroupPolicy(windows=full.windows, stale_after=60.0,
                                           gates=("g",))


def test_releases_name_who_released() -> None:
    p = GroupPolicy()
    s = granted(Semaphore.new(1), p, ("a", 1.0))
    after, _ = policy.unlock(s, "a", 60.0, p)
    (event,) = policy.changes("workers", s, after, 60.0, released="a", by="node")
    assert (event.kind, event.by, event.held_seconds) == ("release", "node", 59.0)
    fields = event.fields()
    assert fields["event"] == "release" and fields["group"] == "workers"
    assert fields["at_iso"] == "1970-01-01T00:01:00+00:00[UTC]"
    json.dumps(fields)


def test_refusals_are_423_with_their_own_kinds() -> None:
    w = GroupPolicy(windows=parse_schedule("Sat 23:00 1h Europe/Berlin"), cooldown=60.0)
    now = at("2026-12-07 12:00")
    err = policy.refusal(Outcome.OUTSIDE_WINDOW, "workers", None, now, w)
    assert err.kind is Kind.failed_lock_outside_window and err.status == 423
    opens = format_instant(at("2026-12-12 23:00", "Europe/Berlin"), "Europe/Berlin")
    assert opens == "2026-12-12T23:00:00+01:00[Europe/Berlin]" and opens in err.value
    s, _ = policy.unlock(granted(Semaphore.new(1), w, ("a", at("2026-12-12 23:10",
                                                               "Europe/Berlin"))),
                         "a", now, w)
    err = policy.refusal(Outcome.COOLDOWN, "workers", s, now + 1, w)
    assert err.kind is Kind.failed_lock_cooldown and format_instant(now + 60, "UTC") in err.value
    err = policy.refusal(Outcome.GATE_CLOSED, "w", None, now, w,
                         GateVerdict("closed", "prom", "1 alert active: NodeDown"))
    assert err.kind is Kind.failed_lock_gate_closed and "NodeDown" in err.value
    err = policy.refusal(Outcome.GATE_UNREACHABLE, "w", None, now, w,
                         GateVerdict("unreachable", "prom", "prometheus cannot be reached"))
    assert err.kind is Kind.failed_lock_gate_unreachable and "prom" in err.value
    assert {e.status for e in (err,)} == {423}
    full = policy.refusal(Outcome.FULL, "w", None, now, w)
    assert full.value == "semaphore currently full, all slots are locked already"
    assert (full.kind, full.headers) == (Kind.failed_lock_semaphore_full, None)
    # Built once: the same answer for every group and node (lockd.policy.FULL).
    assert policy.refusal(Outcome.FULL, "other", None, now + 1, GroupPolicy()) is full


@pytest.mark.parametrize("layout", [NativeLayout(), AirlockLayout()])
def test_the_document_keeps_policy_state_only_in_the_native_layout(layout) -> None:  # type: ignore[no-untyped-def]
    p = GroupPolicy(cooldown=30.0, history=3, stale_after=1.0, report_stale=True)
    s = granted(Semaphore.new(2), p, ("a", 1.0), ("b", 2.0))
    s, _ = policy.unlock(s, "a", 5.0, p)
    s, _ = policy.sweep(s, 10.0, p)
    assert s.policy != PolicyState()
    back = layout.decode(layout.encode(s, None))
    if layout.stores_policy_state:
        assert back.policy == s.policy
    else:
        assert back.policy == PolicyState()
    # A document written before the policy existed reads with an empty one.
    plain = layout.decode(layout.encode(Semaphore.new(1), None))
    assert plain.policy == PolicyState()


# Times as the clock gives them (floats with a fraction) and as tests give them (ints).
_TIMES = st.one_of(st.floats(min_value=0, max_value=4e9, allow_nan=False),
                   st.integers(min_value=0, max_value=4_000_000_000))
_STEPS = st.lists(st.tuples(
    st.sampled_from(["lock", "unlock", "sweep", "pause", "resume", "slots", "touch"]),
    st.sampled_from(["a", "b", "c", "0b1e3a7c2d9f4e5a"]), _TIMES), max_size=30)


@given(steps=_STEPS, slots=st.integers(1, 3), history=st.integers(0, 4),
       cooldown=st.sampled_from([0.0, 30.0]))
@settings(max_examples=300, deadline=None)
def test_the_native_document_decodes_to_exactly_what_was_encoded(
    steps: list[tuple[str, str, float]], slots: int, history: int, cooldown: float
) -> None:
    """NativeLayout.lossless: the service keeps the state it wrote instead of decoding the
    bytes again (LockService._stored), so every state the transitions make must survive
    encode then decode unchanged; the airlock layout does not claim it."""
    layout = NativeLayout()
    assert layout.lossless and not AirlockLayout().lossless
    p = GroupPolicy(cooldown=cooldown, history=history, stale_after=5.0, expire_after=50.0,
                    report_stale=True)
    s, previous = Semaphore.new(slots), None
    for op, id_, t in steps:
        if op == "lock":
            s, _ = policy.lock(s, id_, t, p, OPEN)
        elif op == "unlock":
            s, _ = policy.unlock(s, id_, t, p)
        elif op == "sweep":
            s, _ = policy.sweep(s, t, p)
        elif op in ("pause", "resume"):
            s, _ = semaphore.set_paused(s, op == "pause")
        elif op == "slots":
            s, _ = semaphore.set_slots(s, slots + 1)
        else:
            s = semaphore.touch(s, t, 60.0, writes=True, exists=True)
        raw = layout.encode(s, previous)
        assert layout.decode(raw) == s
        previous = raw


def _encoded_by_hand(s: Semaphore) -> bytes:
    """The native document as lockd built it before stop 11, a dict per holder and
    reboot: the bytes the layout must still write."""
    doc: dict[str, object] = {
        "slots": s.slots, "config_slots": s.config_slots, "paused": s.paused,
        "next_grant_id": s.next_grant_id,
        "holders": [{"id": h.id, "granted_at": h.granted_at, "grant_id": h.grant_id}
                    for h in s.holders],
    }
    if s.policy != PolicyState():
        p: dict[str, object] = {}
        if s.policy.releases:
            p["releases"] = list(s.policy.releases)
        if s.policy.reboots:
            p["reboots"] = [{"id": r.id, "grant_id": r.grant_id, "granted_at": r.granted_at,
                             "released_at": r.released_at, "ended": r.ended}
                            for r in s.policy.reboots]
        if s.policy.stale_reported:
            p["stale_reported"] = list(s.policy.stale_reported)
        doc["policy"] = p
    if s.touched is not None:
        doc["touched"] = s.touched
    return orjson.dumps(doc)


@given(steps=_STEPS, slots=st.integers(1, 3), history=st.integers(0, 4),
       cooldown=st.sampled_from([0.0, 30.0]))
@settings(max_examples=200, deadline=None)
def test_the_native_document_is_written_byte_for_byte_as_before(
    steps: list[tuple[str, str, float]], slots: int, history: int, cooldown: float
) -> None:
    """The layout hands orjson its dataclasses rather than a dict per holder: the stored
    bytes must not change (other replicas of an older lockd read and compare them)."""
    layout = NativeLayout()
    p = GroupPolicy(cooldown=cooldown, history=history, stale_after=5.0, expire_after=50.0,
                    report_stale=True)
    s = Semaphore.new(slots)
    for op, id_, t in steps:
        if op == "lock":
            s, _ = policy.lock(s, id_, t, p, OPEN)
        elif op == "unlock":
            s, _ = policy.unlock(s, id_, t, p)
        elif op == "sweep":
            s, _ = policy.sweep(s, t, p)
        else:
            s = semaphore.touch(s, t, 60.0, writes=True, exists=True)
        assert layout.encode(s, None) == _encoded_by_hand(s)


def test_the_policy_json_kept_per_state_is_bounded_and_right() -> None:
    """The layout keeps each policy state's JSON (a grant writes its group's history as
    the release before it did): never more than POLICIES_KEPT of them, and each state gets
    its own, not one that happens to share its id."""
    layout = NativeLayout()
    for i in range(native.POLICIES_KEPT + 10):
        s = Semaphore(1, policy=PolicyState(releases=(float(i),)))
        assert layout.encode(s, None) == _encoded_by_hand(s)
        assert len(layout._policies) <= native.POLICIES_KEPT
    again = Semaphore(2, policy=s.policy)
    assert layout.encode(again, None) == _encoded_by_hand(again)


def test_the_reboot_json_kept_per_reboot_is_bounded_and_right() -> None:
    """The layout keeps each reboot's JSON (a release's history shares all but its newest
    reboot with the one before): never more than REBOOTS_KEPT, and each reboot gets its
    own, not that of a reboot gone since that happens to have had its id."""
    layout = NativeLayout()
    history: tuple[Reboot, ...] = ()
    for i in range(native.REBOOTS_KEPT + 50):
        history = (*history, Reboot(f"n{i}", i, float(i), i + 0.5, "release"))[-20:]
        s = Semaphore(1, policy=PolicyState(reboots=history))
        assert layout.encode(s, None) == _encoded_by_hand(s)
        assert len(layout._reboots) <= native.REBOOTS_KEPT
