"""When hxd's timers fire: a subset of systemd's ``OnCalendar=`` syntax, and plain intervals.

Operators already know systemd.time(7), so the smoke schedule is written the same way
(``*-*-* 00:03:00 UTC``, ``Mon..Fri 02:00``, ``daily``) and means the same thing. Supported: an optional weekday
list, an optional ``[year-]month-day`` date, a ``hour:minute[:second]`` time, an optional time zone (``UTC`` or an
IANA name; none means local time), and the shorthands minutely, hourly, daily, weekly, monthly, yearly. Each date
and time component is ``*``, a number, a list ``a,b``, a range ``a..b`` or a repetition ``a/step``.

Calendar timers are persistent, like ``Persistent=true``: the time of the last run is kept in a stamp file, and a run
missed while hxd was down happens once, soon after start (``next_run``). The arithmetic takes the clock and the
random source as arguments, so it is tested without waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hxd.core.atomic import replace_file

_WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_SHORTHANDS = {
    "minutely": "*-*-* *:*:00",
    "hourly": "*-*-* *:00:00",
    "daily": "*-*-* 00:00:00",
    "weekly": "Mon *-*-* 00:00:00",
    "monthly": "*-*-01 00:00:00",
    "yearly": "*-01-01 00:00:00",
    "annually": "*-01-01 00:00:00",
}
# How far ahead to look for a matching day: 8 years covers every Feb 29 and weekday combination.
_SEARCH_DAYS = 8 * 366


def _component(text: str, low: int, high: int, what: str) -> frozenset[int]:
    """Expand one date/time component (``*``, ``5``, ``1,15``, ``1..5``, ``0/15``, ``*/15``) to its values."""
    values: set[int] = set()
    for item in text.split(","):
        base, _, step_text = item.partition("/")
        try:
            if base == "*":
                start, stop = low, high
            elif ".." in base:
                first, last = base.split("..", 1)
                start, stop = int(first), int(last)
            else:
                start = int(base)
                stop = high if step_text else start
            step = int(step_text) if step_text else 1
        except ValueError:
            raise ValueError(f"{what} {text!r} is not a number, list, range or repetition") from None
        if not low <= start <= stop <= high or step < 1:
            raise ValueError(f"{what} {text!r} is outside {low}..{high}")
        values.update(range(start, stop + 1, step))
    return frozenset(values)


def _weekdays(text: str) -> frozenset[int]:
    days: set[int] = set()
    for item in text.lower().split(","):
        first, _, last = item.partition("..")
        try:
            start = _WEEKDAYS[first[:3]]
            stop = _WEEKDAYS[last[:3]] if last else start
        except KeyError:
            raise ValueError(f"weekday {item!r} is not one of Mon..Sun") from None
        days.update(range(start, stop + 1) if start <= stop else [*range(start, 7), *range(0, stop + 1)])
    return frozenset(days)


@dataclass(frozen=True)
class Calendar:
    """A parsed calendar spec; ``next_after`` gives the next matching instant."""

    spec: str
    weekdays: frozenset[int]
    years: frozenset[int] | None
    months: frozenset[int]
    days: frozenset[int]
    hours: tuple[int, ...]
    minutes: tuple[int, ...]
    seconds: tuple[int, ...]
    zone: tzinfo | None

    @classmethod
    def parse(cls, spec: str) -> Calendar:
        """Parse ``spec``; raises ValueError that says what part is wrong."""
        words = spec.split()
        if not words:
            raise ValueError("calendar spec is empty")
        zone: tzinfo | None = None
        if words[-1] == "UTC" or (words[-1][:1].isalpha() and "/" in words[-1]):
            zone = UTC if words[-1] == "UTC" else _zone(words[-1])
            words = words[:-1]
        if len(words) == 1 and words[0].lower() in _SHORTHANDS:
            words = _SHORTHANDS[words[0].lower()].split()
        weekdays = frozenset(range(7))
        if words and words[0][:1].isalpha():
            weekdays = _weekdays(words.pop(0))
        date_text = words.pop(0) if words and "-" in words[0] else "*-*-*"
        time_text = words.pop(0) if words else "00:00:00"
        if words:
            raise ValueError(f"calendar spec {spec!r}: unexpected {' '.join(words)!r}")
        date_parts = date_text.split("-")
        if len(date_parts) == 2:
            date_parts.insert(0, "*")
        time_parts = time_text.split(":")
        if len(date_parts) != 3 or len(time_parts) not in (2, 3):
            raise ValueError(f"calendar spec {spec!r}: expected [weekday] [year-]month-day hour:minute[:second]")
        if len(time_parts) == 2:
            time_parts.append("00")
        return cls(
            spec=spec,
            weekdays=weekdays,
            years=None if date_parts[0] == "*" else _component(date_parts[0], 1970, 2199, "year"),
            months=_component(date_parts[1], 1, 12, "month"),
            days=_component(date_parts[2], 1, 31, "day"),
            hours=tuple(sorted(_component(time_parts[0], 0, 23, "hour"))),
            minutes=tuple(sorted(_component(time_parts[1], 0, 59, "minute"))),
            seconds=tuple(sorted(_component(time_parts[2], 0, 59, "second"))),
            zone=zone,
        )

    def next_after(self, after: datetime) -> datetime:
        """The first matching instant strictly after ``after`` (an aware datetime), in UTC."""
        local = after.astimezone(self.zone) if self.zone else after.astimezone()
        day = local.date()
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day):
                found = self._first_time(day, local)
                if found is not None:
                    return found.astimezone(UTC)
            day += timedelta(days=1)
        raise ValueError(f"calendar spec {self.spec!r} never matches")

    def _day_matches(self, day: date) -> bool:
        return (
            day.weekday() in self.weekdays
            and day.month in self.months
            and day.day in self.days
            and (self.years is None or day.year in self.years)
        )

    def _first_time(self, day: date, after: datetime) -> datetime | None:
        for hour in self.hours:
            for minute in self.minutes:
                for second in self.seconds:
                    moment = datetime.combine(day, time(hour, minute, second), after.tzinfo)
                    if self.zone is None:
                        moment = moment.replace(tzinfo=None).astimezone()
                    if moment > after:
                        return moment
        return None


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"time zone {name!r} is unknown; use UTC or an IANA name such as Europe/Berlin") from None


@dataclass(frozen=True)
class Interval:
    """Every ``seconds``: the first run at start, then on the monotonic clock so runs never drift."""

    seconds: int


def randomized(moment: datetime, max_delay_sec: int, rng: random.Random) -> datetime:
    """Spread a calendar event like systemd's ``RandomizedDelaySec=``: a uniform delay in [0, max)."""
    if max_delay_sec <= 0:
        return moment
    return moment + timedelta(seconds=rng.uniform(0, max_delay_sec))


