"""What a DB-API driver decides: autocommit, session set-up, error codes, sockets, notifications.

The database decides the SQL (``squeal.dialects``); the driver decides how a statement runs.
Each adapter here is small and stateless: one instance per driver, shared by every queue. A
driver squeal has no adapter for runs through :class:`Generic`, on SQLAlchemy's public
``Connection`` API only: correct, slower, without notifications or dead-peer detection.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any, ClassVar

from squeal.prepared import Params

#: What a driver error carries to tell what happened: a SQLSTATE (PostgreSQL), an error number
#: (MySQL), or nothing the adapter could find.
Code = str | int | None


class Driver:
    """A DB-API driver squeal runs its pre-compiled statements on directly."""

    #: The driver's name in SQLAlchemy URLs (``postgresql+NAME``) and ``dialect.driver``.
    name: ClassVar[str] = ""
    #: The pip extra that installs it (``pip install 'squeal[EXTRA]'``).
    extra: ClassVar[str] = ""
    #: False for :class:`Generic`: statements go through SQLAlchemy, not a raw cursor.
    native: ClassVar[bool] = True
    #: Whether :meth:`listen` and :meth:`notified` work (PostgreSQL LISTEN/NOTIFY).
    notifications: ClassVar[bool] = False
    #: Whether :meth:`socket` finds the connection's socket (dead-peer detection, and idle
    #: connections the server closed found before they are used).
    dead_peer_detection: ClassVar[bool] = True

    def autocommit(self, dbapi: Any) -> None:
        """Turn autocommit on: one statement is one round trip; squeal begins transactions."""
        dbapi.autocommit = True

    def prepare(self, dbapi: Any, session_sql: Sequence[str]) -> None:
        """Set up a connection squeal keeps: autocommit, then the database's session SQL."""
        self.autocommit(dbapi)
        if session_sql:
            cursor = dbapi.cursor()
            try:
                for statement in session_sql:
                    cursor.execute(statement)
            finally:
                cursor.close()

    def migrating(self) -> AbstractContextManager[None]:
        """Around squeal's migrations (DDL): nothing, except where a driver needs it."""
        return nullcontext()

    def adopt(self, dbapi: Any) -> None:
        """Ready a caller's connection (``connection=``) for squeal's statements: nothing,
        except where a driver bug needs working around on every connection squeal uses."""

    #: Exceptions besides its DB-API ``Error`` the driver lets escape when its connection dies.
    lost: ClassVar[tuple[type[BaseException], ...]] = ()

    def rollback(self, dbapi: Any, cursor: Any) -> None:
        """End the transaction squeal began on an autocommit connection, without its work.

        A statement, not ``dbapi.rollback()``: on an autocommit connection some drivers skip
        that call (psycopg2), which would leave the transaction open for the next unit of work.
        """
        cursor.execute("ROLLBACK")

    def code(self, error: BaseException) -> Code:
        """The server's error code carried by the driver exception ``error``, if any."""
        args = getattr(error, "args", ())
        return args[0] if args and isinstance(args[0], int) else None

    def socket(self, dbapi: Any) -> int | None:
        """The file descriptor of the connection's socket (None: the adapter cannot tell)."""
        return None

    def tcp_tuned(self, dbapi: Any) -> bool:
        """Whether the application set the connection's TCP options itself (keepalives):
        squeal then leaves them alone (no dead-peer detection of its own)."""
        return False

    def execute(self, dbapi: Any, cursor: Any, sql: str, params: Params) -> Any:
        """Run one compiled statement; its result (the cursor, or what :meth:`rows` reads),
        with ``rowcount`` and ``lastrowid``."""
        cursor.execute(sql, params)
        return cursor

    def rows(self, result: Any) -> list[Any]:
        """Every row of a result, each a sequence with ``bytes`` for binary values."""
        return list(result.fetchall())

    def connect_timeout(self, seconds: int) -> dict[str, Any]:
        """Connect arguments that bound how long connecting may take (CLI use)."""
        return {}

    # -- notifications --------------------------------------------------------------------------

    def listen(self, dbapi: Any, channel: str) -> None:
        """Start listening on ``channel`` (a quoted identifier) on an autocommit connection."""
        cursor = dbapi.cursor()
        try:
            cursor.execute(f"LISTEN {channel}")
        finally:
            cursor.close()

    def notified(self, dbapi: Any, timeout: float) -> bool:
        """True when a notification arrived within ``timeout`` seconds."""
        raise NotImplementedError(f"{self.name} has no notifications")

    def listen_async(
        self, dbapi: Any, channel: str, notified: Callable[[], None]
    ) -> Callable[[], None]:
        """An asyncio driver (inside the bridge): call ``notified`` on the event loop for each
        notification on ``channel`` from now on; returns what stops it."""
        raise NotImplementedError(f"{self.name} has no asyncio notifications")


def readable(fileno: int, timeout: float) -> bool:
    """True when the socket ``fileno`` has data to read within ``timeout`` seconds."""
    with suppress(InterruptedError):
        ready, _, _ = select.select([fileno], [], [], max(timeout, 0.0))
        return bool(ready)
    return False


class Generic(Driver):
    """Any other driver SQLAlchemy accepts: statements go through SQLAlchemy's Connection.

    squeal then borrows a connection from the application's pool for each unit of work and
    commits through SQLAlchemy. It finds error codes where the common drivers keep them, sets
    no session timeouts, detects no dead peers and polls instead of listening.
    """

    native: ClassVar[bool] = False
    dead_peer_detection: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.label = name

    def code(self, error: BaseException) -> Code:
        for attribute in ("sqlstate", "pgcode", "errno"):
            value = getattr(error, attribute, None)
            if isinstance(value, str | int) and value not in ("", -1):
                return value
        return super().code(error)


__all__ = ["Code", "Driver", "Generic", "readable"]
