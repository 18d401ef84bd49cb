"""Weekly reboot windows: pure wall-clock arithmetic, the clock passed in.

A window is a stretch of **wall-clock** time in its own IANA time zone, starting at ``start``
on each of its ``days`` and lasting ``length``; it may cross midnight and the end of the week.
An instant is inside the window when its local wall-clock time (weekday and time of day, in
the window's zone) falls in ``[start, start + length)`` of one of those days. This is
zincati's rule for ``[updates.periodic]`` windows (and locksmith's before it): the clock on
the wall is obeyed, so on daylight-saving days a window is as long as the wall clock says:

- spring forward: the skipped hour is never inside a window, so a window across it is
  shortened by it, and a window entirely inside it does not happen that day; one that
  starts in it opens when the clocks jump (02:30 -> opens at 03:00);
- fall back: the repeated hour is inside a window both times it happens, so a window across
  it is lengthened by it.

Windows in UTC (the default zone) never move. See docs/policy.md.

Nothing here reads a clock: every function takes ``now`` (epoch seconds). Reading the zone
database (``zoneinfo``, with the ``tzdata`` package as a fallback) is data, not I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lockd.durations import format_duration, parse_duration

DAY = 86400
WEEK = 7 * DAY
#: How far ahead the next opening is looked for: a week and a DST-skipped window of slack.
HORIZON = 15 * DAY
DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_ABBREV = tuple(d[:3].capitalize() for d in DAY_NAMES)
_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError if the zone database has no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


def parse_days(value: object) -> tuple[int, ...]:
    """Weekdays (0 = Monday) from ``["Sat", "Sunday"]``, ``"Sat,Sun"``, ``"Mon-Fri"`` or
    ``"daily"``.

    Names are C-locale English, in full or their first three letters, in any case.
    """
    if isinstance(value, str) and value.strip().lower() == "daily":
        return tuple(range(7))
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError("days must be a non-empty list of weekday names, e.g. ['Sat', 'Sun']")
    days: set[int] = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"days: {item!r} is not a weekday name")
        first, dash, last = item.strip().partition("-")
        a = _day(first)
        if dash:
            b = _day(last)
            days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
        else:
            days.add(a)
    return tuple(sorted(days))


def _day(name: str) -> int:
    key = name.strip().lower()
    for i, full in enumerate(DAY_NAMES):
        if key in (full, full[:3]):
            return i
    raise ValueError(f"{name!r} is not a weekday (Mon..Sun or Monday..Sunday)")


def parse_time(text: str) -> int:
    """Seconds after midnight from ``"HH:MM"`` or ``"HH:MM:SS"`` (24-hour clock)."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"start time {text!r} must be HH:MM on a 24-hour clock, e.g. '23:30'")
    h, m, s = int(match[1]), int(match[2]), int(match[3] or 0)
    if h > 23 or m > 59 or s > 59:
        raise ValueError(f"start time {text!r} is not a time of day")
    return h * 3600 + m * 60 + s


def format_instant(ts: float, zone_name: str) -> str:
    """ISO 8601 with the offset and the zone name (RFC 9557):
    ``2026-12-05T23:00:00+01:00[Europe/Berlin]``."""
    local = datetime.fromtimestamp(ts, zone(zone_name))
    return f"{local.isoformat(timespec='seconds')}[{zone_name}]"


def _wall(ts: float, tz: ZoneInfo) -> float:
    """Seconds since Monday 00:00 on the wall clock of ``tz`` at instant ``ts``."""
    local = datetime.fromtimestamp(ts, tz)
    return (
        local.weekday() * DAY + local.hour * 3600 + local.minute * 60 + local.second
        + local.microsecond / 1e6
    )


