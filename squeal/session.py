"""The one boundary between squeal and the database: transactions, retries, error wrapping."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from squeal.dialects.base import Strategy
from squeal.errors import DatabaseBusy, DatabaseError, SchemaMissing, SchemaOutOfDate
from squeal.schema import SCHEMA_REVISION, Tables

T = TypeVar("T")
log = logging.getLogger("squeal")

#: How long squeal keeps retrying a transient failure (deadlock, lock timeout, busy, reconnect).
RETRY_SECONDS = 30.0


def wrap(error: sa.exc.SQLAlchemyError, action: str) -> DatabaseError:
    """A DatabaseError that names the driver's error but never the statement's parameters."""
    orig = getattr(error, "orig", None)
    source = orig if orig is not None else error
    first_line = (str(source).strip().splitlines() or [""])[0]
    # SQLAlchemy appends "[SQL: ...]" and "[parameters: ...]" to its own text; drop them.
    first_line = first_line.split(" [SQL:")[0].split("[parameters:")[0].strip()
    return DatabaseError(f"{action} failed: {type(source).__name__}: {first_line}")


def migrate_command(engine: sa.Engine, prefix: str) -> str:
    """The shell command that brings this database's squeal tables up to date."""
    url = engine.url.render_as_string(hide_password=True)
    option = "" if prefix == "squeal" else f" --prefix {prefix}"
    return f"squeal migrate --url '{url}'{option}   (or Queue.create(), or alembic upgrade)"


class Session:
    """Runs units of work for one queue: its own transactions with retries, or the caller's."""

    def __init__(self, engine: sa.Engine, strategy: Strategy, tables: Tables) -> None:
        self.engine = engine
        self.strategy = strategy
        self.tables = tables
        self._schema_ok = False
        self._version_table = sa.table(
            f"{tables.prefix}_alembic_version", sa.column("version_num", sa.String())
        )

    def forget_schema(self) -> None:
        """Check the schema again on next use (after create or destroy)."""
        self._schema_ok = False

    def write(
        self,
        work: Callable[[sa.Connection], T],
        connection: sa.Connection | None,
        *,
        commit_on: type[BaseException] | None = None,
    ) -> T:
        """Run ``work`` in the caller's transaction, or in a transaction of ours that commits.

        ``commit_on``: an exception type after which our own transaction still commits (the
        exception is raised afterwards), e.g. LeaseLost in a batch whose other rows succeeded.
        """
        if connection is not None:
            self._ensure_schema(connection)
            try:
                return work(connection)
            except sa.exc.SQLAlchemyError as error:
                raise wrap(error, "write in the caller's transaction") from None
        return self._transact(work, claim=False, commit_on=commit_on)

    def claim(self, work: Callable[[sa.Connection], T]) -> T:
        """Run a claim in a fresh transaction prepared by the dialect."""
        return self._transact(work, claim=True, commit_on=None)

    def read(self, work: Callable[[sa.Connection], T]) -> T:
        """Run a read-only unit of work."""
        return self._transact(work, claim=False, commit_on=None)

    def _transact(
        self,
        work: Callable[[sa.Connection], T],
        *,
        claim: bool,
        commit_on: type[BaseException] | None,
    ) -> T:
        deadline = time.monotonic() + RETRY_SECONDS
        pause = 0.002
        while True:
            try:
                with self.engine.connect() as conn:
                    if not self._schema_ok:
                        self._ensure_schema(conn)
                        conn.rollback()  # a claim's isolation level is set before its first read
                    if claim:
                        self.strategy.begin_claim(conn)
                    try:
                        result = work(conn)
                    except BaseException as exc:
                        if commit_on is not None and isinstance(exc, commit_on):
                            conn.commit()
                        raise
                    conn.commit()
                    return result
            except sa.exc.DBAPIError as error:
                if not self.strategy.is_retryable(error):
                    raise wrap(error, "squeal") from None
                if time.monotonic() + pause > deadline:
                    busy = wrap(error, f"squeal (retried for {RETRY_SECONDS:.0f}s)")
                    raise DatabaseBusy(str(busy), retryable=True) from None
                log.debug("squeal: transient database error, retrying", exc_info=False)
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 0.25)
            except sa.exc.SQLAlchemyError as error:
                raise wrap(error, "squeal") from None

    def _ensure_schema(self, conn: sa.Connection) -> None:
        if self._schema_ok:
            return
        self.strategy.check_server(conn)
        name = self._version_table.name
        command = migrate_command(self.engine, self.tables.prefix)
        if not sa.inspect(conn).has_table(name):
            raise SchemaMissing(
                f"squeal's tables for prefix {self.tables.prefix!r} do not exist; run: {command}",
                command=command,
            )
        found = conn.execute(sa.select(self._version_table.c.version_num)).scalars().all()
        if found != [SCHEMA_REVISION]:
            raise SchemaOutOfDate(
                f"squeal's tables are at revision {found or 'none'}; this squeal needs "
                f"{SCHEMA_REVISION}; run: {command}",
                command=command,
            )
        self._schema_ok = True
