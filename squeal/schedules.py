"""Schedules: messages put on a cron expression or a fixed interval, once per tick across any
number of processes (docs/schedules.md).

Each schedule is a row of ``{prefix}_schedule`` holding its next run. ``run_schedules`` reads the
due rows, and for each one moves ``next_run_at`` on with a compare-and-set on its old value and
puts the message in the same transaction: of several processes that find the same tick due, one
moves it and puts; the others' compare-and-set matches nothing. After downtime a schedule fires
once, not once per missed tick, and its next run is the first tick after now.

Times are the database's clock (epoch milliseconds), like every time squeal stores; cron
expressions are read in the schedule's time zone by cronsim, so daylight-saving transitions
follow cron's rules (a skipped time runs at the first time after it, a repeated one once).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from cronsim import CronSim, CronSimError

from squeal import validation as check
from squeal.clock import now_ms
from squeal.dialects.base import Strategy
from squeal.errors import SquealError, ValidationError
from squeal.executor import Executor
from squeal.message import from_ms
from squeal.schema import Tables, text_value

log = logging.getLogger("squeal.worker")

#: Due schedules one ``run_schedules`` reads at a time.
BATCH = 100
#: Seconds between two runs of one prefix's schedules by the workers of one process.
RUN_EVERY = 1.0

_last_runs: dict[tuple[str, str | None, str], float] = {}
_last_runs_guard = threading.Lock()


@dataclass(frozen=True)
class Schedule:
    """A recurring message, as :meth:`squeal.Queue.schedules` lists it."""

    name: str
    topic: str
    payload: bytes
    priority: int
    cron: str | None
    every: float | None
    """Seconds between ticks (when not a cron schedule)."""
    timezone: str
    next_run_at: datetime
    """When it fires next (UTC)."""
    last_run_at: datetime | None
    """The tick it last fired for (UTC); None before its first."""


@dataclass(frozen=True)
class When:
    """A validated schedule: a cron expression in a time zone, or an interval in ms."""

    cron: str | None
    every_ms: int | None
    timezone: str

    def next_after(self, ms: int) -> int:
        """The first tick strictly after ``ms`` (epoch milliseconds)."""
        if self.every_ms is not None:
            return ms + self.every_ms
        zone = ZoneInfo(self.timezone)
        start = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone(zone)
        ticks = CronSim(self.cron or "", start)
        tick = next(ticks)
        while tick.timestamp() * 1000 <= ms:  # a tick at exactly ``ms`` is not after it
            tick = next(ticks)
        return math.floor(tick.timestamp() * 1000)

    def next_after_missed(self, due_ms: int, now: int) -> int:
        """The next tick once the tick due at ``due_ms`` fired at ``now``: the first after now
        (an interval keeps its phase: due + k * every)."""
        if self.every_ms is not None:
            behind = max(0, now - due_ms)
            return due_ms + (behind // self.every_ms + 1) * self.every_ms
        return self.next_after(now)


def turn_to_run(queue: Any) -> bool:
    """Whether a worker of ``queue`` should run its schedules now: at most once a
    :data:`RUN_EVERY` per process for the same tables, however many workers it runs."""
    key = (queue.engine.url.render_as_string(hide_password=True), queue.schema, queue.prefix)
    now = time.monotonic()
    with _last_runs_guard:
        if now - _last_runs.get(key, -math.inf) < RUN_EVERY:
            return False
        _last_runs[key] = now
        return True


def schedules_failed(error: SquealError, previous: str | None) -> str:
    """Log a worker's failed run of the schedules (once per distinct error); the error text."""
    text = str(error)
    if text != previous:
        log.warning("squeal worker: running the schedules failed (retried every second): %s", text)
    return text


def when(cron: object, every: object, zone: object) -> When:
    """Validate a schedule's timing: exactly one of ``cron`` and ``every``, a known zone."""
    name = check.text(zone, "timezone")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValidationError(f"unknown timezone {name!r}") from error
    if (cron is None) == (every is None):
        raise ValidationError("give exactly one of cron= and every=")
    if every is not None:
        ms = check.to_ms(check.seconds(every, "every", positive=True))
        if ms < 1:
            raise ValidationError("every must be at least a millisecond")
        return When(None, ms, name)
    expression = check.text(cron, "cron")
    try:
        next(CronSim(expression, datetime.now(ZoneInfo(name))))
    except (CronSimError, StopIteration) as error:
        raise ValidationError(f"invalid cron expression {expression!r}: {error}") from error
    return When(expression, None, name)


