"""The structured line written for lock decisions, in the shapes of :mod:`lockd.logs`.

Every grant, release (a node's or an operator's), operator change and error is a line of
its own. An answer that changes nothing (a refusal, a holder's re-lock, a steady-state of a
node that holds nothing) is a line the first time a node gets it in a group; the same
answer again to the same node is only counted, and once per interval each group with such
repeats gets one summary line: how many answers, from how many distinct nodes, by outcome.
``log.every_decision = true`` writes every decision as its own line instead.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lockd.logs import TextFormatter, json_line, render_fields, render_value
from lockd.semaphore import Outcome
from lockd.service import Decision

decisions = logging.getLogger("lockd.decision")

#: Answers that write nothing; a node polling while it waits gets the same one again and
#: again (zincati asks every 300 s, a storm's thousands of nodes at once).
UNCHANGED = frozenset({
    Outcome.FULL, Outcome.PAUSED, Outcome.OUTSIDE_WINDOW, Outcome.COOLDOWN,
    Outcome.GATE_CLOSED, Outcome.GATE_UNREACHABLE, Outcome.ALREADY_HELD, Outcome.NOT_HELD,
})
#: The same, by value: a str hashes in C, an Enum member in Python (Enum.__hash__), and this
#: is asked on every decision (issue #15).
_UNCHANGED_VALUES = frozenset(o._value_ for o in UNCHANGED)
#: The FleetLock actions whose unchanged answers are summarised (operator actions never).
POLLS = frozenset({"pre-reboot", "steady-state"})
#: Nodes remembered (per process) with the unchanged answer they last got: about 600 bytes
#: each. Past this, the least recently heard from is forgotten, and its next answer is
#: logged again as a first one: more lines, never a lost one.
REMEMBER = 16384
#: A node's grant line says how long it had been refused before (``waited_s``).
_REFUSED = UNCHANGED - {Outcome.ALREADY_HELD, Outcome.NOT_HELD}


@dataclass(slots=True)
class _Seen:
    """The unchanged answer a node last got in a group, since when, and the summary period
    in which it was last counted."""

    answer: tuple[str, Outcome]
    since: float
    period: int


@dataclass
class _Tally:
    """One group's unchanged answers in the current summary period."""

    count: int = 0
    nodes: int = 0
    logged: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


