"""Maintenance windows: when an environment may be taken down, and the next time an upgrade of a
given expected length fits in one.

Pure logic (no I/O): windows are wall-clock times in a time zone, so a window keeps its local hours
across a daylight-saving change and is an hour shorter or longer on the night of the change.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HORIZON_DAYS = 56
"""How far ahead a fitting window is looked for: eight weeks of a weekly pattern (a daylight-saving
change shortens a window once; the week after, it fits again)."""


class WindowError(ValueError):
    """No window can ever hold the expected duration; the message says which and by how much."""


@dataclass(frozen=True)
class Window:
    """Opens at `start` (local time) on each of `days` and closes at `end`; an end at or before the
    start is on the next day (22:00-04:00 crosses midnight)."""

    days: frozenset[int]
    start: time
    end: time
    timezone: str

    def describe(self) -> str:
        days = ",".join(DAYS[d] for d in sorted(self.days))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.timezone}"

    def occurrences(self, first: date, last: date) -> Iterator[tuple[datetime, datetime]]:
        """(opens, closes) in UTC for each day from `first` to `last` (local dates) it opens on."""
        zone = ZoneInfo(self.timezone)
        day = first
        while day <= last:
            if day.weekday() in self.days:
                closes_on = day if self.end > self.start else day + timedelta(days=1)
                yield (utc(datetime.combine(day, self.start, tzinfo=zone)),
                       utc(datetime.combine(closes_on, self.end, tzinfo=zone)))
            day += timedelta(days=1)


def utc(moment: datetime) -> datetime:
    """The instant of a local wall-clock time (a time in a spring-forward gap counts as the instant
    after the gap; one in the repeated autumn hour, as its first occurrence)."""
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Slot:
    """Where an upgrade goes: start now or at `starts`, inside a window that closes at `closes`."""

    starts: datetime
    opens: datetime
    closes: datetime

    def to_dict(self) -> dict:
        return {key: getattr(self, key).isoformat(timespec="seconds") for key in ("starts", "opens", "closes")}


def open_periods(windows: Iterable[Window], now: datetime) -> list[tuple[datetime, datetime]]:
    """Every window's occurrences from a day before `now` to the horizon, overlapping or touching
    ones merged (Saturday 00:00-24:00 and Sunday 00:00-24:00 are one weekend)."""
    first, last = (now - timedelta(days=2)).date(), (now + timedelta(days=HORIZON_DAYS)).date()
    periods = sorted(period for window in windows for period in window.occurrences(first, last))
    merged: list[tuple[datetime, datetime]] = []
    for opens, closes in periods:
        if merged and opens <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], closes))
        else:
            merged.append((opens, closes))
    return [(opens, closes) for opens, closes in merged if closes > now]


def next_slot(windows: Iterable[Window], now: datetime, expected: timedelta) -> Slot:
    """Now, when `now` is inside a window with `expected` left before it closes; else the opening of
    the first window long enough. Raises WindowError when none is, within the horizon."""
    windows = list(windows)
    periods = open_periods(windows, now)
    for opens, closes in periods:
        starts = max(opens, now)
        if starts + expected <= closes:
            return Slot(starts, opens, closes)
    longest = max((closes - opens for opens, closes in periods), default=timedelta(0))
    raise WindowError(
        f"no maintenance window in the next {HORIZON_DAYS} days is long enough for the expected "
        f"{minutes(expected)} min (the longest is {minutes(longest)} min: "
        f"{'; '.join(w.describe() for w in windows)}). Widen a window, lower expected_minutes, or "
        "trigger with the param window_override (a reason) to go now")


def minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:g}"


def expected_duration(past_seconds: list[float], default_minutes: float) -> tuple[timedelta, str]:
    """The median of past runs' durations of the phase, else the configured default; and what it
    was based on (shown in the log)."""
    past = [s for s in past_seconds if s and s > 0]
    if not past:
        return timedelta(minutes=default_minutes), f"the configured default ({default_minutes:g} min)"
    median = statistics.median(past)
    return timedelta(seconds=median), f"the median of {len(past)} past run(s) ({median / 60:.1f} min)"


def parse_clock(text: str) -> time:
    """HH:MM (24 h); 24:00 is midnight at the end of the day."""
    text = str(text).strip()
    if text == "24:00":
        return time(0, 0)
    hours, _, mins = text.partition(":")
    if not (hours.isdigit() and mins.isdigit() and len(mins) == 2 and int(hours) < 24 and int(mins) < 60):
        raise ValueError(f"{text!r} is not a time of day HH:MM (e.g. 22:00)")
    return time(int(hours), int(mins))