class ScheduleStatements:
    """The statements of one prefix's schedule table (built once per queue)."""

    def __init__(self, strategy: Strategy, tables: Tables) -> None:
        self.strategy = strategy
        self.s = tables.schedule

    @cached_property
    def _insert(self) -> sa.Executable:
        s = self.s
        row = {c.name: sa.bindparam(c.name, type_=c.type) for c in s.columns}
        return self.strategy.insert_ignoring_conflicts(row, table=s)

    @cached_property
    def _redefine(self) -> sa.Update:
        s = self.s
        changed = [c.name for c in s.columns if c.name not in ("name", "last_run_at")]
        return (
            sa.update(s)
            .where(s.c.name == sa.bindparam("in_name", type_=s.c.name.type))
            .values({name: sa.bindparam(name, type_=s.c[name].type) for name in changed})
        )

    @cached_property
    def _one(self) -> sa.Select[Any]:
        s = self.s
        return sa.select(*s.columns).where(s.c.name == sa.bindparam("in_name", type_=s.c.name.type))

    @cached_property
    def _all(self) -> sa.Select[Any]:
        s = self.s
        return sa.select(*s.columns).order_by(s.c.next_run_at, s.c.name)

    @cached_property
    def _now(self) -> sa.Select[Any]:
        return sa.select(now_ms())

    @cached_property
    def _due(self) -> sa.Select[Any]:
        s = self.s
        return (
            sa.select(*s.columns, now_ms().label("now"))
            .where(s.c.next_run_at <= now_ms())
            .order_by(s.c.next_run_at)
            .limit(BATCH)
        )

    @cached_property
    def _advance(self) -> sa.Update:
        """Move one schedule's next run on if nobody did since it was read (the tick's CAS)."""
        s = self.s
        return (
            sa.update(s)
            .where(
                s.c.name == sa.bindparam("in_name", type_=s.c.name.type),
                s.c.next_run_at == sa.bindparam("was", type_=sa.BigInteger()),
            )
            .values(
                next_run_at=sa.bindparam("next_run", type_=sa.BigInteger()),
                last_run_at=sa.bindparam("was", type_=sa.BigInteger()),
            )
        )

    @cached_property
    def _delete(self) -> sa.Delete:
        s = self.s
        return sa.delete(s).where(s.c.name == sa.bindparam("in_name", type_=s.c.name.type))

    def define(self, ex: Executor, row: dict[str, Any], timing: When) -> None:
        """Create or redefine a schedule (two statements: one transaction). An unchanged
        definition keeps its next run; a changed one runs next at its first tick from now."""
        now = int(ex.rows(self._now, {})[0][0])
        found = ex.rows(self._one, {"in_name": row["name"]})
        values = {
            **row,
            "cron": timing.cron,
            "every_ms": timing.every_ms,
            "timezone": timing.timezone,
            "next_run_at": timing.next_after(now),
        }
        if not found:
            ex.count(self._insert, {**values, "last_run_at": None})
            return
        current = dict(zip([c.name for c in self.s.columns], found[0], strict=True))
        same = all(
            _same(current[name], values[name])
            for name in ("topic", "payload", "neg_priority", "cron", "every_ms", "timezone")
        )
        if not same:
            params = {k: v for k, v in values.items() if k != "name"}
            ex.count(self._redefine, {**params, "in_name": row["name"]})

    def remove(self, ex: Executor, name: str) -> bool:
        """Delete a schedule; whether it existed."""
        return ex.count(self._delete, {"in_name": name}) > 0

    def listed(self, ex: Executor) -> list[Schedule]:
        """Every schedule, the next to fire first."""
        return [_schedule(row) for row in ex.rows(self._all, {})]

    def due(self, ex: Executor) -> list[tuple[Schedule, When, int, int]]:
        """Due schedules: (schedule, timing, its due tick in ms, the database's now in ms)."""
        found = []
        for row in ex.rows(self._due, {}):
            schedule = _schedule(row[:-1])
            cron, every_ms, zone, next_run = row[4], row[5], row[6], row[7]
            timing = When(cron, None if every_ms is None else int(every_ms), str(zone))
            found.append((schedule, timing, int(next_run), int(row[-1])))
        return found

    def advance(self, ex: Executor, name: str, was: int, next_run: int) -> bool:
        """The compare-and-set of one tick: True for the one caller that moved it on."""
        return ex.count(self._advance, {"in_name": name, "was": was, "next_run": next_run}) == 1


def _same(stored: Any, wanted: Any) -> bool:
    if isinstance(stored, (bytes, bytearray, memoryview)) and isinstance(wanted, bytes):
        return bytes(stored) == wanted
    if isinstance(stored, (bytes, bytearray)) and isinstance(wanted, str):
        return text_value(stored) == wanted
    return bool(stored == wanted)


def _schedule(row: Any) -> Schedule:
    name, topic, payload, neg_priority, cron, every_ms, zone, next_run, last_run = row
    return Schedule(
        name=text_value(name),
        topic=text_value(topic),
        payload=bytes(payload),
        priority=-int(neg_priority),
        cron=cron,
        every=None if every_ms is None else int(every_ms) / 1000,
        timezone=str(zone),
        next_run_at=from_ms(int(next_run)),
        last_run_at=None if last_run is None else from_ms(int(last_run)),
    )


__all__ = [
    "BATCH",
    "RUN_EVERY",
    "Schedule",
    "ScheduleStatements",
    "When",
    "schedules_failed",
    "turn_to_run",
    "when",
]
