"""The worker registry: every running worker keeps a row in ``{prefix}_worker``
(``Queue.workers``, ``squeal workers``; docs/worker.md).

A worker inserts its row when it starts (host, pid, topics, concurrency, squeal version), and
updates it every ``beat`` seconds with what it is doing (messages in flight) and what it has
done (acked, failed, released: counters that only grow, so successive reads give rates with
no write on the claim or ack path). Each beat moves the row's ``expires_at`` to a few beats
ahead by the database clock; a worker that dies without leaving stops moving it, is no longer
listed once it passes, and its row is deleted by the next beat of any worker of the queue. A
graceful stop deletes the row. A beat that finds its row gone (deleted while the worker could
not reach the database) inserts it again under a new id.

The registry is for operators: a failed insert, beat or delete is logged and retried at the
next beat; it never stops a worker or touches its messages.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from squeal.clock import now_ms
from squeal.dialects.base import Strategy
from squeal.errors import SchemaError, SquealError, UnsupportedDatabase
from squeal.executor import Executor
from squeal.message import from_ms
from squeal.schema import Tables
from squeal.session import Session
from squeal.version import __version__

log = logging.getLogger("squeal.worker")

#: Seconds between a worker's beats (its ``registry_beat`` option's default).
BEAT = 5.0
#: A row is listed until this many beats after its last one (then it is a dead worker's).
BEATS_TO_EXPIRY = 6


@dataclass(frozen=True)
class WorkerInfo:
    """One running worker, as its last beat recorded it (:meth:`squeal.Queue.workers`)."""

    #: The row's id (a new one each time a worker starts or re-registers).
    id: int
    host: str
    pid: int
    #: ``"thread"`` (:class:`squeal.Worker`) or ``"asyncio"`` (:class:`squeal.aio.AsyncWorker`).
    kind: str
    topics: tuple[str, ...]
    concurrency: int
    #: Messages its handlers held at its last beat.
    in_flight: int
    #: Messages acked, nacked by a failing handler, and released at shutdown since it started.
    acked: int
    failed: int
    released: int
    #: The squeal version it runs.
    version: str
    started_at: datetime
    #: Its last beat, and when its row stops being listed without another (database clock).
    beat_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Counts:
    """What a worker reports at each beat."""

    in_flight: int
    acked: int
    failed: int
    released: int


class RegistryStatements:
    """The statements of one prefix's worker table (built once per queue)."""

    def __init__(self, tables: Tables) -> None:
        self.w = tables.worker

    @staticmethod
    def _beaten() -> dict[str, Any]:
        """What every beat sets: its time, the row's expiry, the worker's counts."""
        counts = ("in_flight", "acked", "failed", "released")
        binds: dict[str, Any] = {name: sa.bindparam(name) for name in counts}
        lifetime = sa.bindparam("lifetime_ms", type_=sa.BigInteger())
        return {"beat_at": now_ms(), "expires_at": now_ms() + lifetime, **binds}

    @cached_property
    def join(self) -> sa.Insert:
        fixed = ("host", "pid", "kind", "topics", "concurrency", "version")
        values: dict[str, Any] = {name: sa.bindparam(name) for name in fixed}
        return sa.insert(self.w).values({**values, "started_at": now_ms(), **self._beaten()})

    @cached_property
    def join_returning(self) -> sa.Insert:
        return self.join.returning(self.w.c.id)

    @cached_property
    def beat(self) -> sa.Update:
        w = self.w
        return sa.update(w).where(w.c.id == sa.bindparam("worker_id")).values(self._beaten())

    @cached_property
    def leave(self) -> sa.Delete:
        return sa.delete(self.w).where(self.w.c.id == sa.bindparam("worker_id"))

    @cached_property
    def prune(self) -> sa.Delete:
        """The rows of workers that died without leaving (through the expiry index)."""
        return sa.delete(self.w).where(self.w.c.expires_at < now_ms())

    @cached_property
    def listed(self) -> sa.Select[Any]:
        w = self.w
        return (
            sa.select(
                w.c.id,
                w.c.host,
                w.c.pid,
                w.c.kind,
                w.c.topics,
                w.c.concurrency,
                w.c.in_flight,
                w.c.acked,
                w.c.failed,
                w.c.released,
                w.c.version,
                w.c.started_at,
                w.c.beat_at,
                w.c.expires_at,
            )
            .where(w.c.expires_at >= now_ms())
            .order_by(w.c.id)
        )


