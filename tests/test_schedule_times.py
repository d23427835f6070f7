"""When schedules fire: cron ticks in a time zone across daylight-saving transitions, intervals
in absolute time, missed ticks (the arithmetic alone: no database)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import pairwise
from zoneinfo import ZoneInfo

from squeal.schedules import When

BERLIN = ZoneInfo("Europe/Berlin")
DAILY = When("30 2 * * *", None, "Europe/Berlin")


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _ticks(timing: When, start: datetime, count: int) -> list[datetime]:
    ticks, at = [], _ms(start)
    for _ in range(count):
        at = timing.next_after(at)
        ticks.append(datetime.fromtimestamp(at / 1000, tz=BERLIN))
    return ticks


def test_a_daily_tick_in_the_hour_that_spring_forward_skips_runs_once_right_after_it() -> None:
    # 2026-03-29: Berlin's clocks jump from 02:00 to 03:00; 02:30 does not exist that day.
    ticks = _ticks(DAILY, datetime(2026, 3, 27, 12, tzinfo=BERLIN), 4)
    assert [t.isoformat() for t in ticks] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_a_daily_tick_in_the_hour_that_fall_back_repeats_runs_once() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice, the tick fires once.
    ticks = _ticks(DAILY, datetime(2026, 10, 23, 12, tzinfo=BERLIN), 4)
    assert [t.isoformat() for t in ticks] == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]
    assert len({t.date() for t in ticks}) == 4


def test_an_every_minute_cron_keeps_every_real_minute_through_the_repeated_hour() -> None:
    start = datetime(2026, 10, 25, 0, 59, tzinfo=timezone.utc)  # 02:59 CEST
    ticks = _ticks(When("*/30 * * * *", None, "Europe/Berlin"), start, 4)
    gaps = {b - a for a, b in pairwise(ticks)}
    assert gaps == {timedelta(minutes=30)}  # 02:00 CET comes after 02:30 CEST
    assert [t.utcoffset() for t in ticks] == [timedelta(hours=1)] * 4


def test_an_interval_is_absolute_time_whatever_the_zone() -> None:
    timing = When(None, 3_600_000, "Europe/Berlin")
    start = datetime(2026, 3, 29, 0, 30, tzinfo=timezone.utc)
    ticks = _ticks(timing, start, 3)
    assert [b - a for a, b in pairwise(ticks)] == [timedelta(hours=1)] * 2


def test_missed_ticks_fire_once_then_continue_from_now() -> None:
    every = When(None, 1000, "UTC")
    assert every.next_after_missed(10_000, 10_000) == 11_000  # on time
    assert every.next_after_missed(10_000, 14_500) == 15_000  # 4 missed: one fire, same phase
    cron = When("0 * * * *", None, "UTC")
    hour = 3_600_000
    assert cron.next_after_missed(5 * hour, 9 * hour + 1) == 10 * hour
