"""A database lock held while one prefix is migrated, so concurrent upgrades take turns.

Two processes that run ``squeal migrate`` or ``Queue.create()`` on a fresh prefix at once would
both find no tables and both create them; one would fail half-way. Under this lock the second
waits, then reads the version table the first committed and finds nothing left to do.

PostgreSQL and MariaDB/MySQL take a session-level named lock (an advisory lock, ``GET_LOCK``)
before the migration's transaction and release it after the commit, because MariaDB commits
DDL implicitly and the version row must be visible before the next migrator looks. SQLite has
no named locks: its migration transaction starts with ``BEGIN IMMEDIATE``, the file's write lock.

A MariaDB Galera cluster does not replicate ``GET_LOCK`` (it locks one node only), so there the
lock is a row of ``squeal_migration_lock``, taken by a committed write: Galera certifies
concurrent writes of one row in one order for the whole cluster, so one migrator wins.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import ClassVar, Protocol

import sqlalchemy as sa

from squeal.drivers import driver_for
from squeal.drivers.base import Code
from squeal.errors import DatabaseBusy

#: How long a migration waits for another migration of the same prefix to finish.
MIGRATION_LOCK_SECONDS = 300.0
_POLL_SECONDS = (0.02, 0.5)


class MigrationLock:
    """No lock: for a database that serializes DDL by itself (the base of the others)."""

    label: ClassVar[str] = "database"

    def __init__(self, prefix: str, schema: str | None = None) -> None:
        # The schema is part of the name (two schemas with one prefix never block each other);
        # without one the name is what earlier versions of squeal used.
        where = prefix if schema is None else f"{schema}.{prefix}"
        self.name = f"squeal.migrate.{where}"

    def acquire(self, conn: sa.Connection, deadline: float) -> None:
        """Take the lock before the migration's transaction begins."""

    def begin(self, conn: sa.Connection, deadline: float) -> None:
        """Called first inside the migration's transaction."""

    def release(self, conn: sa.Connection) -> None:
        """Give the lock back after the migration's transaction has ended."""

    def timed_out(self) -> DatabaseBusy:
        """The error raised when another migration held the lock past the deadline."""
        return DatabaseBusy(
            f"another migration of {self.name.rsplit('.', 1)[-1]!r} held the {self.label} "
            f"migration lock for more than {MIGRATION_LOCK_SECONDS:.0f}s; try again later",
            retryable=True,
        )


