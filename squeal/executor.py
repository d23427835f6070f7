"""Executors run squeal's Core statements either on a connection squeal manages or the caller's.

The strategies in ``squeal.dialects`` are written once against :class:`Executor`:
- :class:`RawExecutor` runs pre-compiled statements on a DB-API cursor of a connection squeal
  manages (see ``squeal.connections``): the hot path.
- :class:`CallerExecutor` runs them through the caller's SQLAlchemy ``Connection``, inside the
  caller's transaction (``connection=``), so SQLAlchemy's transaction bookkeeping stays right.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from squeal.connections import Link
from squeal.drivers.base import Driver
from squeal.prepared import Prepared
from squeal.server import UNKNOWN, Server

Row = Sequence[Any]
StatementListener = Callable[[str, Any], None]

#: Compiled statements a queue keeps; beyond this the cache starts over (each put_many of a new
#: batch size is a new statement on SQLite and MariaDB, and sizes are unbounded).
MAX_PREPARED = 256

#: Callables that see every statement squeal sends on its own connections, with its driver
#: parameters (a debugging and testing aid; engine events do not see these connections).
_listeners: list[StatementListener] = []


def add_statement_listener(listener: StatementListener) -> None:
    """Call ``listener(sql, parameters)`` before each statement squeal sends itself."""
    _listeners.append(listener)


def remove_statement_listener(listener: StatementListener) -> None:
    """Undo :func:`add_statement_listener`."""
    _listeners.remove(listener)


class Executor:
    """Runs statements and (for multi-statement work) brackets them in a transaction."""

    #: The server the statements run on, as squeal found it on first use.
    server: Server = UNKNOWN

    def rows(self, statement: sa.Executable, values: Mapping[str, Any]) -> list[Row]:
        """Execute and return every row."""
        raise NotImplementedError

    def count(self, statement: sa.Executable, values: Mapping[str, Any]) -> int:
        """Execute and return the number of rows matched."""
        raise NotImplementedError

    def insert(self, statement: sa.Executable, values: Mapping[str, Any]) -> int | None:
        """Execute an INSERT without RETURNING; the new id, or None if no row was inserted."""
        raise NotImplementedError

    def begin(self) -> None:
        """Start a transaction for the statements that follow (no-op inside the caller's)."""

    def commit(self) -> None:
        """Commit what :meth:`begin` started (no-op inside the caller's transaction)."""


class RawExecutor(Executor):
    """Pre-compiled statements on a DB-API connection that squeal manages."""

    def __init__(
        self,
        link: Link,
        prepared: dict[Any, Prepared],
        dialect: sa.Dialect,
        begin_sql: str,
        driver: Driver,
        *,
        server: Server,
    ) -> None:
        self.server = server
        self._dbapi = link.dbapi
        self._fetch = driver.rows
        self._execute = driver.execute
        self._rollback = driver.rollback
        self._cursor = link.cursor
        self._prepared = prepared
        self._dialect = dialect
        self._begin_sql = begin_sql
        self._open = False

    def _run(self, statement: sa.Executable, values: Mapping[str, Any]) -> Any:
        prepared = self._prepared.get(statement)
        if prepared is None:
            if len(self._prepared) >= MAX_PREPARED:
                self._prepared.clear()  # batch sizes past the strategies' caches: stay bounded
            prepared = self._prepared[statement] = Prepared(statement, self._dialect)
        sql, params = prepared.bind(values)
        for listener in _listeners:
            listener(sql, params)
        return self._execute(self._dbapi, self._cursor, sql, params)

    def rows(self, statement: sa.Executable, values: Mapping[str, Any]) -> list[Row]:
        return self._fetch(self._run(statement, values))

    def count(self, statement: sa.Executable, values: Mapping[str, Any]) -> int:
        return int(self._run(statement, values).rowcount)

    def insert(self, statement: sa.Executable, values: Mapping[str, Any]) -> int | None:
        result = self._run(statement, values)
        return int(result.lastrowid) if result.rowcount else None

    def begin(self) -> None:
        """Start a transaction on the autocommit connection (``begin_sql``, e.g. BEGIN)."""
        for listener in _listeners:
            listener(self._begin_sql, None)
        self._cursor.execute(self._begin_sql)
        self._open = True

    def commit(self) -> None:
        if self._open:
            self._cursor.execute("COMMIT")
            self._open = False

    def rollback(self) -> None:
        """Roll back a transaction left open by an error (the connection stays usable)."""
        if self._open:
            self._open = False
            self._rollback(self._dbapi, self._cursor)


class CallerExecutor(Executor):
    """Statements through the caller's SQLAlchemy Connection, inside the caller's transaction."""

    def __init__(self, connection: sa.Connection, server: Server) -> None:
        self._connection = connection
        self.server = server

    def rows(self, statement: sa.Executable, values: Mapping[str, Any]) -> list[Row]:
        return [tuple(row) for row in self._connection.execute(statement, dict(values))]

    def count(self, statement: sa.Executable, values: Mapping[str, Any]) -> int:
        return int(self._connection.execute(statement, dict(values)).rowcount)

    def insert(self, statement: sa.Executable, values: Mapping[str, Any]) -> int | None:
        result = self._connection.execute(statement, dict(values))
        return int(result.lastrowid) if result.rowcount else None


__all__ = [
    "CallerExecutor",
    "Executor",
    "RawExecutor",
    "Row",
    "add_statement_listener",
    "remove_statement_listener",
]
