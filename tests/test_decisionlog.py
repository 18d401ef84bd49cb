"""The decision log: a line per grant, release, operator change and error; answers that
change nothing logged once per node and group, then summarised per group and interval."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.procs import Lockd
from bench.servers import RedisServer
from lockd.decisionlog import DecisionLog, decisions
from lockd.errors import Kind
from lockd.logs import render_fields
from lockd.semaphore import Holder, Outcome, Semaphore
from lockd.service import Decision
from tests.httpcall import lock


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def info_level() -> Iterator[None]:
    """The decision lines are INFO; pytest leaves the root logger at WARNING."""
    old = decisions.level
    decisions.setLevel(logging.INFO)
    yield
    decisions.setLevel(old)


def decide(action: str, group: str, id_: str | None, outcome: Outcome | None = None,
           error: Kind | None = None) -> Decision:
    return Decision(action, group, id_, outcome, error, 1, 0.001)


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def json_log(clock: Clock, **kw: Any) -> DecisionLog:
    log = DecisionLog(clock=clock, summary_interval=60.0, **kw)
    log.fmt = "json"
    return log


def test_changes_and_errors_are_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    log = json_log(Clock())
    for _ in range(2):
        log(decide("pre-reboot", "g", "a", Outcome.GRANTED))
        log(decide("steady-state", "g", "a", Outcome.RELEASED))
        log(decide("force-unlock", "g", "b", Outcome.RELEASED))
        log(decide("set-slots", "g", None, Outcome.CHANGED))
        log(decide("pre-reboot", "g", "c", error=Kind.backend_unavailable))
    got = [(d["action"], d.get("id"), d["outcome"], d["level"]) for d in lines(capsys)]
    assert got == 2 * [
        ("pre-reboot", "a", "granted", "info"),
        ("steady-state", "a", "released", "info"),
        ("force-unlock", "b", "released", "info"),
        ("set-slots", None, "changed", "info"),
        ("pre-reboot", "c", "error", "warning"),
    ]


def test_repeated_refusals_are_summarised_per_group_and_interval(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    log = json_log(clock)
    log(decide("pre-reboot", "g", "holder", Outcome.GRANTED))
    for _ in range(3):
        log(decide("pre-reboot", "g", "a", Outcome.FULL))
        log(decide("pre-reboot", "g", "b", Outcome.FULL))
        log(decide("pre-reboot", "h", "a", Outcome.PAUSED))
        clock.now += 10
    log(decide("pre-reboot", "g", "holder", Outcome.ALREADY_HELD))
    log(decide("pre-reboot", "g", "holder", Outcome.ALREADY_HELD))
    first = lines(capsys)
    # the first refusal of each node in each group is a line; the repeats are not
    assert [(d["group"], d["id"], d["outcome"]) for d in first] == [
        ("g", "holder", "granted"), ("g", "a", "full"), ("g", "b", "full"),
        ("h", "a", "paused"), ("g", "holder", "already_held"),
    ]
    assert first[1]["ts"].endswith("Z")
    clock.now += 31  # 61 s after the first refusal: the next decision closes the period
    log(decide("pre-reboot", "g", "a", Outcome.FULL))
    summary = [d for d in lines(capsys) if d.get("event") == "decision_summary"]
    by_group = {d["group"]: d for d in summary}
    assert by_group.keys() == {"g", "h"}
    assert {k: by_group["g"][k] for k in ("count", "nodes", "logged", "full", "already_held",
                                           "seconds")} == {
        "count": 8, "nodes": 3, "logged": 3, "full": 6, "already_held": 2, "seconds": 61.0}
    assert {k: by_group["h"][k] for k in ("count", "nodes", "logged", "paused")} == {
        "count": 3, "nodes": 1, "logged": 1, "paused": 3}
    assert "full" not in by_group["h"]

    # The next period: only what happened since, nodes counted once each, and a group
    # whose answers all had their own line gets no summary.
    for _ in range(4):
        log(decide("pre-reboot", "g", "b", Outcome.FULL))
    log(decide("pre-reboot", "fresh", "z", Outcome.FULL))
    clock.now += 60
    log.summarise()
    summary = [d for d in lines(capsys) if d.get("event") == "decision_summary"]
    assert [(d["group"], d["count"], d["nodes"], d["logged"]) for d in summary] == [
        ("g", 5, 2, 0)]  # a (the request that closed the last period) and b


def test_a_grant_after_refusals_says_how_long_the_node_waited(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    log = json_log(clock)
    log(decide("pre-reboot", "g", "a", Outcome.FULL))
    clock.now += 300
    log(decide("pre-reboot", "g", "a", Outcome.FULL))
    clock.now += 300.5
    log(decide("pre-reboot", "g", "a", Outcome.GRANTED))
    log(decide("steady-state", "g", "a", Outcome.RELEASED))
    log(decide("pre-reboot", "g", "a", Outcome.GRANTED))
    got = [d for d in lines(capsys) if d.get("action")]
    assert [(d["outcome"], d.get("waited_s")) for d in got] == [
        ("full", None), ("granted", 600.5), ("released", None), ("granted", None)]
    # waiting again after a grant is a new first refusal
    log(decide("pre-reboot", "g", "a", Outcome.FULL))
    assert [d["outcome"] for d in lines(capsys)] == ["full"]


def test_a_different_answer_to_a_waiting_node_is_a_new_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = json_log(Clock())
    for outcome in (Outcome.FULL, Outcome.FULL, Outcome.PAUSED, Outcome.PAUSED, Outcome.FULL):
        log(decide("pre-reboot", "g", "a", outcome))
    assert [d["outcome"] for d in lines(capsys)] == ["full", "paused", "full"]


def test_every_decision_restores_one_line_per_refusal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    log = json_log(clock, every_decision=True)
    for _ in range(5):
        log(decide("pre-reboot", "g", "a", Outcome.FULL))
    clock.now += 120
    log.summarise()
    got = lines(capsys)
    assert [d["outcome"] for d in got] == ["full"] * 5
    assert not any(d.get("event") == "decision_summary" for d in got)


def test_forgotten_nodes_are_logged_again(capsys: pytest.CaptureFixture[str]) -> None:
    log = json_log(Clock(), remember=2)
    for id_ in ("a", "b", "a", "c", "b", "a"):
        log(decide("pre-reboot", "g", id_, Outcome.FULL))
    # a, b logged; a repeat; c pushes b out; b again logged (pushing a out); a logged again
    assert [d["id"] for d in lines(capsys)] == ["a", "b", "c", "b", "a"]


def test_summary_in_text(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    log = DecisionLog(clock=clock, summary_interval=60.0)
    for _ in range(3):
        log(decide("pre-reboot", "workers", "a", Outcome.FULL))
    clock.now += 60
    log.summarise()
    out = capsys.readouterr().err.splitlines()
    assert len(out) == 2
    assert " INFO lockd.decision: pre-reboot workers full " in out[0]
    assert (" INFO lockd.decision: summary workers: 3 answers that changed nothing, to 1 "
            "nodes, in 60s; 1 logged one by one event=decision_summary group=workers "
            "seconds=60.0 count=3 nodes=1 logged=1 full=3") in out[1]


def test_close_summarises_the_period_so_far(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    log = json_log(clock)
    for _ in range(4):
        log(decide("pre-reboot", "g", "a", Outcome.FULL))
    clock.now += 5
    log.close()  # at exit
    got = lines(capsys)
    assert [(d.get("event"), d.get("count"), d.get("seconds")) for d in got] == [
        (None, None, None), ("decision_summary", 4, 5.0)]


# Against a real lockd process: what it writes on stderr.


def decision_lines(server: Lockd) -> list[dict[str, Any]]:
    out = server.proc.output() if server.proc else ""
    return [d for d in (json.loads(line) for line in out.splitlines() if line.startswith("{"))
            if d.get("logger") == "lockd.decision"]


def test_lockd_logs_first_refusals_and_a_summary(tmp_path: Path) -> None:
    server = Lockd(tmp_path, "--backend", "memory://", "--log-format", "json",
                   "--set", "log.summary_interval_s=1").start()
    try:
        assert lock(server.url, "pre-reboot", "a", "workers")[0] == 200
        for _ in range(5):
            assert lock(server.url, "pre-reboot", "b", "workers")[0] == 423
        for _ in range(2):
            assert lock(server.url, "pre-reboot", "c", "workers")[0] == 423
        server.wait_for_output("decision_summary")
        assert lock(server.url, "steady-state", "a", "workers")[0] == 200
        assert lock(server.url, "pre-reboot", "b", "workers")[0] == 200
    finally:
        assert server.stop() == 0
    got = decision_lines(server)
    answers = [(d["action"], d["id"], d["outcome"]) for d in got if "action" in d]
    assert answers == [
        ("pre-reboot", "a", "granted"), ("pre-reboot", "b", "full"),
        ("pre-reboot", "c", "full"), ("steady-state", "a", "released"),
        ("pre-reboot", "b", "granted"),
    ]
    assert answers and got[-1]["waited_s"] >= 0
    summaries = [d for d in got if d.get("event") == "decision_summary"]
    # However the one-second periods fell, every refusal is in exactly one summary.
    assert sum(d["count"] for d in summaries) == 7
    assert sum(d["logged"] for d in summaries) == 2
    assert all(d["group"] == "workers" and d["full"] == d["count"] for d in summaries)


def test_lockd_every_decision_logs_each_refusal(tmp_path: Path) -> None:
    server = Lockd(tmp_path, "--backend", "memory://", "--log-format", "json",
                   env={"LOCKD_LOG__EVERY_DECISION": "true"}).start()
    try:
        assert lock(server.url, "pre-reboot", "a", "workers")[0] == 200
        for _ in range(5):
            assert lock(server.url, "pre-reboot", "b", "workers")[0] == 423
    finally:
        assert server.stop() == 0
    got = decision_lines(server)
    assert [(d["id"], d["outcome"]) for d in got] == [("a", "granted")] + [("b", "full")] * 5


def test_lockd_logs_every_error(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    server = Lockd(tmp_path, "--backend", redis.url, "--log-format", "json",
                   "--set", "storage.timeout_s=1").start()
    try:
        assert lock(server.url, "pre-reboot", "a", "workers")[0] == 200
        redis.stop()
        for _ in range(3):
            status, body = lock(server.url, "pre-reboot", "b", "workers")
            assert (status, body["kind"]) == (503, "backend_unavailable")
    finally:
        assert server.stop() == 0
        redis.stop()
    errors = [d for d in decision_lines(server) if d.get("outcome") == "error"]
    assert [(d["id"], d["kind"], d["level"]) for d in errors] == [
        ("b", "backend_unavailable", "warning")] * 3


def _old_text_line(log: DecisionLog, d: Decision, level: int, now: float,
                   waited: float | None) -> str:
    """The text line as lockd built it before stop 11 (a dict of fields, then
    render_fields): the reference the cheaper builder must match byte for byte."""
    outcome = d.outcome.value if d.outcome else "error"
    fields: dict[str, Any] = {"action": d.action, "group": d.group, "outcome": outcome,
                              "attempts": d.attempts, "ms": round(d.seconds * 1000, 3)}
    if d.id is not None:
        fields["id"] = d.id
    if d.error is not None:
        fields["kind"] = d.error.value
    if d.semaphore is not None:
        fields["holders"] = len(d.semaphore.holders)
        fields["slots"] = d.semaphore.slots
    if waited is not None:
        fields["waited_s"] = round(waited, 3)
    fields.update(d.extra)
    msg = f"{d.action} {d.group} {outcome}"
    name = logging.getLevelName(level)
    return f"{log._text.stamp(now)} {name} {decisions.name}: {msg} {render_fields(fields)}"


_names = st.text(min_size=1, max_size=12)
_decisions = st.builds(
    Decision,
    action=st.sampled_from(["pre-reboot", "steady-state", "force-unlock", "sweep"]) | _names,
    group=st.from_regex(r"[a-zA-Z0-9.-]{1,12}", fullmatch=True) | _names,
    id=st.none() | _names,
    outcome=st.none() | st.sampled_from(list(Outcome)),
    error=st.none() | st.sampled_from(list(Kind)),
    attempts=st.integers(0, 25),
    seconds=st.floats(0, 100, allow_nan=False),
    semaphore=st.none() | st.builds(
        Semaphore, slots=st.integers(0, 9),
        holders=st.lists(st.builds(Holder, id=_names, granted_at=st.just(1.0),
                                   grant_id=st.integers(1, 9)), max_size=3).map(tuple)),
)


@settings(max_examples=300, deadline=None)
@given(d=_decisions, level=st.sampled_from([logging.INFO, logging.WARNING]),
       now=st.floats(1e9, 2e9, allow_nan=False),
       waited=st.none() | st.floats(0, 1e5, allow_nan=False))
def test_the_text_line_is_the_old_renderers_byte_for_byte(
    d: Decision, level: int, now: float, waited: float | None
) -> None:
    log = DecisionLog()
    outcome = d.outcome.value if d.outcome else "error"
    for _ in range(2):  # the line that builds a group's cached head, and one that reuses it
        assert log._text_line(d, level, now, outcome, waited) == \
            _old_text_line(log, d, level, now, waited)


def test_a_text_line_with_extra_fields_is_the_old_renderers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An operator's decision carries ``extra`` (its actor, set-slots' slots, which
    replaces the semaphore's in place): it takes the general path, with the same bytes."""
    clock = Clock()
    log = DecisionLog(clock=clock)
    d = Decision("set-slots", "g", None, Outcome.CHANGED, None, 1, 0.002,
                 Semaphore(slots=2), {"actor": "admin x", "slots": 3})
    log(d)
    log.flush()
    line = capsys.readouterr().err
    assert line == _old_text_line(log, d, logging.INFO, clock.now, None) + "\n"
    assert line.endswith(' holders=0 slots=3 actor="admin x"\n')
