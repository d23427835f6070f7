"""SQLite 3.35+: one writer at a time, so claiming is a plain UPDATE ... RETURNING."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.dml import Insert

from squeal.bridge import sleep as pause_for
from squeal.clock import now_ms
from squeal.dialects.base import Strategy, Timing
from squeal.dialects.bundle import Bundle
from squeal.dialects.dedup import SQLiteWindows
from squeal.dialects.health import SQLiteHealth
from squeal.dialects.locking import SQLiteLocking
from squeal.dialects.migration_lock import SQLiteMigrationLock
from squeal.drivers.base import Code
from squeal.errors import DatabaseBusy


@compiles(now_ms, "sqlite")
def _now_ms(element: now_ms, compiler: Any, **kw: Any) -> str:
    # julianday('now') is fixed for the duration of one statement and has millisecond precision.
    return "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"


#: How long switching a fresh file to WAL keeps retrying while other connections hold it.
WAL_SWITCH_SECONDS = 60.0
_BUSY_MESSAGES = ("database is locked", "database table is locked", "database is busy")
#: SQLITE_BUSY, SQLITE_LOCKED (the codes Python 3.11+ attaches; older ones only say it).
_BUSY_CODES = frozenset({5, 6})


class SQLiteStrategy(Strategy):
    """SQLite has no SKIP LOCKED and no row locks: the database has one writer at a time.

    A claim's statements are UPDATEs, each on an autocommit connection: SQLite takes the write
    lock when an UPDATE starts, before it reads anything (a reader that later upgrades to a
    writer is what makes SQLite answer "database is locked" at once instead of waiting out the
    busy timeout). Work of several statements that must commit together (a limited topic's
    claim) runs in BEGIN IMMEDIATE for the same reason. The connections are squeal's own, so
    the application's engine and its pysqlite transaction handling are never touched.
    """

    label: ClassVar[str] = "SQLite"
    min_version: ClassVar[tuple[int, ...]] = (3, 35)

    #: Takes the write lock before the claim reads anything.
    begin_sql: ClassVar[str] = "BEGIN IMMEDIATE"
    #: A claim needs no transaction around it: most claims are the lease alone, one statement
    #: (BEGIN IMMEDIATE and COMMIT around it cost a drain in batches of 100 about 12 %, A/B);
    #: a sweep's promotion is a whole state change by itself (due rows become READY or DEAD),
    #: so it may commit before the lease that follows, which then finds them READY. A
    #: promotion that finds nothing due writes nothing, and its commit no WAL frame.
    claim_is_one_statement: ClassVar[bool] = True
    #: The cursor's lastrowid: ~6 % faster one-message puts than reading RETURNING (A/B run).
    single_insert_returns: ClassVar[bool] = False

    def insert_ignoring_conflicts(
        self, values: dict[str, Any] | list[dict[str, Any]], table: sa.Table | None = None
    ) -> Insert:
        into = self.m if table is None else table
        return sqlite.insert(into).values(values).on_conflict_do_nothing()

    def upsert(self, table: sa.Table, row: dict[str, Any], update: Sequence[str]) -> Insert:
        stmt = sqlite.insert(table).values(row)
        keys = [c.name for c in table.primary_key.columns]
        return stmt.on_conflict_do_update(
            index_elements=keys, set_={name: stmt.excluded[name] for name in update}
        )

    def multirow_insert(
        self, n: int, dedup: bool, kind: Timing, *, bare: bool = False
    ) -> sa.Executable:
        """``INSERT ... SELECT <shared values>, column2, column3 FROM (VALUES (i, ?, ?), ...)``.

        Only each message's key and payload are bound per row (2 parameters, not 9) and the
        shared values once: 100 rows run ~12 % faster than a VALUES list of whole rows.
        Ordered by the literal position, so ids follow the input order.
        """
        m = self.m
        key_type = m.c.dedup_key.type
        rows = ", ".join(f"({i}, :dedup_key_{i}, :payload_{i})" for i in range(n))
        params = [sa.bindparam(f"dedup_key_{i}", type_=key_type) for i in range(n)]
        params += [sa.bindparam(f"payload_{i}", type_=sa.LargeBinary()) for i in range(n)]
        source = (
            sa.text(f"VALUES {rows}")
            .bindparams(*params)
            .columns(sa.column("column1"), sa.column("column2"), sa.column("column3"))
            .subquery("new")
        )
        values = {
            **self.new_row(kind),
            "dedup_key": source.c.column2,
            "payload": source.c.column3,
        }
        select = sa.select(*values.values()).order_by(source.c.column1)
        insert = sqlite.insert(m).from_select(list(values), select)
        if dedup:
            insert = insert.on_conflict_do_nothing()
        return insert.returning(m.c.id, m.c.dedup_key)

    def after_migrate(self, connection: sa.Connection) -> None:
        """Switch the file to WAL: readers then run beside the single writer (it persists).

        The switch needs the file to itself. Other processes migrating the same fresh file at
        once take turns on its write lock meanwhile, and one busy timeout (5 s) was seen to
        run out under load; so it is retried, with jittered backoff, for WAL_SWITCH_SECONDS.
        An in-memory database has no WAL and keeps its own mode.
        """
        if connection.engine.url.database in (None, "", ":memory:"):
            return
        deadline = time.monotonic() + WAL_SWITCH_SECONDS
        pause = 0.01
        while True:
            try:
                mode = connection.exec_driver_sql("PRAGMA journal_mode=WAL").scalar()
            except sa.exc.OperationalError as error:
                if not _busy(error) or time.monotonic() + pause > deadline:
                    raise
                mode = None
            if str(mode).lower() == "wal":
                return
            if time.monotonic() + pause > deadline:
                raise DatabaseBusy(
                    f"could not switch the SQLite file to WAL in {WAL_SWITCH_SECONDS:.0f}s "
                    f"(journal mode is still {mode}): another process keeps it open",
                    retryable=True,
                )
            pause_for(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.5)

    def is_retryable(self, code: Code, error: BaseException) -> bool:
        return (isinstance(code, int) and code & 0xFF in _BUSY_CODES) or _busy(error)


def _busy(error: BaseException) -> bool:
    text = str(error).lower()
    return any(m in text for m in _BUSY_MESSAGES)


BUNDLE = Bundle(
    dialects=("sqlite",),
    strategy=SQLiteStrategy,
    locking=SQLiteLocking,
    windows=SQLiteWindows,
    migration_lock=SQLiteMigrationLock,
    health=SQLiteHealth,
    no_schemas="SQLite has no schemas: use another database file, or a prefix, to keep them apart",
)