@dataclass(frozen=True)
class Window:
    """One weekly window: on each of ``days`` (0 = Monday) from ``start`` (seconds after
    local midnight) for ``length`` seconds of wall-clock time, in time zone ``zone``."""

    days: tuple[int, ...]
    start: int
    length: int
    zone: str = "UTC"

    def __post_init__(self) -> None:
        if not self.days or any(not 0 <= d <= 6 for d in self.days):
            raise ValueError("a window needs at least one weekday")
        if not 0 <= self.start < DAY:
            raise ValueError("a window's start must be a time of day")
        if not 0 < self.length <= WEEK:
            raise ValueError("a window's length must be more than 0 and at most a week")
        zone(self.zone)

    def contains(self, now: float) -> bool:
        wall = _wall(now, zone(self.zone))
        return any((wall - (d * DAY + self.start)) % WEEK < self.length for d in self.days)

    def describe(self) -> str:
        """``Sat,Sun 23:30 +1h30m Europe/Berlin``; the same text parses back."""
        days = "daily" if len(self.days) == 7 else ",".join(_ABBREV[d] for d in self.days)
        h, rest = divmod(self.start, 3600)
        m, s = divmod(rest, 60)
        start = f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")
        return f"{days} {start} +{format_duration(self.length)} {self.zone}"

    def boundaries(self, after: float, until: float) -> Iterator[float]:
        """Every instant in ``(after, until]`` at which this window could open or close: its
        starts and ends on the wall clock, each taken in both folds of an ambiguous or
        skipped local time. Between two such instants (and the zone's offset changes) the
        window does not change."""
        tz = zone(self.zone)
        first = datetime.fromtimestamp(after, tz).date() - timedelta(days=8)
        last = datetime.fromtimestamp(until, tz).date() + timedelta(days=1)
        day = first
        while day <= last:
            if day.weekday() in self.days:
                begin = datetime(day.year, day.month, day.day) + timedelta(seconds=self.start)
                for naive in (begin, begin + timedelta(seconds=self.length)):
                    for fold in (0, 1):
                        ts = naive.replace(tzinfo=tz, fold=fold).timestamp()
                        if after < ts <= until:
                            yield ts
            day += timedelta(days=1)


def _offset_changes(zone_name: str, after: float, until: float) -> Iterator[float]:
    """The instants in ``(after, until]`` at which ``zone_name``'s UTC offset changes
    (found by hourly samples, then bisection to the second)."""
    tz = zone(zone_name)

    def offset(ts: float) -> timedelta | None:
        return datetime.fromtimestamp(ts, tz).utcoffset()

    lo = int(after)
    before = offset(lo)
    while lo < until:
        hi = min(lo + 3600, int(until) + 1)
        now = offset(hi)
        if now != before:
            a, b = lo, hi  # offset(a) == before, offset(b) != before
            while b - a > 1:
                mid = (a + b) // 2
                if offset(mid) == before:
                    a = mid
                else:
                    b = mid
            if after < b <= until:
                yield float(b)
            before = now
        lo = hi


