"""Topic-lock statements: one shared set, and the take-over each database spells its own way.

A lock is one row of ``{prefix}_topic_lock`` (topic, token, expires_at in database-clock
milliseconds). Taking a topic is one atomic "insert, or take over a lease that has run out"; the
row of a released lock is deleted, and the row of an abandoned one stays until a taker finds it
expired. Every statement is fenced by the holder's token, exactly like a message's lease.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from squeal.clock import now_ms
from squeal.dialects.base import running
from squeal.executor import Executor
from squeal.schema import Tables

#: Topics a single candidate query proposes; acquiring tries them in order.
CANDIDATES = 8


class Lease(NamedTuple):
    """A lock row as its holder sees it: its token and when it runs out (ms)."""

    token: int
    expires_at: int


class Locking:
    """Topic-lock statements for one prefix; subclasses supply the take-over."""

    #: Whether :meth:`take` runs several statements that must share one transaction.
    take_is_atomic: ClassVar[bool] = False

    def __init__(
        self,
        dialect: sa.Dialect,
        tables: Tables,
        ready: tuple[sa.ColumnElement[bool], ...],
        topic_scan: sa.Select[Any],
    ) -> None:
        self.dialect = dialect
        self.lock = tables.topic_lock
        self.message = tables.message
        self.topics = tables.topic
        self._ready = ready
        self._topic_scan = topic_scan

    # -- shared statements ----------------------------------------------------------------------

    def candidates(self, excluding: bool) -> sa.Select[Any]:
        """Topics with a ready message, not paused and with no live lock, in name order from
        the first after ``:after`` round to the ones before it (``exclude`` list)."""
        return self._candidates[excluding]

    @cached_property
    def _candidates(self) -> dict[bool, sa.Select[Any]]:
        m, lock = self.message, self.lock
        listed = self._topic_scan.subquery("listed")
        topic = listed.c.topic
        # One probe per topic and kind of ready row (stored READY, or WAITING and due): it stops
        # at the first ready message, whatever the topic holds.
        ready = sa.or_(*(sa.exists().where(m.c.topic == topic, kind) for kind in self._ready))
        held = sa.exists().where(lock.c.topic == topic, lock.c.expires_at > now_ms())
        after = sa.bindparam("after", type_=m.c.topic.type)
        base = (
            sa.select(topic)
            .where(ready, sa.not_(held), running(self.topics, topic))
            .order_by(sa.case((topic > after, 0), else_=1), topic)
            .limit(CANDIDATES)
        )
        excluded = topic.not_in(sa.bindparam("exclude", expanding=True, type_=m.c.topic.type))
        return {False: base, True: base.where(excluded)}

    @cached_property
    def release(self) -> sa.Delete:
        """Delete the lock row if the caller still holds it (count 1), else nothing."""
        return sa.delete(self.lock).where(self._fenced)

    @cached_property
    def _fenced(self) -> sa.ColumnElement[bool]:
        lock = self.lock
        return sa.and_(
            lock.c.topic == sa.bindparam("lock_topic", type_=lock.c.topic.type),
            lock.c.token == sa.bindparam("lock_token", type_=sa.BigInteger()),
        )

    @cached_property
    def _extend(self) -> sa.Update:
        expires = now_ms() + sa.bindparam("ttl_ms", type_=sa.BigInteger())
        return sa.update(self.lock).where(self._fenced).values(expires_at=expires)

    @cached_property
    def _extend_returning(self) -> sa.Update:
        return self._extend.returning(self.lock.c.expires_at)

    @cached_property
    def _expiry_of_holder(self) -> sa.Select[Any]:
        return sa.select(self.lock.c.expires_at).where(self._fenced)

    def touch(self, ex: Executor, topic: str, token: int, ttl_ms: int) -> int | None:
        """Extend the caller's lease to now + ``ttl_ms``; its new expiry, or None if lost.

        Without UPDATE ... RETURNING this reads the row back, so run it atomically.
        """
        params = {"lock_topic": topic, "lock_token": token, "ttl_ms": ttl_ms}
        if self.dialect.update_returning:
            rows = ex.rows(self._extend_returning, params)
        else:
            ex.count(self._extend, params)
            rows = ex.rows(self._expiry_of_holder, params)
        return int(rows[0][0]) if rows else None

    @property
    def touch_is_atomic(self) -> bool:
        """Whether :meth:`touch` runs two statements that must share one transaction."""
        return not self.dialect.update_returning

    # -- what each database spells differently --------------------------------------------------

    def take(self, ex: Executor, topic: str, token: int, ttl_ms: int) -> Lease | None:
        """Insert the lock row, or take over one whose lease ran out (or is already ours).

        Returns the lease when ``token`` now holds the topic, None when a live lock of somebody
        else's is in the way. Taking the same topic again with the same token is a no-op that
        succeeds, so a retry after a lost reply cannot lock the caller out.
        """
        raise NotImplementedError

    def _values(self) -> dict[str, Any]:
        lock = self.lock
        return {
            "topic": sa.bindparam("lock_topic", type_=lock.c.topic.type),
            "token": sa.bindparam("lock_token", type_=sa.BigInteger()),
            "expires_at": now_ms() + sa.bindparam("ttl_ms", type_=sa.BigInteger()),
        }

    def _takeable(self, incoming_token: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        lock = self.lock
        return sa.or_(lock.c.expires_at <= now_ms(), lock.c.token == incoming_token)


class UpsertLocking(Locking):
    """PostgreSQL and SQLite: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired RETURNING``.

    PostgreSQL re-checks the WHERE against the newest committed row after waiting for a
    concurrent taker, and SQLite has one writer at a time, so one statement decides the race.
    """

    def _insert(self) -> postgresql.Insert | sqlite.Insert:
        raise NotImplementedError

    @cached_property
    def _take(self) -> sa.Executable:
        lock = self.lock
        stmt = self._insert().values(self._values())
        return stmt.on_conflict_do_update(
            index_elements=[lock.c.topic],
            set_={"token": stmt.excluded.token, "expires_at": stmt.excluded.expires_at},
            where=self._takeable(stmt.excluded.token),
        ).returning(lock.c.token, lock.c.expires_at)

    def take(self, ex: Executor, topic: str, token: int, ttl_ms: int) -> Lease | None:
        rows = ex.rows(self._take, {"lock_topic": topic, "lock_token": token, "ttl_ms": ttl_ms})
        return Lease(int(rows[0][0]), int(rows[0][1])) if rows else None


class PostgreSQLLocking(UpsertLocking):
    """PostgreSQL's ``ON CONFLICT``."""

    def _insert(self) -> postgresql.Insert:
        return postgresql.insert(self.lock)


