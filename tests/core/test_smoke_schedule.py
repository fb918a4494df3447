"""When the smoke timer runs: calendar, randomized delay and Persistent=true catch-up, on an injected clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hxd.core.schedule import Calendar, next_run, read_stamp, write_stamp

DAILY = Calendar.parse("*-*-* 00:03:00 UTC")
DELAY = 900


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def simulate(
    calendar: Calendar, start: datetime, end: datetime, down: tuple[datetime, datetime], rng: random.Random
) -> list[datetime]:
    """The daemon's timer loop on a fake clock: plan from the stamp, wait, run (5 minutes), stamp the start.

    hxd is down from ``down[0]`` to ``down[1]``: a run planned in that window never happens, and at ``down[1]`` hxd
    starts again and plans from the stamp it left.
    """
    runs: list[datetime] = []
    last: datetime | None = None
    now = start
    while True:
        planned = next_run(calendar, last, now, DELAY, rng)
        if now < down[0] <= planned:
            now = down[1]
            continue
        if planned >= end:
            return runs
        runs.append(planned)
        last, now = planned, planned + timedelta(minutes=5)


def test_first_start_waits_for_the_next_event() -> None:
    when = next_run(DAILY, None, utc("2026-11-27 10:00:00"), DELAY, random.Random(1))
    assert utc("2026-11-28 00:03:00") <= when < utc("2026-11-28 00:18:00")


def test_randomized_delay_stays_within_bounds() -> None:
    rng = random.Random(7)
    last, now = utc("2026-11-27 00:10:00"), utc("2026-11-27 10:00:00")
    event = utc("2026-11-28 00:03:00")
    delays = [(next_run(DAILY, last, now, DELAY, rng) - event).total_seconds() for _ in range(2000)]
    assert min(delays) >= 0 and max(delays) < DELAY
    assert max(delays) - min(delays) > 800  # spread, not a constant
    assert next_run(DAILY, last, now, 0, rng) == event


def test_catch_up_once_after_a_three_day_outage() -> None:
    down = (utc("2026-11-24 22:00:00"), utc("2026-11-28 09:00:00"))  # misses the runs of the 25th to the 28th
    runs = simulate(DAILY, utc("2026-11-20 12:00:00"), utc("2026-12-01 12:00:00"), down, random.Random(3))
    assert [run.day for run in runs] == [21, 22, 23, 24, 28, 29, 30, 1]
    assert runs[4] == down[1]  # the catch-up: at start, once, not once per missed day
    for run in runs[:4] + runs[5:]:
        event = run.replace(hour=0, minute=3, second=0, microsecond=0)
        assert timedelta(0) <= run - event < timedelta(seconds=DELAY)


def test_no_catch_up_when_the_last_run_is_recent() -> None:
    rng = random.Random(5)
    when = next_run(DAILY, utc("2026-11-28 00:11:42"), utc("2026-11-28 09:00:00"), DELAY, rng)
    assert utc("2026-11-29 00:03:00") <= when < utc("2026-11-29 00:18:00")


def test_a_missed_run_is_due_now() -> None:
    now = utc("2026-11-28 09:00:00")
    assert next_run(DAILY, utc("2026-11-25 00:07:00"), now, DELAY, random.Random(1)) == now
    # Stopped at 00:05 before a run delayed to later that night: due now only once the delayed moment has passed.
    when = next_run(DAILY, utc("2026-11-27 00:05:00"), utc("2026-11-28 00:04:00"), DELAY, random.Random(1))
    assert utc("2026-11-28 00:04:00") <= when < utc("2026-11-28 00:18:00")


def test_weekday_calendar_misses_nothing_over_a_weekend() -> None:
    workdays = Calendar.parse("Mon..Fri 02:00 UTC")
    friday, monday = utc("2026-11-27 02:04:00"), utc("2026-11-30 01:00:00")  # down from Friday to Monday morning
    when = next_run(workdays, friday, monday, 0, random.Random(1))
    assert when == utc("2026-11-30 02:00:00")  # nothing was missed, so no catch-up
    assert next_run(workdays, friday, utc("2026-12-01 08:00:00"), 0, random.Random(1)) == utc("2026-12-01 08:00:00")


def test_a_stamp_in_the_future_does_not_silence_the_timer() -> None:
    now = utc("2026-11-28 09:00:00")
    when = next_run(DAILY, utc("2027-06-01 00:05:00"), now, 0, random.Random(1))  # the clock was set back
    assert when == utc("2026-11-29 00:03:00")


def test_stamp_round_trip(tmp_path: Path) -> None:
    stamp = tmp_path / "state" / "smoke.last"
    assert read_stamp(stamp) is None  # never ran
    write_stamp(stamp, datetime(2026, 11, 28, 1, 11, 42, 500000, tzinfo=UTC))
    assert stamp.read_text() == "2026-11-28T01:11:42Z\n"
    assert read_stamp(stamp) == utc("2026-11-28 01:11:42")
    assert [p.name for p in stamp.parent.iterdir()] == ["smoke.last"]  # no temporary file left
    stamp.write_text("yesterday\n")
    assert read_stamp(stamp) is None
    stamp.write_text("2026-11-28T01:11:42\n")  # no zone: not ours
    assert read_stamp(stamp) is None
