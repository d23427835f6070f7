"""Schedules: a tick is put once across every caller of run_schedules, missed ticks fire once,
definitions are replaced by name, and every argument is checked before anything is stored."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from squeal import Queue, Schedule
from tests.race import race


def _set_next_run(queue: Queue, name: str, at_ms: int) -> None:
    """Move a schedule's next run (a test's shortcut to a due cron tick)."""
    table = sa.table(f"{queue.prefix}_schedule", sa.column("name"), sa.column("next_run_at"))
    with queue.engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.name == name).values(next_run_at=at_ms))


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def test_an_interval_fires_once_per_tick(queue: Queue) -> None:
    defined = queue.schedule("beat", topic="t", payload=b"tick", every=60, priority=5)
    assert isinstance(defined, Schedule)
    shown = (defined.topic, defined.payload, defined.priority, defined.every)
    assert shown == ("t", b"tick", 5, 60)
    assert defined.last_run_at is None
    assert queue.run_schedules() == 0  # the first tick is one interval from now
    due = _ms(defined.next_run_at) - 60_000  # as if that minute had passed
    _set_next_run(queue, "beat", due)
    assert queue.run_schedules() == 1
    assert queue.run_schedules() == 0  # that tick is done; the next is a minute later
    msg = queue.get("t")
    assert msg is not None
    assert (msg.payload, msg.priority) == (b"tick", 5)
    msg.ack()
    (after,) = queue.schedules()
    assert _ms(after.last_run_at) == due
    assert _ms(after.next_run_at) == due + 60_000


def test_a_due_tick_is_put_once_however_many_callers_race(
    make_queue: Callable[..., Queue],
) -> None:
    queues = [make_queue() for _ in range(6)]
    queues[0].schedule("once", topic="t", cron="0 0 1 1 *")
    _set_next_run(queues[0], "once", _ms(datetime.now(timezone.utc)) - 1000)
    fired = race([q.run_schedules for q in queues])
    assert sum(fired) == 1  # type: ignore[arg-type]
    assert queues[0].size("t") == 1


def test_missed_ticks_fire_once_and_keep_the_interval_s_phase(queue: Queue) -> None:
    defined = queue.schedule("often", topic="t", every=0.1)
    time.sleep(0.55)  # about five ticks missed
    before = datetime.now(timezone.utc)
    assert queue.run_schedules() == 1
    assert queue.size("t") == 1
    (after,) = queue.schedules()
    # The next tick after the run, not a missed one: after the moment the run began (read
    # before it, so a stall between the calls cannot fail this; ms rounding aside).
    assert after.next_run_at > before - timedelta(seconds=0.01)
    phase = (after.next_run_at - defined.next_run_at) / timedelta(milliseconds=100)
    assert phase == round(phase)  # still on the grid of the first tick


def test_a_cron_schedule_runs_next_at_its_next_tick_in_its_zone(queue: Queue) -> None:
    defined = queue.schedule("daily", topic="t", cron="30 9 * * *", timezone="Asia/Tokyo")
    local = defined.next_run_at.astimezone(timezone(timedelta(hours=9)))
    assert (local.hour, local.minute, local.second) == (9, 30, 0)
    assert timedelta(0) < defined.next_run_at - datetime.now(timezone.utc) <= timedelta(days=1)
    _set_next_run(queue, "daily", _ms(defined.next_run_at) - 86_400_000)  # a day overdue
    assert queue.run_schedules() == 1
    (after,) = queue.schedules()
    assert after.next_run_at == defined.next_run_at  # the next tick after now, once
    assert queue.size("t") == 1


def test_defining_again_replaces_by_name_and_keeps_an_unchanged_next_run(queue: Queue) -> None:
    first = queue.schedule("job", topic="t", every=60)
    time.sleep(0.05)
    again = queue.schedule("job", topic="t", every=60)
    assert again.next_run_at == first.next_run_at  # unchanged: redeploys do not shift it
    changed = queue.schedule("job", topic="u", payload=b"new", every=30)
    assert (changed.topic, changed.payload, changed.every) == ("u", b"new", 30)
    assert changed.next_run_at < first.next_run_at
    assert [s.name for s in queue.schedules()] == ["job"]


def test_unschedule_and_listing(queue: Queue) -> None:
    queue.schedule("b", topic="t", every=50)
    queue.schedule("a", topic="t", every=100)
    assert [s.name for s in queue.schedules()] == ["b", "a"]  # next to fire first
    assert queue.unschedule("b") is True
    assert queue.unschedule("b") is False
    assert [s.name for s in queue.schedules()] == ["a"]


def test_a_paused_topic_still_receives_its_ticks(queue: Queue) -> None:
    """Schedules put; the pause holds the deliveries back, as for any put."""
    queue.pause("t")
    queue.schedule("s", topic="t", every=0.05)
    time.sleep(0.1)
    assert queue.run_schedules() == 1
    assert queue.get("t") is None
    assert queue.size("t") == 1


@pytest.mark.parametrize(
    "options",
    [
        {},  # neither cron nor every
        {"cron": "* * * * *", "every": 5},
        {"cron": "61 * * * *"},
        {"cron": "not cron"},
        {"every": 0},
        {"every": -1},
        {"every": float("nan")},
        {"every": 5, "timezone": "Mars/Olympus"},
        {"every": 5, "priority": 2**70},
        {"every": 5, "topic": ""},
        {"every": 5, "payload": "text, not bytes"},
    ],
)
def test_bad_definitions_store_nothing(queue: Queue, options: dict[str, object]) -> None:
    arguments: dict[str, object] = {"topic": "t", **options}
    with pytest.raises((ValueError, TypeError)):
        queue.schedule("bad", **arguments)  # type: ignore[arg-type]
    assert queue.schedules() == []
