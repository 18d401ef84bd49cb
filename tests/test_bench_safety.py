"""The storm's own safety checker (bench/storm/safety.py) on hand-made histories."""

from __future__ import annotations

import pytest

from bench.storm.report import drain
from bench.storm.safety import (
    DEFAULT_UNDECIDED,
    Hold,
    failed_event,
    holds_from_events,
    is_undecided,
    max_holders,
    parse_undecided,
    split_holds,
    verdict,
    violations,
)


def ev(t: float, node: str, what: str, group: str = "g") -> tuple[float, str, str, str]:
    return (t, node, group, what)


def test_one_after_another_is_safe() -> None:
    events = [ev(0, "a", "grant"), ev(1, "a", "release"), ev(2, "b", "grant"),
              ev(3, "b", "release")]
    holds = holds_from_events(events, end=10)
    assert holds == [Hold("g", "a", 0, 1), Hold("g", "b", 2, 3)]
    assert violations(holds, 1) == []
    assert verdict(holds, 1)[0].max_holders == 1


def test_overlap_beyond_slots_is_a_violation_naming_who_and_when() -> None:
    events = [ev(0, "a", "grant"), ev(0.5, "b", "grant"), ev(1, "a", "release"),
              ev(2, "b", "release")]
    found = violations(holds_from_events(events, end=10), 1)
    assert len(found) == 1
    assert (found[0].group, found[0].max_holders, found[0].at) == ("g", 2, 0.5)
    assert found[0].holders == ("a", "b")


def test_release_sent_at_the_instant_of_the_next_grant_is_not_an_overlap() -> None:
    events = [ev(0, "a", "grant"), ev(1, "a", "release"), ev(1, "b", "grant"),
              ev(2, "b", "release")]
    assert violations(holds_from_events(events, end=10), 1) == []


def test_a_node_that_died_holding_keeps_its_slot_to_the_end() -> None:
    events = [ev(0, "a", "grant"), ev(0.1, "a", "die"), ev(50, "b", "grant"),
              ev(51, "b", "release")]
    holds = holds_from_events(events, end=60)
    assert Hold("g", "a", 0, 60) in holds
    assert [v.holders for v in violations(holds, 1)] == [("a", "b")]
    assert violations(holds, 2) == []


def test_a_repeated_grant_to_the_holder_is_one_hold() -> None:
    # zincati re-locks while it holds; a second 200 must not count as a second holder.
    events = [ev(0, "a", "grant"), ev(1, "a", "grant"), ev(2, "a", "release")]
    holds = holds_from_events(events, end=5)
    assert holds == [Hold("g", "a", 0, 2)]
    assert violations(holds, 1) == []


def test_groups_are_judged_separately_against_their_own_slots() -> None:
    events = [
        ev(0, "a", "grant", "x"), ev(0, "b", "grant", "x"), ev(0, "c", "grant", "x"),
        ev(0, "d", "grant", "y"), ev(0, "e", "grant", "y"),
        *(ev(5, n, "release", g) for n, g in
          [("a", "x"), ("b", "x"), ("c", "x"), ("d", "y"), ("e", "y")]),
    ]
    holds = holds_from_events(events, end=9)
    assert {g: n for g, (n, _, _) in max_holders(holds).items()} == {"x": 3, "y": 2}
    assert [v.group for v in violations(holds, 2)] == ["x"]
    assert violations(holds, {"x": 3, "y": 2}) == []
    assert [v.group for v in violations(holds, {"x": 3, "y": 1})] == ["y"]


def test_events_in_any_order_and_regrants_after_release() -> None:
    events = [ev(4, "a", "release"), ev(3, "a", "grant"), ev(1, "a", "release"),
              ev(0, "a", "grant"), ev(2, "b", "grant"), ev(3.5, "b", "release")]
    holds = holds_from_events(events, end=10)
    assert sorted(holds, key=lambda h: h.start) == [
        Hold("g", "a", 0, 1), Hold("g", "b", 2, 3.5), Hold("g", "a", 3, 4)]
    found = violations(holds, 1)
    assert [(v.at, v.holders) for v in found] == [(3, ("a", "b"))]


@pytest.mark.parametrize("second_grant, ratio", [(1.0, 1.0), (1.5, 1.25)])
def test_drain_is_first_grant_to_last_release_against_the_ideal(second_grant: float,
                                                                  ratio: float) -> None:
    events = [ev(0, "a", "grant"), ev(1, "a", "release"), ev(1.01, "a", "done"),
              ev(second_grant, "b", "grant"), ev(second_grant + 1, "b", "release"),
              ev(second_grant + 1.01, "b", "done")]
    result = drain(events, {"a": "g", "b": "g"}, slots=1, reboot=1.0)
    assert result["groups"]["g"]["ideal_s"] == 2.0
    assert result["ratio_max"] == pytest.approx(ratio)


def test_a_group_with_a_dead_node_has_no_drain_time() -> None:
    events = [ev(0, "a", "grant"), ev(0, "a", "die"), ev(0, "b", "grant"),
              ev(1, "b", "release"), ev(1, "b", "done")]
    result = drain(events, {"a": "g", "b": "g"}, slots=2, reboot=1.0)
    assert result["groups"]["g"]["drain_s"] is None
    assert result["incomplete_groups"] == 1


def test_a_grant_after_an_unanswered_release_is_uncertain_not_a_violation() -> None:
    # "a" sent a steady-state that got no 200 at t=1; the server may apply it at any time,
    # for instance while "a" holds its next grant, so "b" at t=3 proves nothing.
    events = [ev(1, "a", "unsure"), ev(2, "a", "grant"), ev(3, "b", "grant"),
              ev(4, "a", "release"), ev(5, "b", "release")]
    certain, uncertain = split_holds(events, end=10)
    assert certain == [Hold("g", "b", 3, 5)] and uncertain == [Hold("g", "a", 2, 4)]
    assert violations(certain, 1) == []
    # Without the unanswered request the same history is a violation.
    assert len(violations(holds_from_events(events[1:], end=10), 1)) == 1