@dataclass(frozen=True)
class Schedule:
    """A group's reboot windows. No windows: always open."""

    windows: tuple[Window, ...] = ()
    # (kind, valid from, answer): the last next-open/next-close answer, exact for any
    # ``now`` in [valid from, answer), so a storm of refusals computes it once.
    _memo: dict[str, tuple[float, float]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __bool__(self) -> bool:
        return bool(self.windows)

    def is_open(self, now: float) -> bool:
        return not self.windows or any(w.contains(now) for w in self.windows)

    def window_at(self, now: float) -> Window | None:
        """The first window that contains ``now``."""
        return next((w for w in self.windows if w.contains(now)), None)

    def next_open(self, now: float) -> float | None:
        """When a grant is next allowed: ``now`` if open, else the instant the next window
        opens; None if none opens within :data:`HORIZON`."""
        if self.is_open(now):
            return now
        return self._next_change("open", now, want_open=True)

    def next_close(self, now: float) -> float | None:
        """When the open window(s) covering ``now`` close; None when closed now, or open
        throughout :data:`HORIZON` (no windows, or windows that cover the whole week)."""
        if not self.windows or not self.is_open(now):
            return None
        return self._next_change("close", now, want_open=False)

    def _next_change(self, kind: str, now: float, want_open: bool) -> float | None:
        memo = self._memo.get(kind)
        if memo is not None and memo[0] <= now < memo[1]:
            return memo[1]
        until = now + HORIZON
        candidates: set[float] = set()
        for w in self.windows:
            candidates.update(w.boundaries(now, until))
        for name in {w.zone for w in self.windows}:
            candidates.update(_offset_changes(name, now, until))
        for ts in sorted(candidates):
            if self.is_open(ts) is want_open:
                self._memo[kind] = (now, ts)
                return ts
        return None

    def describe(self) -> list[str]:
        return [w.describe() for w in self.windows]


# Configuration forms


def parse_window(value: object) -> Window:
    """One window from configuration, in any of the accepted forms:

    - a table: ``{days = ["Sat", "Sun"], start = "23:30", length = "1h30m",
      time_zone = "Europe/Berlin"}``; zincati's names ``start_time`` and ``length_minutes``
      are accepted too; ``days`` may be left out for every day;
    - locksmith's: ``{start = "Thu 23:00", length = "1h30m"}`` (the day inside ``start``);
    - one string: ``"Sat,Sun 23:30 1h30m Europe/Berlin"``, ``"Thu 23:00 1h30m"``,
      ``"02:00 30m"`` (every day, UTC).
    """
    if isinstance(value, str):
        return _window_from_text(value)
    if not isinstance(value, dict):
        raise ValueError("a window is a table (days, start, length, time_zone) or a string")
    known = {"days", "start", "start_time", "length", "length_minutes", "time_zone"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(
            f"unknown window key {unknown[0]!r} (a window has days, start, length, time_zone)"
        )
    start = value.get("start", value.get("start_time"))
    if not isinstance(start, str):
        raise ValueError("a window needs start = 'HH:MM' (or locksmith's 'Thu 23:00')")
    day_text, _, clock = start.strip().rpartition(" ")
    days: tuple[int, ...] = tuple(range(7))
    if day_text and "days" in value:
        raise ValueError(f"give the day in days or in start ({start!r}), not in both")
    if day_text:
        days = parse_days(day_text)
    elif "days" in value:
        days = parse_days(value["days"])
    if "length_minutes" in value:
        minutes = value["length_minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0:
            raise ValueError("length_minutes must be a whole number of minutes above 0")
        length = minutes * 60.0
    elif "length" in value:
        length = parse_duration(value["length"])
    else:
        raise ValueError("a window needs a length, e.g. length = '1h30m'")
    tz = value.get("time_zone", "UTC")
    if not isinstance(tz, str):
        raise ValueError("time_zone must be an IANA zone name")
    return _window(days, parse_time(clock), length, tz)


def _window_from_text(text: str) -> Window:
    words = text.split()
    days: tuple[int, ...] = tuple(range(7))
    if words and ":" not in words[0]:
        days = parse_days(words.pop(0))
    if len(words) not in (2, 3):
        raise ValueError(
            f"window {text!r}: expected '[DAYS] HH:MM LENGTH [TIME_ZONE]', e.g. "
            "'Sat,Sun 23:30 1h30m Europe/Berlin'"
        )
    tz = words[2] if len(words) == 3 else "UTC"
    return _window(days, parse_time(words[0]), parse_duration(words[1].lstrip("+")), tz)


def _window(days: tuple[int, ...], start: int, length: float, tz: str) -> Window:
    if length <= 0 or length > WEEK:
        raise ValueError("a window's length must be more than 0 and at most 7 days")
    if length != int(length):
        raise ValueError("a window's length must be whole seconds")
    zone(tz)
    return Window(days=days, start=start, length=int(length), zone=tz)


def parse_schedule(value: Any) -> Schedule:
    """``windows`` from configuration: a list of windows, or one string of windows
    separated by ``;`` (the environment's and ``--set``'s form)."""
    items: Iterable[Any]
    if isinstance(value, str):
        items = [part for part in value.split(";") if part.strip()]
    elif isinstance(value, dict):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError("windows must be a list of windows")
    windows = []
    for i, item in enumerate(items):
        try:
            windows.append(parse_window(item))
        except ValueError as exc:
            raise ValueError(f"window {i + 1}: {exc}") from None
    return Schedule(tuple(windows))

