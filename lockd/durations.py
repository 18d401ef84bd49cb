"""Durations in configuration: Go's form (``"1h30m"``, locksmith's ``REBOOT_WINDOW_LENGTH``)
or a number of seconds, and the short text lockd shows them as."""

from __future__ import annotations

import math
import re

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
#: Words that switch an optional duration off.
OFF = ("off", "none", "0", "")


def parse_duration(value: object) -> float:
    """Seconds from ``"1h30m"``, ``"90s"``, ``"2d"``, ``"1.5h"`` or a number of seconds.

    Raises ValueError with a message that says what is accepted.
    """
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '1h30m' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match[1]) * _UNITS[match[2]]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    "must be a duration such as '1h30m', '45m', '90s', '2d' or a number of "
                    "seconds"
                ) from None
    else:
        raise ValueError("must be a duration such as '1h30m' or a number of seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a duration of zero or more")
    return seconds


def parse_optional(value: object) -> float | None:
    """A duration that may be switched off (``"off"``, ``0``): None when off."""
    if isinstance(value, str) and value.strip().lower() in OFF:
        return None
    seconds = parse_duration(value)
    return seconds or None


def format_duration(seconds: float) -> str:
    """``5400 -> "1h30m"``; whole seconds, the largest units first."""
    s = round(seconds)
    if s <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, s = divmod(s, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
