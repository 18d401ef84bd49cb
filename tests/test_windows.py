"""Reboot-window arithmetic with a fake clock: every instant is passed in.

The rule under test (docs/policy.md, zincati's): a window is wall-clock time in its zone, so a
spring-forward day shortens or skips it and a fall-back day lengthens it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from lockd.windows import (
    Schedule,
    Window,
    format_instant,
    parse_days,
    parse_schedule,
    parse_window,
)


def at(text: str, zone: str = "UTC", fold: int = 0) -> float:
    """An instant from a local wall-clock time: ``at("2026-12-05 23:00", "Europe/Berlin")``."""
    naive = datetime.fromisoformat(text)
    return naive.replace(tzinfo=ZoneInfo(zone), fold=fold).timestamp()


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def schedule(*texts: str) -> Schedule:
    return parse_schedule(list(texts))


# 2026-12-07 is a Monday.


def test_boundaries_are_half_open() -> None:
    s = schedule("Mon 10:00 1h")
    assert not s.is_open(at("2026-12-07 09:59:59"))
    assert s.is_open(at("2026-12-07 10:00:00"))
    assert s.is_open(at("2026-12-07 10:59:59"))
    assert not s.is_open(at("2026-12-07 11:00:00"))
    assert s.next_open(at("2026-12-07 09:00")) == at("2026-12-07 10:00")
    assert s.next_open(at("2026-12-07 10:20")) == at("2026-12-07 10:20")  # open: now
    assert s.next_close(at("2026-12-07 10:20")) == at("2026-12-07 11:00")
    assert s.next_close(at("2026-12-07 12:00")) is None  # closed: nothing to close
    # just after it closes, the next one is a week later
    assert s.next_open(at("2026-12-07 11:00")) == at("2026-12-14 10:00")


def test_a_window_crossing_midnight_belongs_to_its_start_day() -> None:
    s = schedule("Sat 23:30 1h")  # Sat 2026-12-12 23:30 .. Sun 00:30
    assert s.is_open(at("2026-12-12 23:45"))
    assert s.is_open(at("2026-12-13 00:15"))
    assert not s.is_open(at("2026-12-13 00:30"))
    assert not s.is_open(at("2026-12-11 23:45"))  # a Friday night is not a Saturday one
    assert s.next_close(at("2026-12-13 00:00")) == at("2026-12-13 00:30")


def test_a_window_crossing_the_end_of_the_week() -> None:
    s = schedule("Sun 23:00 2h")
    assert s.is_open(at("2026-12-14 00:30"))  # Monday morning
    assert not s.is_open(at("2026-12-14 01:00"))
    assert s.next_open(at("2026-12-14 02:00")) == at("2026-12-20 23:00")


def test_several_windows_and_overlaps() -> None:
    s = schedule("Wed 01:00 30m", "Sat,Sun 23:30 1h")
    assert s.next_open(at("2026-12-09 02:00")) == at("2026-12-12 23:30")  # Wed -> Sat
    assert s.next_open(at("2026-12-13 00:45")) == at("2026-12-13 23:30")  # Sun night
    assert s.next_open(at("2026-12-14 01:00")) == at("2026-12-16 01:00")  # -> Wed
    overlapping = schedule("10:00 1h", "10:30 1h")  # every day
    assert overlapping.next_close(at("2026-12-07 10:10")) == at("2026-12-07 11:30")
    assert overlapping.next_open(at("2026-12-07 12:00")) == at("2026-12-08 10:00")


def test_time_zones() -> None:
    berlin = schedule("Sat 02:00 1h Europe/Berlin")  # winter: UTC+1
    assert berlin.next_open(at("2026-12-07 00:00")) == at("2026-12-12 01:00")
    assert berlin.next_open(at("2026-07-06 00:00")) == at("2026-07-11 00:00")  # summer: +2
    kolkata = schedule("Mon 00:00 30m Asia/Kolkata")  # +05:30, crossing the UTC date
    assert kolkata.is_open(at("2026-12-06 18:40"))  # Sunday evening in UTC
    assert not kolkata.is_open(at("2026-12-06 19:00"))
    both = schedule("Sat 02:00 1h Europe/Berlin", "Sat 00:30 15m UTC")
    assert both.next_open(at("2026-12-12 00:00")) == at("2026-12-12 00:30")
    assert both.next_open(at("2026-12-12 00:45")) == at("2026-12-12 02:00", "Europe/Berlin")


def test_format_instant_carries_offset_and_zone() -> None:
    ts = at("2026-12-12 02:00", "Europe/Berlin")
    assert format_instant(ts, "Europe/Berlin") == "2026-12-12T02:00:00+01:00[Europe/Berlin]"
    assert format_instant(ts, "UTC") == "2026-12-12T01:00:00+00:00[UTC]"


# Daylight saving time in Europe/Berlin, 2026: spring forward on Sunday 29 March (02:00 CET
# becomes 03:00 CEST, at 01:00 UTC), fall back on Sunday 25 October (03:00 CEST becomes
# 02:00 CET, at 01:00 UTC).


def test_spring_forward_shortens_a_window_across_the_skipped_hour() -> None:
    s = schedule("Sun 01:30 1h Europe/Berlin")  # would end at 02:30, which never happens
    opens = s.next_open(at("2026-03-28 12:00", "Europe/Berlin"))
    assert utc(opens) == "2026-03-29 00:30:00"  # 01:30 CET
    closes = s.next_close(opens)
    assert utc(closes) == "2026-03-29 01:00:00"  # the jump to 03:00 CEST
    assert closes - opens == 30 * 60


def test_spring_forward_opens_a_window_starting_in_the_gap_at_the_jump() -> None:
    s = schedule("Sun 02:30 1h Europe/Berlin")
    opens = s.next_open(at("2026-03-28 12:00", "Europe/Berlin"))
    assert format_instant(opens, "Europe/Berlin") == "2026-03-29T03:00:00+02:00[Europe/Berlin]"
    assert format_instant(s.next_close(opens), "Europe/Berlin") == \
        "2026-03-29T03:30:00+02:00[Europe/Berlin]"


def test_spring_forward_skips_a_window_inside_the_gap() -> None:
    s = schedule("Sun 02:10 20m Europe/Berlin")
    opens = s.next_open(at("2026-03-28 12:00", "Europe/Berlin"))
    assert format_instant(opens, "Europe/Berlin") == "2026-04-05T02:10:00+02:00[Europe/Berlin]"


def test_fall_back_lengthens_a_window_across_the_repeated_hour() -> None:
    s = schedule("Sun 02:00 1h Europe/Berlin")  # 02:00-03:00 happens twice
    opens = s.next_open(at("2026-10-24 12:00", "Europe/Berlin"))
    assert format_instant(opens, "Europe/Berlin") == "2026-10-25T02:00:00+02:00[Europe/Berlin]"
    closes = s.next_close(opens)
    assert format_instant(closes, "Europe/Berlin") == "2026-10-25T03:00:00+01:00[Europe/Berlin]"
    assert closes - opens == 2 * 3600
    # both 02:30s are inside
    assert s.is_open(at("2026-10-25 02:30", "Europe/Berlin", fold=0))
    assert s.is_open(at("2026-10-25 02:30", "Europe/Berlin", fold=1))


def test_fall_back_reopens_a_window_that_starts_in_the_repeated_hour() -> None:
    s = schedule("Sun 02:30 1h Europe/Berlin")
    opens = s.next_open(at("2026-10-24 12:00", "Europe/Berlin"))
    assert utc(opens) == "2026-10-25 00:30:00"  # 02:30 CEST
    first_close = s.next_close(opens)
    assert utc(first_close) == "2026-10-25 01:00:00"  # back to 02:00 CET, before 02:30
    again = s.next_open(first_close)
    assert utc(again) == "2026-10-25 01:30:00"  # 02:30 CET
    assert utc(s.next_close(again)) == "2026-10-25 02:30:00"  # 03:30 CET


def test_memo_never_answers_for_another_time() -> None:
    s = schedule("Sat 23:30 1h Europe/Berlin", "Wed 01:00 30m")
    t = at("2026-12-07 00:00")
    first = s.next_open(t)
    for step in (0, 3600, 86400, first - t - 1, first - t, first - t + 1, 5 * 86400):
        fresh = Schedule(s.windows)
        assert s.next_open(t + step) == fresh.next_open(t + step)
        assert s.next_close(t + step) == fresh.next_close(t + step)


# The forms configuration accepts


def test_locksmiths_form() -> None:
    w = parse_window({"start": "Thu 23:00", "length": "1h30m"})
    assert w == Window(days=(3,), start=23 * 3600, length=5400, zone="UTC")
    s = Schedule((w,))
    assert s.is_open(at("2026-12-11 00:15"))  # Friday 00:15 UTC
    daily = parse_window({"start": "04:00", "length": "45m"})
    assert daily.days == tuple(range(7))


def test_zincatis_form() -> None:
    w = parse_window({"days": ["Sat", "Sunday"], "start_time": "23:30", "length_minutes": 60,
                      "time_zone": "America/Panama"})
    assert w == Window(days=(5, 6), start=23 * 3600 + 1800, length=3600, zone="America/Panama")


def test_text_form_round_trips() -> None:
    for text in ("Sat,Sun 23:30 +1h30m Europe/Berlin", "daily 02:00 +30m UTC",
                 "Mon,Tue,Wed,Thu,Fri 12:00:30 +1d UTC"):
        w = parse_window(text)
        assert parse_window(w.describe()) == w
    assert parse_window("Mon-Fri 12:00 1h").days == (0, 1, 2, 3, 4)
    assert parse_days("Fri-Mon") == (0, 4, 5, 6)
    assert parse_schedule("Sat 02:00 1h; Wed 01:00 30m Europe/Berlin").describe() == [
        "Sat 02:00 +1h UTC", "Wed 01:00 +30m Europe/Berlin"]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("Sat 25:00 1h", "not a time of day"),
        ("Sat 2am 1h", "HH:MM"),
        ("Caturday 02:00 1h", "not a weekday"),
        ("Sat 02:00 0s", "more than 0"),
        ("Sat 02:00 8d", "at most 7 days"),
        ("Sat 02:00 1h Mars/Olympus", "unknown time zone"),
        ("Sat 02:00", "expected"),
        ({"days": ["Sat"], "start": "Sun 02:00", "length": "1h"}, "not in both"),
        ({"start": "02:00"}, "needs a length"),
        ({"start": "02:00", "length": "1h", "tz": "UTC"}, "unknown window key 'tz'"),
        ({"start": "02:00", "length_minutes": 0}, "above 0"),
        ({"start": "02:00", "length": "soon"}, "duration"),
    ],
)
def test_bad_windows_say_why(value: object, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_window(value)


# Against brute force: minute by minute, whatever the zone and the day.

ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
                         "Asia/Kolkata"])
WINDOWS = st.builds(
    lambda days, minute, length, zone: Window(tuple(sorted(days)), minute * 60, length * 60,
                                              zone),
    st.sets(st.integers(0, 6), min_size=1, max_size=3),
    st.integers(0, 24 * 60 - 1),
    st.integers(1, 36 * 60),
    ZONES,
)
# Around both 2026 DST changes in Europe and North America, and an ordinary week.
STARTS = st.sampled_from([at("2026-03-06 00:00"), at("2026-03-27 00:00"),
                          at("2026-10-23 00:00"), at("2026-10-30 00:00"),
                          at("2026-12-07 00:00")])


@settings(max_examples=40, deadline=None)
@given(windows=st.lists(WINDOWS, min_size=1, max_size=3), start=STARTS,
       offset=st.integers(0, 3 * 86400 // 60))
def test_next_open_and_close_agree_with_a_minute_by_minute_scan(
    windows: list[Window], start: float, offset: int
) -> None:
    s = Schedule(tuple(windows))
    now = start + offset * 60
    state = s.is_open(now)
    change = s.next_close(now) if state else s.next_open(now)
    if change is None:  # open all along (windows covering the week)
        assert state and all(s.is_open(now + m * 60) for m in range(0, 8 * 1440, 7))
        return
    assert change > now and s.is_open(change) is not state
    # Every minute boundary (every window edge is on one, in every zone tested)
    # before the change has the state of now.
    first = int(now // 60 + 1) * 60
    assert all(s.is_open(t) is state for t in range(first, int(change), 60))
