"""The structured line written for every lock decision, in the shapes of :mod:`lockd.logs`."""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import Any

from lockd.logs import TextFormatter, json_line, render_fields
from lockd.service import Decision

decisions = logging.getLogger("lockd.decision")


class DecisionLog:
    """The per-decision lines, written in batches.

    A poll that changes nothing is the commonest request in a fleet, and building a
    LogRecord, formatting it and writing it to stderr for each one cost about a third of a
    request's time. Lines are formatted directly and written at most every ``interval``
    seconds (and at exit), in the same text or JSON shape as every other log line.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.fmt = "text"
        self._text = TextFormatter()
        self._buffer: list[str] = []
        self._flush_loop: asyncio.AbstractEventLoop | None = None

    def configure(self, fmt: str) -> None:
        self.fmt = fmt

    def __call__(self, d: Decision) -> None:
        level = logging.WARNING if d.error else logging.INFO
        if not decisions.isEnabledFor(level):
            return
        outcome = d.outcome.value if d.outcome else "error"
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
        fields.update(d.extra)
        now = time.time()
        name = logging.getLevelName(level)
        msg = f"{d.action} {d.group} {outcome}"
        if self.fmt == "json":
            line = json_line(now, name, decisions.name, msg, fields)
        else:
            stamp = self._text.stamp(now)
            line = f"{stamp} {name} {decisions.name}: {msg} {render_fields(fields)}"
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


#: The observer the service calls for every decision.
log_decision = DecisionLog()
atexit.register(log_decision.flush)