class PostgreSQLMigrationLock(MigrationLock):
    """A session advisory lock keyed by a stable 64-bit hash of the name (per database)."""

    label = "advisory"

    @property
    def key(self) -> int:
        digest = hashlib.sha256(self.name.encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def acquire(self, conn: sa.Connection, deadline: float) -> None:
        # pg_try_advisory_lock in a loop rather than pg_advisory_lock: the wait stays bounded
        # without touching the session's lock_timeout.
        try_lock = sa.text("SELECT pg_try_advisory_lock(:key)")
        _poll(lambda: bool(conn.execute(try_lock, {"key": self.key}).scalar()), deadline, self)
        conn.commit()

    def release(self, conn: sa.Connection) -> None:
        conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        conn.commit()


class MySQLMigrationLock(MigrationLock):
    """A named lock (``GET_LOCK``): server-wide, held by the session until released."""

    label = "GET_LOCK"

    @property
    def lock_name(self) -> str:
        # Lock names are limited to 64 characters.
        if len(self.name) <= 64:
            return self.name
        return "squeal.migrate." + hashlib.sha256(self.name.encode()).hexdigest()[:40]

    def __init__(self, prefix: str, schema: str | None = None) -> None:
        super().__init__(prefix, schema)
        self._schema = schema
        self._cluster: GaleraMigrationLock | None = None

    def acquire(self, conn: sa.Connection, deadline: float) -> None:
        if galera(conn):
            self._cluster = GaleraMigrationLock(self.name, self._schema)
            self._cluster.acquire(conn, deadline)
            return
        seconds = max(1, int(deadline - time.monotonic()))
        got = conn.execute(
            sa.text("SELECT GET_LOCK(:name, :seconds)"),
            {"name": self.lock_name, "seconds": seconds},
        ).scalar()
        conn.commit()
        if got != 1:
            raise self.timed_out()

    def release(self, conn: sa.Connection) -> None:
        if self._cluster is not None:
            self._cluster.release(conn)
            return
        conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": self.lock_name})
        conn.commit()


def galera(conn: sa.Connection) -> bool:
    """Whether ``conn``'s server is a node of a Galera cluster (``wsrep_on``)."""
    row = conn.execute(sa.text("SHOW VARIABLES LIKE 'wsrep_on'")).first()
    conn.commit()
    return row is not None and str(row[1]).upper() == "ON"


#: Errors of a lock write that lost to another node's (certification failure), or that ran on
#: a node not yet synced with the cluster: try again.
_LOST_RACE: frozenset[Code] = frozenset({1047, 1062, 1205, 1213})


class GaleraMigrationLock:
    """A lease row of ``squeal_migration_lock`` (name, token, expires_at), one per migration.

    A migrator reads the row (waiting for the cluster's earlier commits: ``wsrep_sync_wait``);
    if there is none it inserts it, if its lease ran out it takes it over, and commits. Two
    nodes racing write the same primary key: Galera certifies one and aborts the other (1213),
    which reads again and waits. Waiting migrators only read, so the holder's release (a
    delete, retried if it loses a race all the same) does not conflict with them. The lease lasts
    as long as a migration may wait for the lock: a migrator killed mid-way blocks the next
    for at most that long (or until its row is deleted by hand).
    """

    label = "row (Galera)"
    table_name = "squeal_migration_lock"

    def __init__(self, name: str, schema: str | None) -> None:
        self.name = name
        self.schema = schema
        self.token = secrets.randbits(62)

    def _table(self, conn: sa.Connection) -> str:
        quote = conn.dialect.identifier_preparer.quote
        table = quote(self.table_name)
        return table if self.schema is None else f"{quote(self.schema)}.{table}"

    def acquire(self, conn: sa.Connection, deadline: float) -> None:
        table = self._table(conn)
        conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 1")
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {table} (name VARCHAR(255) NOT NULL PRIMARY KEY, "
            "token BIGINT NOT NULL, expires_at DATETIME(6) NOT NULL) ENGINE=InnoDB"
        )
        conn.commit()
        expiry = "UTC_TIMESTAMP(6) + INTERVAL :seconds SECOND"
        holder = sa.text(f"SELECT expires_at < UTC_TIMESTAMP(6) FROM {table} WHERE name = :name")
        insert = sa.text(
            f"INSERT INTO {table} (name, token, expires_at) VALUES (:name, :token, {expiry})"
        )
        take_over = sa.text(
            f"UPDATE {table} SET token = :token, expires_at = {expiry} "
            "WHERE name = :name AND expires_at < UTC_TIMESTAMP(6)"
        )
        params = {"name": self.name, "token": self.token, "seconds": int(MIGRATION_LOCK_SECONDS)}

        def taken() -> bool:
            # Only a free or run-out lock is written to: waiting migrators read (their writes
            # would conflict with the holder's release).
            row = conn.execute(holder, params).first()
            if row is not None and not row[0]:
                conn.commit()
                return False
            step = insert if row is None else take_over
            return self._committed(conn, lambda: conn.execute(step, params).rowcount == 1)

        _poll(taken, deadline, self)

    def release(self, conn: sa.Connection) -> None:
        delete = sa.text(f"DELETE FROM {self._table(conn)} WHERE name = :name AND token = :token")
        params = {"name": self.name, "token": self.token}
        deadline = time.monotonic() + MIGRATION_LOCK_SECONDS
        _poll(
            lambda: self._committed(conn, lambda: conn.execute(delete, params) is not None),
            deadline,
            self,
        )

    def _committed(self, conn: sa.Connection, write: Callable[[], bool]) -> bool:
        """Run ``write`` and commit; False if another node's write won (or the row is there)."""
        code = driver_for(conn.dialect).code
        try:
            done = write()
            conn.commit()
        except sa.exc.DBAPIError as error:
            conn.rollback()
            if code(error.orig or error) in _LOST_RACE:
                return False
            raise
        return done

    def timed_out(self) -> DatabaseBusy:
        return DatabaseBusy(
            f"another migration held the Galera migration lock {self.name!r} (a row of "
            f"{self.table_name}) for more than {MIGRATION_LOCK_SECONDS:.0f}s; try again later",
            retryable=True,
        )


class SQLiteMigrationLock(MigrationLock):
    """The file's write lock, taken by ``BEGIN IMMEDIATE`` as the transaction's first statement."""

    label = "write"

    def begin(self, conn: sa.Connection, deadline: float) -> None:
        def begun() -> bool:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except sa.exc.OperationalError as error:
                text = str(error.orig).lower()
                if "locked" in text or "busy" in text:
                    return False
                raise
            return True

        _poll(begun, deadline, self)


@contextmanager
def locked_transaction(
    conn: sa.Connection, lock: MigrationLock, *, timeout: float = MIGRATION_LOCK_SECONDS
) -> Iterator[None]:
    """Run the body in one transaction on ``conn`` while holding the migration ``lock``.

    The transaction commits when the body returns and rolls back when it raises; the lock is
    released after that.

    Raises:
        DatabaseBusy: another migration of ``prefix`` held the lock for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    if conn.in_transaction():
        conn.commit()
    lock.acquire(conn, deadline)
    try:
        with conn.begin():
            lock.begin(conn, deadline)
            yield
    except BaseException:
        # The session may be gone with the error; the server then released its locks.
        with suppress(Exception):
            lock.release(conn)
        raise
    lock.release(conn)


class _Waits(Protocol):
    def timed_out(self) -> DatabaseBusy: ...


def _poll(attempt: Callable[[], bool], deadline: float, lock: _Waits) -> None:
    """Call ``attempt`` until it returns True, backing off; DatabaseBusy at the deadline."""
    pause = _POLL_SECONDS[0]
    while not attempt():
        if time.monotonic() + pause > deadline:
            raise lock.timed_out()
        time.sleep(pause)
        pause = min(pause * 2, _POLL_SECONDS[1])