def next_run(
    calendar: Calendar, last_run: datetime | None, now: datetime, max_delay_sec: int, rng: random.Random
) -> datetime:
    """When a persistent calendar timer runs next, as systemd computes it for ``Persistent=true``.

    The next calendar event after the last run, randomized; if that moment has passed (hxd was down, or stopped
    before the delayed run), the run is due now: once, however many events were missed, because the run it starts
    becomes the new last run. Without a last run (first start) the next event after ``now``. A last run in the
    future (the clock was set back) counts as now, so the timer is not silenced until the clock catches up.
    """
    if last_run is None:
        return randomized(calendar.next_after(now), max_delay_sec, rng)
    due = randomized(calendar.next_after(min(last_run, now)), max_delay_sec, rng)
    return max(due, now).astimezone(UTC)


def read_stamp(path: Path) -> datetime | None:
    """The time in a stamp file written by ``write_stamp``; None when there is none or it is unreadable, which
    means "never ran" (no catch-up), as systemd treats a missing stamp."""
    try:
        moment = datetime.fromisoformat(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    return moment if moment.tzinfo is not None else None


def write_stamp(path: Path, moment: datetime) -> None:
    """Record ``moment`` in ``path`` as one ISO-8601 line (``2026-11-28T00:11:42Z``), atomically: a crash leaves
    the old stamp or the new one, never a torn one. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, f"{iso(moment)}\n".encode(), mode=0o644)


def iso(moment: datetime) -> str:
    """UTC ISO-8601 with a ``Z``: the one timestamp format hxd shows to people and scripts."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