class Registry:
    """A queue's worker registry: the statements, run through its session."""

    def __init__(self, session: Session, strategy: Strategy, tables: Tables) -> None:
        self._session = session
        self._strategy = strategy
        self._statements = RegistryStatements(tables)

    def workers(self) -> list[WorkerInfo]:
        """The workers whose rows have not expired, oldest registration first."""
        rows = self._session.read(lambda ex: ex.rows(self._statements.listed, {}))
        return [_info(row) for row in rows]

    def join(self, row: dict[str, Any]) -> int:
        """Delete expired rows and insert a worker's; its id."""
        statements = self._statements

        def join(ex: Executor) -> int:
            ex.count(statements.prune, {})
            return self._strategy.insert_one(ex, statements.join, statements.join_returning, row)

        return self._session.write(join)

    def beat(self, worker_id: int, values: dict[str, Any]) -> bool:
        """Update a worker's row and delete expired ones; False if its row is gone."""
        statements = self._statements

        def beat(ex: Executor) -> bool:
            found = ex.count(statements.beat, {"worker_id": worker_id, **values})
            ex.count(statements.prune, {})
            return found > 0

        return self._session.write(beat)

    def leave(self, worker_id: int) -> None:
        """Delete a worker's row."""
        self._session.write(lambda ex: ex.count(self._statements.leave, {"worker_id": worker_id}))


class Presence:
    """One worker's row in the registry: joined at start, beaten, deleted at a graceful stop
    (shared by :class:`squeal.Worker` and :class:`squeal.aio.AsyncWorker`, whose task runs
    these through the greenlet bridge). Every failure is logged once and retried at the next
    beat; none is raised."""

    def __init__(
        self, registry: Registry, *, kind: str, topics: Sequence[str], concurrency: int, beat: float
    ) -> None:
        self._registry = registry
        self.beat_every = beat
        self._id: int | None = None
        self._failed: str | None = None
        self._row = {
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            "kind": kind,
            "topics": json.dumps(list(topics)),
            "concurrency": concurrency,
            "version": __version__,
        }

    @property
    def worker_id(self) -> int | None:
        """The row's id (None until it was inserted)."""
        return self._id

    def _values(self, counts: Counts) -> dict[str, Any]:
        return {
            "lifetime_ms": round(self.beat_every * BEATS_TO_EXPIRY * 1000),
            "in_flight": counts.in_flight,
            "acked": counts.acked,
            "failed": counts.failed,
            "released": counts.released,
        }

    def beat(self, counts: Counts) -> None:
        """Insert the row (first beat, or after it was deleted) or update it."""
        try:
            values = self._values(counts)
            if self._id is None or not self._registry.beat(self._id, values):
                self._id = self._registry.join({**self._row, **values})
        except SquealError as error:
            self._failure(error)
        else:
            self._failed = None

    def leave(self) -> None:
        """Delete the row (a graceful stop)."""
        if self._id is None:
            return
        try:
            self._registry.leave(self._id)
        except SquealError as error:
            self._failure(error)
        self._id = None

    def _failure(self, error: SquealError) -> None:
        text = str(error)
        # Missing or outdated tables, or a database squeal cannot run on, stop the worker,
        # which says so itself.
        quiet = isinstance(error, SchemaError | UnsupportedDatabase)
        if text != self._failed and not quiet:
            log.warning(
                "squeal worker: the worker registry could not be updated (retried every "
                "%gs; the worker goes on): %s",
                self.beat_every,
                text,
            )
        self._failed = text


def _info(row: Sequence[Any]) -> WorkerInfo:
    (id_, host, pid, kind, topics, concurrency, in_flight, acked, failed, released) = row[:10]
    version, started_at, beat_at, expires_at = row[10:]
    return WorkerInfo(
        id=int(id_),
        host=str(host),
        pid=int(pid),
        kind=str(kind),
        topics=tuple(json.loads(topics)),
        concurrency=int(concurrency),
        in_flight=int(in_flight),
        acked=int(acked),
        failed=int(failed),
        released=int(released),
        version=str(version),
        started_at=from_ms(int(started_at)),
        beat_at=from_ms(int(beat_at)),
        expires_at=from_ms(int(expires_at)),
    )


__all__ = ["BEAT", "BEATS_TO_EXPIRY", "Counts", "Presence", "Registry", "WorkerInfo"]
