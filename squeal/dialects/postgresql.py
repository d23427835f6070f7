"""PostgreSQL 12+: one statement claims, skipping rows other consumers hold."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.dml import Insert

from squeal.clock import now_ms
from squeal.dialects.base import (
    EVERYWHERE,
    LOCK_TIMEOUT_SECONDS,
    TIMINGS,
    ClaimedRow,
    ClaimScope,
    Strategy,
    Timing,
    dies,
    gate_params,
    ids_in_order,
    in_claim_order,
    promoted,
    scope_params,
    timing,
)
from squeal.dialects.bundle import Bundle
from squeal.dialects.dedup import PostgreSQLWindows
from squeal.dialects.health import PostgreSQLHealth
from squeal.dialects.locking import PostgreSQLLocking
from squeal.dialects.migration_lock import PostgreSQLMigrationLock
from squeal.drivers.base import Code
from squeal.executor import Executor
from squeal.schema import Tables


@compiles(now_ms, "postgresql")
def _now_ms(element: now_ms, compiler: Any, **kw: Any) -> str:
    # statement_timestamp(): the time this statement started. Not now(), frozen at the start of
    # the transaction; not clock_timestamp(), which is volatile, so the planner could not use
    # it as an index bound on visible_at (the due index would be filtered row by row).
    return "CAST(floor(extract(epoch FROM statement_timestamp()) * 1000) AS BIGINT)"


_DISCONNECT_SQLSTATES = ("08", "57P01", "57P02", "57P03")
#: Serialization failure, deadlock, lock timeout; and a prepared statement the session lost
#: (DISCARD ALL, a pooler in transaction mode): the retry runs on a new connection, whose
#: driver prepares afresh (asyncpg through SQLAlchemy keeps its own cache of them).
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03", "26000"})


def _array_of(select: sa.SelectBase) -> sa.ColumnElement[Any]:
    """``ARRAY(SELECT ...)``: keeps ``id = ANY(...)`` a primary-key lookup per id.

    ``UPDATE ... FROM (cte)`` was seen planned as a hash join over the whole table.
    """
    return sa.any_(sa.func.array(select.scalar_subquery()))


#: PostgreSQL's longest identifier (channel names included), in bytes.
_MAX_IDENTIFIER = 63


class PostgreSQLStrategy(Strategy):
    """Claims with ``FOR UPDATE SKIP LOCKED`` inside a single UPDATE ... RETURNING."""

    label: ClassVar[str] = "PostgreSQL"
    min_version: ClassVar[tuple[int, ...]] = (12,)

    #: The claim is one statement, so on an autocommit connection it is one round trip.
    claim_is_one_statement: ClassVar[bool] = True

    def __init__(self, dialect: sa.Dialect, tables: Tables, *, notify: bool = True) -> None:
        super().__init__(dialect, tables, notify=notify)
        m = self.m
        # ``id = ANY(:ids)``: one statement text for every batch size, so psycopg caches and
        # prepares it (it does neither for an IN list of more than 50 parameters).
        ids = sa.cast(sa.bindparam("ids"), postgresql.ARRAY(sa.BigInteger()))
        self.ack_batch = sa.delete(m).where(
            m.c.lease_token == sa.bindparam("token"), m.c.id == sa.any_(ids)
        )

    def insert_ignoring_conflicts(
        self, values: dict[str, Any] | list[dict[str, Any]], table: sa.Table | None = None
    ) -> Insert:
        into = self.m if table is None else table
        return postgresql.insert(into).values(values).on_conflict_do_nothing()

    def upsert(self, table: sa.Table, row: dict[str, Any], update: Sequence[str]) -> Insert:
        stmt = postgresql.insert(table).values(row)
        keys = [c.name for c in table.primary_key.columns]
        return stmt.on_conflict_do_update(
            index_elements=keys, set_={name: stmt.excluded[name] for name in update}
        )

    #: psycopg prepares a statement on its fifth run, and PostgreSQL then keeps one generic
    #: plan. Built while the table was empty (a consumer polling an idle queue), that plan
    #: seq-scans every claim, ack and touch for the life of the connection as the backlog
    #: grows (measured: 100k backlog, 20 claims/s). Every statement squeal runs on its own
    #: connections is shaped for an index, so it tells the planner never to prefer a scan.
    session_sql: ClassVar[tuple[str, ...]] = (
        f"SET lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'",
        "SET enable_seqscan = off",
    )

    # -- wake-up notifications (see squeal/waiting.py) ------------------------------------------

    @property
    def wake_channel(self) -> str | None:
        """``PREFIX_wake`` (``SCHEMA.PREFIX_wake`` in a schema: two schemas with one prefix
        never wake each other's consumers); quoted where it is listened to."""
        if not self.notify:
            return None
        schema = self.tables.schema
        channel = f"{self.tables.prefix}_wake"
        if schema is not None:
            channel = f"{schema}.{channel}"
        if len(channel.encode()) > _MAX_IDENTIFIER:  # PostgreSQL would cut it short
            channel = "squeal_wake_" + hashlib.sha256(channel.encode()).hexdigest()[:40]
        return channel

    def insert(
        self,
        ex: Executor,
        shared: dict[str, Any],
        payloads: Sequence[bytes],
        keys: Sequence[str | None],
    ) -> list[int | None]:
        # Only messages visible now wake consumers; a delayed put binds no channel.
        wake = self.wake_channel if shared["delay_ms"] == 0 else None
        shared = {**shared, "wake": wake}
        if len(payloads) == 1:
            return super().insert(ex, shared, payloads, keys)
        dedup = any(key is not None for key in keys)
        values = {**shared, "payloads": list(payloads), "dedup_keys": list(keys)}
        statement = self._unnest_insert[dedup, timing(shared)]
        return ids_in_order(keys, ex.rows(statement, values))

    @cached_property
    def _unnest_insert(self) -> dict[tuple[bool, Timing], sa.Executable]:
        """``INSERT ... SELECT ... FROM unnest(:dedup_keys, :payloads)``: any batch, one text.

        A VALUES list grows with the batch (100 rows: 33 kB of SQL, 400 parameters), which
        psycopg re-parses on every call and never prepares; two arrays keep the statement
        short, so it is parsed once and prepared like a single put.
        """
        return {
            (dedup, kind): self._unnest(dedup, kind) for dedup in (False, True) for kind in TIMINGS
        }

    def _unnest(self, dedup: bool, kind: Timing) -> sa.Executable:
        m = self.m
        rows = (
            sa.func.unnest(
                sa.cast(sa.bindparam("dedup_keys"), postgresql.ARRAY(sa.Text())),
                sa.cast(sa.bindparam("payloads"), postgresql.ARRAY(sa.LargeBinary())),
            )
            .table_valued("dedup_key", "payload", with_ordinality="n")
            .render_derived()
        )
        # Typed, since a parameter in a SELECT list has no column to take its type from.
        values: dict[str, sa.ColumnElement[Any]] = {
            name: sa.cast(value, m.c[name].type) for name, value in self.new_row(kind).items()
        }
        values.update(dedup_key=rows.c.dedup_key, payload=rows.c.payload)
        # Rows take ids in the order the SELECT yields them: the input order.
        select = sa.select(*values.values()).select_from(rows).order_by(rows.c.n)
        insert = postgresql.insert(m).from_select(list(values), select)
        if dedup:
            insert = insert.on_conflict_do_nothing()
        return self.announced(insert.returning(m.c.id, m.c.dedup_key))

    def announced(self, insert: Insert) -> sa.Executable:
        """``WITH ins AS (INSERT ... RETURNING ...) SELECT ... FROM ins WHERE <notify>``.

        The NOTIFY rides in the INSERT's own statement, so a put stays one round trip; it is
        delivered when the statement commits, and PostgreSQL sends identical notifications of
        one transaction once.
        """
        ins = insert.cte("ins")
        wake = sa.bindparam("wake", type_=sa.Text())
        notify = sa.case(
            (wake.is_not(None), sa.cast(sa.func.pg_notify(wake, sa.bindparam("topic")), sa.Text)),
            else_="",
        )
        return sa.select(*ins.c).where(notify.is_not(None))

    def is_retryable(self, code: Code, error: BaseException) -> bool:
        return code in _RETRYABLE_SQLSTATES

    def is_disconnect(self, code: Code, error: BaseException) -> bool:
        # pg_terminate_backend and server shutdowns (57P01-03) and connection exceptions (08).
        if isinstance(code, str):
            return code.startswith(_DISCONNECT_SQLSTATES)
        # The server sends a SQLSTATE with every error; an OperationalError without one came
        # from the client losing the socket (reset, closed, or timed out by detect_dead_peer).
        return isinstance(error, self.dialect.loaded_dbapi.OperationalError)

    def claim(
        self,
        ex: Executor,
        *,
        topic: str,
        limit: int,
        vt_ms: int,
        token: int,
        max_attempts: int,
        scope: ClaimScope = EVERYWHERE,
        limited: bool = False,
    ) -> list[ClaimedRow]:
        params = {"in_topic": topic, "limit": limit, "vt_ms": vt_ms, "token": token}
        params.update(scope_params(scope), **gate_params(limited))
        if not scope.sweep:
            return in_claim_order(ex.rows(self._claim_ready, params))
        params["attempts_limit"] = max_attempts
        return in_claim_order(ex.rows(self._claim, params))

    @cached_property
    def _claim_ready(self) -> sa.Update:
        """Lease the best ready rows, skipping locked ones (a claim that does not sweep)."""
        m = self.m
        ready = self.ready_ids.with_for_update(skip_locked=True)
        return (
            sa.update(m)
            .where(m.c.id == _array_of(ready))
            .values(self.take_lease)
            .returning(*self.claimed_columns)
        )

    @cached_property
    def _claim(self) -> sa.Update:
        """One statement: lease the best of (ready rows, due waiting rows); promote the rest.

        ``ready`` walks the claim index in order and stops after ``limit`` unlocked rows;
        ``due`` walks the due index over rows whose delay, backoff or lease has run out. The
        due rows that are not leased now are promoted to READY (or DEAD) by a second,
        disjoint UPDATE in the same statement, so no row is modified twice.
        """
        m = self.m
        ready = self.ready_ids.add_columns(m.c.neg_priority).with_for_update(skip_locked=True)
        ready_cte = ready.cte("ready")
        higher = (
            self.higher_ids.add_columns(m.c.neg_priority).with_for_update(skip_locked=True)
        ).cte("higher")
        due = (
            self.due_ids.add_columns(m.c.neg_priority, dies(m).label("dies"))
            .with_for_update(skip_locked=True)
            .cte("due")
        )
        candidates = sa.union_all(
            sa.select(ready_cte.c.id, ready_cte.c.neg_priority),
            sa.select(higher.c.id, higher.c.neg_priority),
            sa.select(due.c.id, due.c.neg_priority).where(sa.not_(due.c.dies)),
        ).subquery("candidates")
        pick = (
            sa.select(candidates.c.id)
            .order_by(candidates.c.neg_priority, candidates.c.id)
            .limit(sa.bindparam("limit"))
            .cte("pick")
        )
        promote = (
            sa.update(m)
            .where(m.c.id == _array_of(sa.select(due.c.id).except_(sa.select(pick.c.id))))
            .values(promoted(m))
            .cte("promote")
        )
        return (
            sa.update(m)
            .add_cte(promote)
            .where(m.c.id == _array_of(sa.select(pick.c.id)))
            .values(self.take_lease)
            .returning(*self.claimed_columns)
        )


BUNDLE = Bundle(
    dialects=("postgresql",),
    strategy=PostgreSQLStrategy,
    locking=PostgreSQLLocking,
    windows=PostgreSQLWindows,
    migration_lock=PostgreSQLMigrationLock,
    health=PostgreSQLHealth,
)
