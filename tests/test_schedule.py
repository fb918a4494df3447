"""Calendar arithmetic with an injected clock: systemd.time(7) semantics for the subset hxd supports."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from hxd.core.schedule import Calendar, iso, randomized


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("spec", "after", "expected"),
    [
        ("*-*-* 00:03:00 UTC", "2026-11-27 04:10:00", "2026-11-28 00:03:00"),
        ("*-*-* 00:03:00 UTC", "2026-11-27 00:02:59", "2026-11-27 00:03:00"),
        ("*-*-* 00:03:00 UTC", "2026-11-27 00:03:00", "2026-11-28 00:03:00"),  # strictly after
        ("daily UTC", "2026-12-31 23:59:59", "2027-01-01 00:00:00"),
        ("hourly UTC", "2026-11-27 04:10:00", "2026-11-27 05:00:00"),
        ("Mon..Fri 02:00 UTC", "2026-11-27 03:00:00", "2026-11-30 02:00:00"),  # Fri after 02:00 -> Mon
        ("Sat,Sun *-*-* 10:00 UTC", "2026-11-27 12:00:00", "2026-11-28 10:00:00"),
        ("*-02-29 12:00 UTC", "2026-03-01 00:00:00", "2028-02-29 12:00:00"),
        ("*-*-* *:0/15:00 UTC", "2026-11-27 04:10:00", "2026-11-27 04:15:00"),
        ("*-*-01,15 06:30 UTC", "2026-11-16 00:00:00", "2026-12-01 06:30:00"),
        ("2027-*-* 00:00 UTC", "2026-06-01 00:00:00", "2027-01-01 00:00:00"),
        ("*-*-* 00:03:00 Asia/Tokyo", "2026-11-27 14:00:00", "2026-11-27 15:03:00"),
        ("monthly UTC", "2026-11-27 00:00:00", "2026-12-01 00:00:00"),
    ],
)
def test_next_after(spec: str, after: str, expected: str) -> None:
    assert Calendar.parse(spec).next_after(utc(after)) == utc(expected)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("*-13-01 00:00", "month '13' is outside 1..12"),
        ("*-*-* 00:60", "minute '60' is outside 0..59"),
        ("*-*-* aa:00", "hour 'aa' is not a number"),
        ("Mon 01:00 extra", "unexpected 'extra'"),
        ("*-*-* 01:00 Mars/Olympus", "time zone 'Mars/Olympus' is unknown"),
        ("*-*-* 1", "expected [weekday]"),
        ("*-02-30 00:00 UTC", "never matches"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        Calendar.parse(spec).next_after(utc("2026-01-01 00:00:00"))


def test_randomized_delay_stays_within_bounds() -> None:
    rng = random.Random(7)
    moment = utc("2026-11-28 00:03:00")
    delays = [(randomized(moment, 900, rng) - moment).total_seconds() for _ in range(2000)]
    assert min(delays) >= 0 and max(delays) < 900
    assert max(delays) - min(delays) > 800  # really spread, not a constant
    assert randomized(moment, 0, rng) == moment


def test_iso_is_utc_with_z() -> None:
    moment = datetime(2026, 11, 27, 5, 0, tzinfo=UTC) + timedelta(hours=0)
    assert iso(moment.astimezone()) == "2026-11-27T05:00:00Z"
