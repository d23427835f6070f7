"""The lean floor: a queue as a user would write it by hand, on a table of its own.

The floor (``squeal.cli.floor``) works on squeal's own table and does all a claim must do for
at-least-once delivery. The lean floor is what a user comparing squeal with a hand-written queue
would write instead: the same columns as squeal's message table, but only two indexes (the
primary key and one claim index on topic, state, priority, id; no due index, no dedup key), and
the least SQL that works. Its claim takes READY rows only: it neither looks at due rows (expired
leases, ended delays) nor promotes them, leaving that to a sweep of its own that the bench does
not run; on SQLite it is one autocommit ``UPDATE ... RETURNING`` (no ``BEGIN IMMEDIATE``), on
MariaDB one locking SELECT and one UPDATE. Puts and acks are the floor's, on the lean table.

Connections, parameter markers and durability settings are the floor's (its ``Raw`` driver
classes), so the two floors differ only in table and claim. The bench creates the table beside
squeal's (``PREFIX_lean``) and drops it at the end.
"""

from __future__ import annotations

import random
from typing import Any

import sqlalchemy as sa

from squeal.cli.floor import (
    CLAIMED,
    ClaimedRows,
    Floor,
    MySQLFloor,
    PostgreSQLFloor,
    SQLiteFloor,
    floor_missing,
)
from squeal.schema import READY, build_tables, validate_prefix

#: The lean table's name after the prefix.
SUFFIX = "lean"


class SQLiteLean(SQLiteFloor):
    """One statement per claim: SQLite takes its write lock before an UPDATE reads anything."""

    table_suffix = SUFFIX

    def claim_sql(self) -> str:
        return f"{self._take} WHERE id IN ({self._ready}) RETURNING {CLAIMED}"

    def claim_params(self, topic: str, limit: int, vt_ms: int, token: int) -> tuple[Any, ...]:
        return (vt_ms, token, topic, limit)

    def claim(self, topic: str, limit: int, vt_ms: int) -> tuple[int, ClaimedRows]:
        token = random.getrandbits(63)
        self.cur.execute(self._claim, self.claim_params(topic, limit, vt_ms, token))
        return token, self.cur.fetchall()


class PostgreSQLLean(PostgreSQLFloor):
    """One statement per claim: the ready walk, locked with SKIP LOCKED, feeds the UPDATE."""

    table_suffix = SUFFIX

    def connect(self, url: sa.URL) -> Any:
        # The claim's generic plan (psycopg prepares on the fifth run) is built while the fresh
        # table holds a few rows and no statistics; it then seq-scanned every claim at a
        # 100,000 backlog (71 claims/s). squeal and the asyncio floor say the same.
        conn = super().connect(url)
        conn.cursor().execute("SET enable_seqscan = off")
        return conn

    def claim_sql(self) -> str:
        return (
            f"{self._take} WHERE id = ANY(ARRAY({self._ready} FOR UPDATE SKIP LOCKED)) "
            f"RETURNING {CLAIMED}"
        )

    def claim_params(self, topic: str, limit: int, vt_ms: int, token: int) -> tuple[Any, ...]:
        return (vt_ms, token, topic, limit)


class MySQLLean(MySQLFloor):
    """READ COMMITTED: one locking walk of the claim index, then the UPDATE by id."""

    table_suffix = SUFFIX

    def claim_sql(self) -> str:
        t, p = self.table, self.mark
        return (
            f"SELECT {CLAIMED} FROM {t} FORCE INDEX ({t}_claim_ix) "
            f"WHERE topic = {p} AND state = {READY} ORDER BY neg_priority, id LIMIT {p} "
            "FOR UPDATE SKIP LOCKED"
        )

    def claim_params(self, topic: str, limit: int, vt_ms: int, token: int) -> tuple[Any, ...]:
        return (topic.encode(), limit)


_LEANS: dict[str, type[Floor]] = {
    "sqlite": SQLiteLean,
    "postgresql": PostgreSQLLean,
    "mysql": MySQLLean,
    "mariadb": MySQLLean,
}


def lean_table(prefix: str) -> sa.Table:
    """The lean table of ``prefix``: squeal's message columns, a primary key, one claim index."""
    prefix = validate_prefix(prefix)
    name = f"{prefix}_{SUFFIX}"
    columns = [column._copy() for column in build_tables(prefix).message.columns]
    return sa.Table(
        name,
        sa.MetaData(),
        *columns,
        sa.Index(f"{name}_claim_ix", "topic", "state", "neg_priority", "id"),
        sqlite_autoincrement=True,
    )


def create_lean(engine: sa.Engine, prefix: str) -> None:
    """Create the lean table of ``prefix`` (not measured: the bench's set-up)."""
    lean_table(prefix).create(engine)


def drop_lean(engine: sa.Engine, prefix: str) -> None:
    """Drop the lean table of ``prefix`` if it exists."""
    lean_table(prefix).drop(engine, checkfirst=True)


def lean_for(url: sa.URL, prefix: str) -> Floor:
    """The lean floor for ``url``'s database on ``url``'s driver, connected."""
    missing = floor_missing(url)
    if missing:
        raise ValueError(missing)
    cls = _LEANS[url.get_backend_name()]
    raw = next(raw for raw in cls.drivers if raw.driver == url.get_driver_name())
    return cls(url, prefix, raw())


__all__ = ["SUFFIX", "create_lean", "drop_lean", "lean_for", "lean_table"]
