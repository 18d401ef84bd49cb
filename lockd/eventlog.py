"""Logging set-up and the structured line written for every lock decision."""

from __future__ import annotations

import json
import logging
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
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _RESERVED}
        if fields:
            line += " " + " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())
        return line


def setup(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_decision(d: Decision) -> None:
    """One line per decision: grant, re-grant, release, deny, error, operator action."""
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
    level = logging.WARNING if d.error else logging.INFO
    decisions.log(level, "%s %s %s", d.action, d.group, outcome, extra=fields)
