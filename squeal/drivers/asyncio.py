"""asyncio drivers, reached through SQLAlchemy's adapted connections: asyncpg, psycopg (async),
aiomysql, asyncmy and aiosqlite.

squeal runs their connections from inside SQLAlchemy's asyncio bridge (``squeal.aio``): each
DB-API call on the adapted connection awaits the driver on the event loop, so these adapters are
DB-API adapters like the others. What is theirs: how the adapted connection turns autocommit on,
where the error code is, and one driver bug worked around.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, ClassVar

from squeal.bridge import await_
from squeal.drivers.base import Code, Driver


class _Adapted(Driver):
    """A driver behind SQLAlchemy's asyncio adaptation (``dbapi.driver_connection`` is the
    driver's own connection)."""

    #: The socket belongs to the event loop's transport; squeal leaves it alone.
    dead_peer_detection: ClassVar[bool] = False


class Asyncpg(_Adapted):
    """asyncpg (``postgresql+asyncpg``): its connection calls a listener per notification."""

    name: ClassVar[str] = "asyncpg"
    extra: ClassVar[str] = "asyncpg"
    notifications: ClassVar[bool] = True

    def autocommit(self, dbapi: Any) -> None:
        # Ends the transaction the adapter may have begun on connecting (it begins one
        # before each statement unless in autocommit mode).
        dbapi.set_isolation_level("autocommit")

    def listen_async(
        self, dbapi: Any, channel: str, notified: Callable[[], None]
    ) -> Callable[[], None]:
        connection = dbapi.driver_connection
        name = channel[1:-1].replace('""', '"')  # asyncpg quotes the channel itself

        def callback(*_: Any) -> None:
            notified()

        await_(connection.add_listener(name, callback))
        return lambda: None  # closing the connection ends it

    def code(self, error: BaseException) -> Code:
        return getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)


class PsycopgAsync(_Adapted):
    """psycopg 3's AsyncConnection (``postgresql+psycopg`` on ``create_async_engine``)."""

    name: ClassVar[str] = "psycopg"
    extra: ClassVar[str] = "psycopg-async"

    notifications: ClassVar[bool] = True

    def autocommit(self, dbapi: Any) -> None:
        dbapi.set_autocommit(True)

    def listen_async(
        self, dbapi: Any, channel: str, notified: Callable[[], None]
    ) -> Callable[[], None]:
        connection = dbapi.driver_connection
        await_(connection.execute(f"LISTEN {channel}"))

        async def read() -> None:
            # A broken connection ends the reader; the waiters then re-check every RECHECK.
            with suppress(Exception):
                async for _ in connection.notifies():
                    notified()

        reader = asyncio.get_running_loop().create_task(read())

        def stop() -> None:
            # Wait until it has unwound: until then the loop still watches the socket, whose
            # number the next connection may get once this one is closed.
            reader.cancel()
            await_(asyncio.wait([reader]))

        return stop

    def code(self, error: BaseException) -> Code:
        return getattr(error, "sqlstate", None)


class Aiomysql(_Adapted):
    """aiomysql (``mysql+aiomysql``, ``mariadb+aiomysql``), on PyMySQL's protocol code."""

    name: ClassVar[str] = "aiomysql"
    extra: ClassVar[str] = "aiomysql"

    def autocommit(self, dbapi: Any) -> None:
        dbapi.autocommit(True)

    def prepare(self, dbapi: Any, session_sql: Any) -> None:
        escape_aiomysql_bytes(dbapi.driver_connection)
        super().prepare(dbapi, session_sql)

    def adopt(self, dbapi: Any) -> None:
        escape_aiomysql_bytes(dbapi.driver_connection)


def escape_aiomysql_bytes(connection: Any) -> None:
    """aiomysql 0.3.2 escapes bytes with a PyMySQL function that PyMySQL 1.2.3 replaced by a
    string, so every bytes parameter raises ``TypeError: 'str' object is not callable``
    (aio-libs/aiomysql#1080, open). On the connections squeal uses (its own, and a caller's
    passed as ``connection=``), bytes are escaped the way PyMySQL itself escapes them
    (``_binary X'...'``); nothing else changes."""
    converters = importlib.import_module("pymysql.converters")
    if callable(getattr(converters, "escape_bytes_prefixed", None)):
        return  # a PyMySQL that still has it
    escape = connection.escape
    if getattr(escape, "squeal_escapes_bytes", False):
        return

    def escape_fixed(obj: Any) -> Any:
        if isinstance(obj, bytes | bytearray):
            return "_binary X'" + bytes(obj).hex() + "'"
        return escape(obj)

    escape_fixed.squeal_escapes_bytes = True  # type: ignore[attr-defined]
    connection.escape = escape_fixed


class Asyncmy(_Adapted):
    """asyncmy (``mysql+asyncmy``, ``mariadb+asyncmy``): logs every server warning."""

    name: ClassVar[str] = "asyncmy"
    extra: ClassVar[str] = "asyncmy"

    @contextmanager
    def migrating(self) -> Iterator[None]:
        # Migrations name their primary keys (Alembic its version table's too), which MySQL
        # and MariaDB ignore with warning 1280; asyncmy would log each one at WARNING.
        logger = logging.getLogger("asyncmy")
        quiet = _IgnoredPrimaryKeyNames()
        logger.addFilter(quiet)
        try:
            yield
        finally:
            logger.removeFilter(quiet)

    def autocommit(self, dbapi: Any) -> None:
        dbapi.autocommit(True)


class _IgnoredPrimaryKeyNames(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).endswith("ignored for PRIMARY key.")


class Aiosqlite(_Adapted):
    """aiosqlite (``sqlite+aiosqlite``): sqlite3 on a thread of its own per connection."""

    name: ClassVar[str] = "aiosqlite"
    extra: ClassVar[str] = "aiosqlite"

    def autocommit(self, dbapi: Any) -> None:
        dbapi.isolation_level = None

    def rollback(self, dbapi: Any, cursor: Any) -> None:
        dbapi.rollback()

    def code(self, error: BaseException) -> Code:
        code = getattr(error, "sqlite_errorcode", None)
        return code if isinstance(code, int) else None


__all__ = ["Aiomysql", "Aiosqlite", "Asyncmy", "Asyncpg", "PsycopgAsync"]