class SQLiteLocking(UpsertLocking):
    """SQLite's ``ON CONFLICT`` (3.24+; RETURNING needs 3.35, which squeal requires anyway)."""

    def _insert(self) -> sqlite.Insert:
        return sqlite.insert(self.lock)


class MySQLLocking(Locking):
    """MySQL and MariaDB: ``INSERT ... ON DUPLICATE KEY UPDATE``, then read the row back.

    No RETURNING, and the affected-row count cannot tell an insert from an unchanged row (the
    driver sets CLIENT_FOUND_ROWS), so the token is read back, locked, in the same transaction.
    The SET clauses run left to right on the row being updated: ``token`` is assigned before
    ``expires_at`` so both test the old expiry. ``VALUES(col)`` is what MariaDB understands
    (MySQL 8.0.20+ gets its row alias from SQLAlchemy instead).
    """

    take_is_atomic: ClassVar[bool] = True

    @cached_property
    def _take(self) -> sa.Executable:
        lock = self.lock
        stmt = mysql.insert(lock).values(self._values())
        takeable = self._takeable(stmt.inserted.token)
        ordered: list[tuple[str, Any]] = [
            ("token", sa.case((takeable, stmt.inserted.token), else_=lock.c.token)),
            ("expires_at", sa.case((takeable, stmt.inserted.expires_at), else_=lock.c.expires_at)),
        ]
        return stmt.on_duplicate_key_update(ordered)

    @cached_property
    def _holder(self) -> sa.Select[Any]:
        lock = self.lock
        return (
            sa.select(lock.c.token, lock.c.expires_at)
            .where(lock.c.topic == sa.bindparam("lock_topic", type_=lock.c.topic.type))
            .with_for_update()
        )

    def take(self, ex: Executor, topic: str, token: int, ttl_ms: int) -> Lease | None:
        params = {"lock_topic": topic, "lock_token": token, "ttl_ms": ttl_ms}
        ex.count(self._take, params)
        rows = ex.rows(self._holder, params)
        if not rows or int(rows[0][0]) != token:
            return None
        return Lease(token, int(rows[0][1]))


__all__ = ["CANDIDATES", "Lease", "Locking"]
