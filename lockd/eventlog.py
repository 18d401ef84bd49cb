"""Logging set-up and the structured line written for every lock decision."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import re
import sys
import time
from typing import Any

from lockd.service import Decision

decisions = logging.getLogger("lockd.decision")

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"asctime", "message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``; cheap, since it runs per decision."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._stamp_second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        # strftime once a second, not once a line.
        second = int(created)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int(created % 1 * 1000):03d}"


    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{k}={_render(v)}" for k, v in vars(record).items() if k not in _RESERVED]
        return f"{line} {' '.join(fields)}" if fields else line


_BARE = re.compile(r"^[\w.:/@+-]+$")


def _render(value: Any) -> str:
    """A value as it reads best in a key=value line; quoted (JSON) when it must be."""
    if isinstance(value, str) and _BARE.match(value):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return json.dumps(value, default=str)


def setup(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _decision_log.configure(fmt)


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
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            doc = {"ts": f"{ts}.{int(now % 1 * 1000):03d}Z", "level": name.lower(),
                   "logger": decisions.name, "msg": msg, **fields}
            line = json.dumps(doc, default=str)
        else:
            stamp = self._text.stamp(now)
            rendered = " ".join(f"{k}={_render(v)}" for k, v in fields.items())
            line = f"{stamp} {name} {decisions.name}: {msg} {rendered}"
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


_decision_log = DecisionLog()
atexit.register(_decision_log.flush)
#: The observer the service calls for every decision.
log_decision = _decision_log