class DecisionLog:
    """The decision lines, written in batches.

    Building a LogRecord, formatting it and writing it to stderr for each decision cost
    about a third of a request's time, so lines are formatted directly and written at most
    every ``interval`` seconds (and at exit), in the same text or JSON shape as every other
    log line. ``clock`` (wall-clock seconds) stamps lines and measures summary periods.
    """

    def __init__(
        self,
        interval: float = 0.05,
        clock: Callable[[], float] = time.time,
        summary_interval: float = 60.0,
        every_decision: bool = False,
        remember: int = REMEMBER,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.summary_interval = summary_interval
        self.every_decision = every_decision
        self.remember = remember
        self.fmt = "text"
        self._text = TextFormatter()
        #: (action, group, outcome, level) -> the text line's head after its time stamp.
        self._heads: dict[tuple[str, str, str, int], str] = {}
        self._buffer: list[str] = []
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._seen: OrderedDict[tuple[str, str], _Seen] = OrderedDict()
        self._tallies: dict[str, _Tally] = {}
        self._period = 0
        self._period_started: float | None = None  # None: no repeat counted yet
        self._summary_timer: asyncio.TimerHandle | None = None

    def configure(
        self, fmt: str, every_decision: bool = False, summary_interval: float = 60.0
    ) -> None:
        self.fmt = fmt
        self.every_decision = every_decision
        self.summary_interval = summary_interval

    def __call__(self, d: Decision) -> None:
        level = logging.WARNING if d.error else logging.INFO
        if not decisions.isEnabledFor(level):
            return
        now = self.clock()
        if self._period_started is not None and now - self._period_started >= self.summary_interval:
            self.summarise()  # the timer did not run (no loop, or a busy one)
        waited = None
        if d.id is not None and d.outcome is not None and not self.every_decision:
            if d.outcome._value_ in _UNCHANGED_VALUES and d.action in POLLS:
                if self._repeat(d, now):
                    return
            elif d.outcome is Outcome.GRANTED or d.outcome is Outcome.RELEASED:
                seen = self._seen.pop((d.group, d.id), None)
                if seen is not None and d.outcome is Outcome.GRANTED \
                        and seen.answer[1] in _REFUSED:
                    waited = now - seen.since
        self._line(d, level, now, waited)

    def _repeat(self, d: Decision, now: float) -> bool:
        """Count an unchanged answer; True if it was given to this node before (no line)."""
        assert d.id is not None and d.outcome is not None
        outcome = d.outcome
        key = (d.group, d.id)
        answer = (d.action, outcome)
        tally = self._tallies.get(d.group)
        if tally is None:
            tally = self._tallies[d.group] = _Tally()
        tally.count += 1
        # _value_: what Enum's (Python-level) value property returns.
        tally.outcomes[outcome._value_] += 1
        if self._period_started is None:
            self._start_period(now)
        seen = self._seen.get(key)
        if seen is None or seen.answer != answer:
            tally.nodes += 1
            tally.logged += 1
            self._seen[key] = _Seen(answer, now, self._period)
            self._seen.move_to_end(key)
            if len(self._seen) > self.remember:
                self._seen.popitem(last=False)
            return False
        self._seen.move_to_end(key)
        if seen.period != self._period:
            seen.period = self._period
            tally.nodes += 1
        return True

    def _start_period(self, now: float) -> None:
        self._period_started = now
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: summarised by the next decision after the interval
            return
        self._summary_timer = loop.call_later(self.summary_interval, self.summarise)

    def summarise(self) -> None:
        """One line per group whose unchanged answers were not all logged in this period."""
        if self._summary_timer is not None:
            self._summary_timer.cancel()
            self._summary_timer = None
        started, self._period_started = self._period_started, None
        tallies, self._tallies = self._tallies, {}
        self._period += 1
        if started is None:
            return
        now = self.clock()
        seconds = round(now - started, 3)
        for group, t in tallies.items():
            if t.count == t.logged:
                continue  # nothing held back: every answer had its own line
            fields: dict[str, Any] = {
                "event": "decision_summary", "group": group, "seconds": seconds,
                "count": t.count, "nodes": t.nodes, "logged": t.logged, **t.outcomes,
            }
            msg = (f"summary {group}: {t.count} answers that changed nothing, to {t.nodes} "
                   f"nodes, in {seconds:g}s; {t.logged} logged one by one")
            self._write(now, logging.INFO, msg, fields)

    def _line(self, d: Decision, level: int, now: float, waited: float | None) -> None:
        outcome = d.outcome.value if d.outcome else "error"
        if self.fmt == "text" and not d.extra:
            self._emit(self._text_line(d, level, now, outcome, waited))
            return
        self._write(now, level, f"{d.action} {d.group} {outcome}",
                    _fields(d, outcome, waited))

    def _text_line(
        self, d: Decision, level: int, now: float, outcome: str, waited: float | None
    ) -> str:
        """The text line of a decision without ``extra`` (every node's grant, release and
        refusal), built from a cached head per group rather than a dict of fields rendered
        one by one: the same bytes as :func:`_fields` through :func:`render_fields`
        (tests/test_decisionlog.py compares them), with less work per line. Hand-written:
        no logging library formats a line this narrow any faster."""
        key = (d.action, d.group, outcome, level)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= self.remember:
                self._heads.clear()  # bounded; rebuilt on the next line of each group
            head = self._heads[key] = (
                f" {logging.getLevelName(level)} {decisions.name}: {d.action} {d.group} "
                f"{outcome} action={render_value(d.action)} group={render_value(d.group)} "
                f"outcome={render_value(outcome)} attempts="
            )
        line = f"{self._text.stamp(now)}{head}{d.attempts!r} ms={round(d.seconds * 1000, 3)!r}"
        if d.id is not None:
            line += f" id={render_value(d.id)}"
        if d.error is not None:
            line += f" kind={render_value(d.error.value)}"
        sem = d.semaphore
        if sem is not None:
            line += f" holders={len(sem.holders)!r} slots={sem.slots!r}"
        if waited is not None:
            line += f" waited_s={round(waited, 3)!r}"
        return line

    def _write(self, now: float, level: int, msg: str, fields: dict[str, Any]) -> None:
        name = logging.getLevelName(level)
        if self.fmt == "json":
            line = json_line(now, name, decisions.name, msg, fields)
        else:
            stamp = self._text.stamp(now)
            line = f"{stamp} {name} {decisions.name}: {msg} {render_fields(fields)}"
        self._emit(line)

    def _emit(self, line: str) -> None:
        self._buffer.append(line + "\n")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: write now
            self.flush()
            return
        if self._flush_loop is not loop:  # none scheduled, or on a loop that is gone
            loop.call_later(self.interval, self.flush)
            self._flush_loop = loop

    def flush(self) -> None:
        self._flush_loop = None
        if self._buffer:
            data, self._buffer = "".join(self._buffer), []
            sys.stderr.write(data)
            sys.stderr.flush()

    def close(self) -> None:
        """At exit: the summary of the period so far, and every line still buffered."""
        self.summarise()
        self.flush()


def _fields(d: Decision, outcome: str, waited: float | None) -> dict[str, Any]:
    """A decision line's fields, in their order."""
    fields: dict[str, Any] = {
        "action": d.action,
        "group": d.group,
        "outcome": outcome,
        "attempts": d.attempts,
        "ms": round(d.seconds * 1000, 3),
    }
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
    return fields


#: The observer the service calls for every decision.
log_decision = DecisionLog()
atexit.register(log_decision.close)
