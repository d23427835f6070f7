"""A database lock held while one prefix is migrated, so concurrent upgrades take turns.

Two processes that run ``squeal migrate`` or ``Queue.create()`` on a fresh prefix at once would
both find no tables and both create them; one would fail half-way. Under this lock the second
waits, then reads the version table the first committed and finds nothing left to do.

PostgreSQL and MariaDB/MySQL take a session-level named lock (an advisory lock, ``GET_LOCK``)
before the migration's transaction and release it after the commit, because MariaDB commits
DDL implicitly and the version row must be visible before the next migrator looks. SQLite has
no named locks: its migration transaction starts with ``BEGIN IMMEDIATE``, the file's write lock.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import ClassVar

import sqlalchemy as sa

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

    def acquire(self, conn: sa.Connection, deadline: float) -> None:
        seconds = max(1, int(deadline - time.monotonic()))
        got = conn.execute(
            sa.text("SELECT GET_LOCK(:name, :seconds)"),
            {"name": self.lock_name, "seconds": seconds},
        ).scalar()
        conn.commit()
        if got != 1:
            raise self.timed_out()

    def release(self, conn: sa.Connection) -> None:
        conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": self.lock_name})
        conn.commit()


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


def _poll(attempt: Callable[[], bool], deadline: float, lock: MigrationLock) -> None:
    """Call ``attempt`` until it returns True, backing off; DatabaseBusy at the deadline."""
    pause = _POLL_SECONDS[0]
    while not attempt():
        if time.monotonic() + pause > deadline:
            raise lock.timed_out()
        time.sleep(pause)
        pause = min(pause * 2, _POLL_SECONDS[1])
