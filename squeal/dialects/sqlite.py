"""SQLite 3.35+: one writer at a time, so claiming is a plain UPDATE ... RETURNING."""

from __future__ import annotations

from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.dml import Insert

from squeal.clock import now_ms
from squeal.dialects.base import Strategy


@compiles(now_ms, "sqlite")
def _now_ms(element: now_ms, compiler: Any, **kw: Any) -> str:
    # julianday('now') is fixed for the duration of one statement and has millisecond precision.
    return "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"


_BUSY_MESSAGES = ("database is locked", "database table is locked", "database is busy")


class SQLiteStrategy(Strategy):
    """SQLite has no SKIP LOCKED and no row locks: the database has one writer at a time.

    Each claim therefore starts with a write statement, so the transaction takes the write lock
    before it reads anything (the effect of BEGIN IMMEDIATE, without touching the user's engine
    or its pysqlite transaction handling). A reader never upgrades to a writer, which is what
    makes SQLite answer "database is locked" without waiting for the busy timeout.
    """

    label: ClassVar[str] = "SQLite"
    min_version: ClassVar[tuple[int, ...]] = (3, 35)

    def insert_ignoring_conflicts(self, values: dict[str, Any]) -> Insert:
        return sqlite.insert(self.m).values(values).on_conflict_do_nothing()

    def after_migrate(self, connection: sa.Connection) -> None:
        # WAL lets readers run beside the single writer; it is a property of the file and
        # persists. An in-memory database has no WAL and keeps its own mode.
        if connection.engine.url.database not in (None, "", ":memory:"):
            connection.exec_driver_sql("PRAGMA journal_mode=WAL").all()

    def is_retryable(self, error: sa.exc.DBAPIError) -> bool:
        text = str(error.orig).lower()
        return super().is_retryable(error) or any(m in text for m in _BUSY_MESSAGES)
