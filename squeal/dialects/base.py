"""The strategy every database shares; subclasses override what their database does differently."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

import sqlalchemy as sa
from sqlalchemy.sql.dml import Insert

from squeal.clock import now_ms
from squeal.errors import UnsupportedDatabase
from squeal.schema import DEAD, READY, WAITING, Tables, in_state


class ClaimedRow(NamedTuple):
    """What a claim returns for one message (``attempts`` already counts this claim)."""

    id: int
    payload: bytes
    neg_priority: int
    attempts: int
    enqueued_at: int


def _param(name: str, type_: sa.types.TypeEngine[Any] | None = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


def dead_on_expiry(m: sa.Table) -> sa.ColumnElement[bool]:
    """True for a row whose lease ran out on its last allowed attempt."""
    return sa.and_(m.c.lease_token.is_not(None), m.c.attempts >= _param("max_attempts"))


def promoted_state(m: sa.Table) -> sa.Case[Any]:
    """The state a due WAITING row moves to: READY, or DEAD when its last lease expired."""
    return sa.case((dead_on_expiry(m), DEAD), else_=READY)


def promoted(m: sa.Table) -> dict[str, Any]:
    """SET clause for due WAITING rows: READY (or DEAD), no longer waiting for a time."""
    return {"state": promoted_state(m), "visible_at": None}


class Strategy:
    """How squeal talks to one kind of database.

    The statements here are built once per queue; SQLAlchemy caches their compiled form, so the
    hot path only binds parameters.
    """

    #: Human name and the oldest server version squeal runs on.
    label: ClassVar[str] = "database"
    min_version: ClassVar[tuple[int, ...]] = ()

    def __init__(self, dialect: sa.Dialect, tables: Tables) -> None:
        self.dialect = dialect
        self.tables = tables
        m = self.m = tables.message
        now = now_ms()
        values = {
            "topic": _param("topic"),
            "neg_priority": _param("neg_priority"),
            "state": _param("state"),
            "visible_at": sa.case((_param("delay_ms") > 0, now + _param("delay_ms"))),
            "enqueued_at": now,
            "attempts": 0,
            "dedup_key": _param("dedup_key"),
            "payload": _param("payload", sa.LargeBinary()),
        }
        self.insert_plain: Insert = sa.insert(m).values(values)
        self.insert_dedup: Insert = self.insert_ignoring_conflicts(values)

        lease = sa.and_(m.c.id == _param("msg_id"), m.c.lease_token == _param("token"))
        self.ack = sa.delete(m).where(lease)
        self.ack_batch = sa.delete(m).where(
            m.c.lease_token == _param("token"), m.c.id.in_(sa.bindparam("ids", expanding=True))
        )
        out_of_attempts = m.c.attempts >= _param("max_attempts")
        self.nack = (
            sa.update(m)
            .where(lease)
            .values(
                state=sa.case((out_of_attempts, DEAD), else_=WAITING),
                visible_at=sa.case((out_of_attempts, None), else_=now + _param("delay_ms")),
                lease_token=None,
            )
        )
        self.release = (
            sa.update(m)
            .where(lease, sa.not_(in_state(m.c.state, DEAD)))
            .values(state=READY, visible_at=None, lease_token=None, attempts=m.c.attempts - 1)
        )
        self.touch = (
            sa.update(m)
            .where(lease, sa.not_(in_state(m.c.state, DEAD)))
            .values(state=WAITING, visible_at=now + _param("vt_ms", sa.BigInteger()))
        )

        # Only WAITING rows have a visible_at, so this range of the due index is exactly the
        # rows whose delay, backoff or lease has run out. (A state test here would let the
        # planner prefer the claim index and filter every leased row.)
        due = sa.and_(m.c.topic == _param("in_topic"), m.c.visible_at <= now)
        self.due_ids = sa.select(m.c.id).where(due).order_by(m.c.visible_at).limit(_param("limit"))
        self.ready_ids = (
            sa.select(m.c.id)
            .where(m.c.topic == _param("in_topic"), in_state(m.c.state, READY))
            .order_by(m.c.neg_priority, m.c.id)
            .limit(_param("limit"))
        )
        self.take_lease = {
            "state": WAITING,
            "visible_at": now + _param("vt_ms", sa.BigInteger()),
            "lease_token": _param("token"),
            "attempts": m.c.attempts + 1,
        }
        self.claimed_columns = (
            m.c.id,
            m.c.payload,
            m.c.neg_priority,
            m.c.attempts,
            m.c.enqueued_at,
        )

    # -- what subclasses specialise -------------------------------------------------------------

    def insert_ignoring_conflicts(self, values: dict[str, Any]) -> Insert:
        """An insert of ``values`` that skips a row whose (topic, dedup_key) is taken."""
        raise NotImplementedError

    def server_version(self, connection: sa.Connection) -> tuple[int, ...]:
        """The server's version as a tuple of ints."""
        return tuple(int(v) for v in (self.dialect.server_version_info or ()) if isinstance(v, int))

    def check_server(self, connection: sa.Connection) -> None:
        """Raise UnsupportedDatabase when the server is too old for squeal."""
        version = self.server_version(connection)
        if version < self.min_version:
            wanted = ".".join(map(str, self.min_version))
            found = ".".join(map(str, version)) or "unknown"
            raise UnsupportedDatabase(
                f"squeal needs {self.label} {wanted} or newer (this server is {found})"
            )

    def begin_claim(self, connection: sa.Connection) -> None:
        """Prepare a fresh transaction for claiming (isolation level, locks)."""

    def after_migrate(self, connection: sa.Connection) -> None:
        """Database-level settings squeal needs once its tables exist."""

    def is_retryable(self, error: sa.exc.DBAPIError) -> bool:
        """True when ``error`` is transient (deadlock, lock timeout, busy) and worth a retry."""
        return bool(error.connection_invalidated)

    def claim(
        self,
        connection: sa.Connection,
        *,
        topic: str,
        limit: int,
        vt_ms: int,
        token: int,
        max_attempts: int,
    ) -> list[ClaimedRow]:
        """Lease up to ``limit`` ready messages of ``topic``, best priority first.

        The default is two statements in one write transaction: promote the due WAITING rows
        (delay over, backoff over, lease expired), then lease READY rows in index order.
        """
        params = {"in_topic": topic, "limit": limit, "max_attempts": max_attempts}
        connection.execute(self._promote, params)
        params.update(vt_ms=vt_ms, token=token)
        rows = connection.execute(self._lease_ready, params).all()
        return sorted((ClaimedRow(*row) for row in rows), key=lambda r: (r.neg_priority, r.id))

    @cached_property
    def _promote(self) -> sa.Update:
        m = self.m
        return sa.update(m).where(m.c.id.in_(self.due_ids.scalar_subquery())).values(promoted(m))

    @cached_property
    def _lease_ready(self) -> sa.Update:
        m = self.m
        return (
            sa.update(m)
            .where(m.c.id.in_(self.ready_ids.scalar_subquery()))
            .values(self.take_lease)
            .returning(*self.claimed_columns)
        )

    # -- shared machinery -----------------------------------------------------------------------

    def insert(self, connection: sa.Connection, rows: Sequence[dict[str, Any]]) -> list[int | None]:
        """Insert ``rows`` (parameter dicts); return each row's id, or None where deduplicated.

        Keys must already be unique within ``rows``.
        """
        dedup = any(row["dedup_key"] is not None for row in rows)
        if len(rows) == 1 or not self.dialect.insert_executemany_returning:
            return [self._insert_one(connection, dedup, row) for row in rows]
        stmt = self._returning[dedup][1]
        returned = connection.execute(stmt, list(rows)).all()
        by_key = {key: id_ for id_, key in returned if key is not None}
        # Ids come from one sequence in VALUES order, so sorted ids follow the input order.
        plain = iter(sorted(id_ for id_, key in returned if key is None))
        return [
            by_key.get(row["dedup_key"]) if row["dedup_key"] is not None else next(plain)
            for row in rows
        ]

    def _insert_one(
        self, connection: sa.Connection, dedup: bool, row: dict[str, Any]
    ) -> int | None:
        if self.dialect.insert_returning:
            found = connection.execute(self._returning[dedup][0], row).first()
            return None if found is None else int(found[0])
        stmt = self.insert_dedup if dedup else self.insert_plain
        result = connection.execute(stmt, row)
        return int(result.lastrowid) if result.rowcount else None

    @cached_property
    def _returning(self) -> dict[bool, tuple[Insert, Insert]]:
        """Per dedup flag: the insert returning its id, and returning (id, dedup_key)."""
        m = self.m
        return {
            dedup: (stmt.returning(m.c.id), stmt.returning(m.c.id, m.c.dedup_key))
            for dedup, stmt in ((False, self.insert_plain), (True, self.insert_dedup))
        }


__all__ = ["ClaimedRow", "Strategy", "dead_on_expiry", "promoted", "promoted_state"]
