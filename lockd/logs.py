"""Logging set-up: one text and one JSON line shape for everything lockd logs."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"asctime", "message"}


def json_line(created: float, level: str, logger: str, msg: str, fields: dict[str, Any]) -> str:
    """One JSON log line; every JSON line lockd writes has this shape."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    doc = {"ts": f"{ts}.{int(created % 1 * 1000):03d}Z", "level": level.lower(),
           "logger": logger, "msg": msg, **fields}
    return json.dumps(doc, default=str)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record."""
    return {k: v for k, v in vars(record).items() if k not in _RESERVED}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = extra_fields(record)
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json_line(record.created, record.levelname, record.name, record.getMessage(),
                         fields)


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
        fields = extra_fields(record)
        return f"{line} {render_fields(fields)}" if fields else line


_BARE = re.compile(r"[\w.:/@+-]+")


def render_fields(fields: dict[str, Any]) -> str:
    """``key=value ...`` as text lines end."""
    return " ".join(f"{k}={render_value(v)}" for k, v in fields.items())


def render_value(value: Any) -> str:
    """A value as it reads best in a key=value line; quoted (JSON) when it must be."""
    if isinstance(value, str) and _BARE.fullmatch(value):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return json.dumps(value, default=str)


def setup(fmt: str = "text", level: str = "info") -> None:
    """Every lockd log line goes to stderr, as text or JSON (decision lines: see
    :meth:`lockd.decisionlog.DecisionLog.configure`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