def test_an_unanswered_release_of_the_hold_itself_keeps_the_hold_certain() -> None:
    events = [ev(0, "a", "grant"), ev(1, "a", "release"), ev(1, "a", "unsure"),
              ev(0.5, "b", "grant"), ev(2, "b", "release")]
    certain, uncertain = split_holds(events, end=10)
    assert uncertain == []
    assert [v.holders for v in violations(certain, 1)] == [("a", "b")]


def test_overlap_beyond_slots_is_caught_with_when_and_whom() -> None:
    holds = [Hold("g", "a", 0, 2), Hold("g", "b", 1, 3), Hold("g", "c", 1.5, 1.6)]
    found = violations(holds, {"g": 2})
    assert len(found) == 1
    assert found[0].holders == ("a", "b", "c") and found[0].at == 1.5
    assert violations(holds, {"g": 3}) == []


def test_touching_holds_do_not_overlap() -> None:
    holds = [Hold("g", "a", 0, 1), Hold("g", "b", 1, 2), Hold("g", "c", 2.5, 3)]
    assert violations(holds, {"g": 1}) == []


# --- which steady-state outcomes leave a release undecided --------------------------------


def history_after(outcome: str) -> list[tuple[float, str, str, str]]:
    """'a' boots, its steady-state ends with ``outcome``; then 'a' and 'b' hold together."""
    return [ev(0, "a", outcome), ev(1, "a", "done"), ev(2, "a", "grant"),
            ev(3, "b", "grant"), ev(4, "a", "release"), ev(5, "b", "release")]


@pytest.mark.parametrize("outcome", [
    "failed:failed_lock",                   # airlock's 500: decided, not applied
    "failed:invalid_client_identity",       # a 400
    "failed:generic_http_500",              # a 500 without a JSON body
    "failed:failed_lock_semaphore_full",
])
def test_an_answered_steady_state_is_decided_so_the_later_hold_counts(outcome: str) -> None:
    certain, uncertain = split_holds(history_after(outcome), end=10)
    assert uncertain == []
    assert [v.holders for v in violations(certain, 1)] == [("a", "b")]


@pytest.mark.parametrize("outcome", [
    "unsure",                               # no answer: timeout, reset, connection error
    "failed:backend_unavailable",           # lockd's 503: not decided yet
    "failed:backend_contention",
    "failed:generic_http_503",              # a 503 or 504 without a parseable body
    "failed:generic_http_504",
])
def test_an_undecided_steady_state_makes_the_later_hold_uncertain(outcome: str) -> None:
    certain, uncertain = split_holds(history_after(outcome), end=10)
    assert uncertain == [Hold("g", "a", 2, 4)]
    assert violations(certain, 1) == []
    # Counted as if certain, the same holds overlap: the "with uncertain" view shows it.
    assert len(violations(certain + uncertain, 1)) == 1


def test_the_undecided_kinds_are_an_option() -> None:
    events = history_after("failed:failed_lock")
    # A server whose 500 may be applied later can say so...
    _, uncertain = split_holds(events, end=10, undecided={"failed_lock"})
    assert uncertain == [Hold("g", "a", 2, 4)]
    # ..."*" reads every non-200 answer as undecided...
    assert split_holds(events, end=10, undecided={"*"})[1] == uncertain
    # ...and an empty set trusts every answer, but never a missing one.
    assert split_holds(events, end=10, undecided=set())[1] == []
    assert split_holds(history_after("unsure"), end=10, undecided=set())[1] == uncertain


def test_parse_undecided() -> None:
    assert parse_undecided("default") == DEFAULT_UNDECIDED
    assert parse_undecided("default, failed_lock") == DEFAULT_UNDECIDED | {"failed_lock"}
    assert parse_undecided("*") == {"*"}
    assert parse_undecided("") == frozenset()
    assert DEFAULT_UNDECIDED == {"backend_unavailable", "backend_contention",
                                 "generic_http_503", "generic_http_504"}
    assert is_undecided("unsure", frozenset())
    assert not is_undecided("grant")


def test_undecided_only_taints_holds_granted_after_it() -> None:
    # The undecided request comes after a's first hold: that hold stays certain.
    events = [ev(0, "a", "grant"), ev(1, "a", "release"),
              ev(1.5, "a", "failed:backend_unavailable"), ev(2, "a", "grant"),
              ev(3, "a", "release")]
    certain, uncertain = split_holds(events, end=10)
    assert certain == [Hold("g", "a", 0, 1)] and uncertain == [Hold("g", "a", 2, 3)]


def test_an_undecided_entry_can_name_a_kind_and_a_text_of_its_value() -> None:
    # airlock answers 500 failed_lock for a compare-and-set conflict (decided: nothing was
    # written) and for an etcd timeout (the write may still commit): the value tells them apart.
    timeout = history_after(failed_event("failed_lock", "context deadline exceeded"))
    conflict = history_after(failed_event("failed_lock", "conflict on semaphore detected"))
    only_timeouts = parse_undecided("default,failed_lock~deadline")
    assert split_holds(timeout, end=10, undecided=only_timeouts)[1] == [Hold("g", "a", 2, 4)]
    assert split_holds(conflict, end=10, undecided=only_timeouts)[1] == []
    assert split_holds(timeout, end=10)[1] == []  # by default an answer is decided
    assert failed_event("k", "a\n  b") == "failed:k:a b"
