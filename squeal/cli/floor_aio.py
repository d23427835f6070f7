"""The asyncio floor: the floor's statements (``squeal.cli.floor``) run by hand on a raw asyncio
driver, as an application on asyncpg, aiomysql, asyncmy or aiosqlite would run them.

The SQL is the sync floor's, written once per database there (``Floor.statements``); what this
module adds is how each asyncio driver connects, executes and waits for a notification (the
``AsyncRaw`` classes), and each database's few steps per operation (one statement on
PostgreSQL; a transaction around the claim on SQLite and MySQL).
"""

from __future__ import annotations

import asyncio
import importlib
import random
import re
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import sqlalchemy as sa

from squeal.cli.floor import (
    FIRST_POLL,
    POLL_CAP,
    ClaimedRows,
    Floor,
    MySQLFloor,
    PostgreSQLFloor,
    SQLiteFloor,
    server_args,
)


async def woken(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``event``; whether it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:  # (Python 3.10: not yet the built-in TimeoutError)
        return False
    return True


class AsyncRaw:
    """One asyncio driver used directly: autocommit connections."""

    driver: ClassVar[str] = ""
    module: ClassVar[str] = ""
    #: The parameter marker the floor's statements are written with for this driver.
    mark: ClassVar[str] = "%s"

    def __init__(self) -> None:
        self.dbapi: Any = importlib.import_module(self.module)

    async def connect(self, url: sa.URL) -> Any:
        """A new autocommit connection to ``url``."""
        raise NotImplementedError

    async def rows(self, conn: Any, sql: str, params: Sequence[Any]) -> ClaimedRows:
        """Run ``sql``; the rows it returns."""
        raise NotImplementedError

    async def run(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> tuple[int, int]:
        """Run ``sql``; (rows affected, last inserted id or 0)."""
        raise NotImplementedError

    async def close(self, conn: Any) -> None:
        """Close ``conn``."""
        await conn.close()


class Asyncpg(AsyncRaw):
    """asyncpg: numbered markers (``$1``), converted once per statement text."""

    driver = "asyncpg"
    module = "asyncpg"

    def __init__(self) -> None:
        super().__init__()
        self._numbered: dict[str, str] = {}

    def _sql(self, sql: str) -> str:
        text = self._numbered.get(sql)
        if text is None:
            count = iter(range(1, 1 << 20))
            text = self._numbered[sql] = re.sub("%s", lambda _: f"${next(count)}", sql)
        return text

    async def connect(self, url: sa.URL) -> Any:
        return await self.dbapi.connect(**server_args(url, 5432), database=url.database)

    async def rows(self, conn: Any, sql: str, params: Sequence[Any]) -> ClaimedRows:
        return [tuple(r) for r in await conn.fetch(self._sql(sql), *params)]

    async def run(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> tuple[int, int]:
        status = await conn.execute(self._sql(sql), *params)
        tail = status.rsplit(" ", 1)[-1]
        return (int(tail) if tail.isdigit() else 0), 0

    async def listen(self, conn: Any, channel: str, wake: asyncio.Event) -> None:
        """Set ``wake`` on every notification on ``channel``."""
        await conn.add_listener(channel, lambda *_: wake.set())


class _Cursors(AsyncRaw):
    """aiomysql, asyncmy and aiosqlite: DB-API-shaped cursors whose calls are awaited."""

    async def rows(self, conn: Any, sql: str, params: Sequence[Any]) -> ClaimedRows:
        cur = await self._cursor(conn, sql, params)
        try:
            return [tuple(r) for r in await cur.fetchall()]
        finally:
            await cur.close()

    async def run(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> tuple[int, int]:
        cur = await self._cursor(conn, sql, params)
        try:
            return int(cur.rowcount), int(cur.lastrowid or 0)
        finally:
            await cur.close()

    async def _cursor(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        cur = conn.cursor()
        await cur.execute(sql, tuple(params))
        return cur


class Aiomysql(_Cursors):
    driver = "aiomysql"
    module = "aiomysql"

    async def connect(self, url: sa.URL) -> Any:
        from squeal.drivers.asyncio import escape_aiomysql_bytes

        conn = await self.dbapi.connect(**server_args(url, 3306), db=url.database, autocommit=True)
        escape_aiomysql_bytes(conn)  # the driver cannot send bytes without it (see there)
        return conn

    async def _cursor(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        cur = await conn.cursor()
        await cur.execute(sql, tuple(params))
        return cur

    async def close(self, conn: Any) -> None:
        conn.close()


class Asyncmy(_Cursors):
    driver = "asyncmy"
    module = "asyncmy"

    async def connect(self, url: sa.URL) -> Any:
        return await self.dbapi.connect(
            **server_args(url, 3306), database=url.database, autocommit=True
        )

    async def close(self, conn: Any) -> None:
        conn.close()


class Aiosqlite(_Cursors):
    driver = "aiosqlite"
    module = "aiosqlite"
    mark = "?"

    async def connect(self, url: sa.URL) -> Any:
        return await self.dbapi.connect(url.database or "", isolation_level=None, timeout=30.0)

    async def _cursor(self, conn: Any, sql: str, params: Sequence[Any]) -> Any:
        return await conn.execute(sql, tuple(params))


class AsyncFloor:
    """Hand-written queue operations on squeal's tables, on one asyncio connection."""

    statements: ClassVar[type[Floor]] = Floor
    drivers: ClassVar[tuple[type[AsyncRaw], ...]] = ()

    def __init__(self, url: sa.URL, prefix: str, raw: AsyncRaw) -> None:
        self.url = url
        self.raw = raw
        self.sql: Any = self.statements.statements(prefix, raw.mark)
        self.conn: Any = None

    async def open(self) -> None:
        """Connect."""
        self.conn = await self.raw.connect(self.url)

    async def close(self) -> None:
        """Close the connection."""
        await self.raw.close(self.conn)

    async def put(self, payload: bytes, topic: str, priority: int = 0) -> int:
        """Insert one ready message; its id."""
        params = self.sql.insert_params([payload], topic, priority)
        return (await self.raw.run(self.conn, self.sql._insert + self.sql._row, params))[1]

    async def put_many(self, payloads: Sequence[bytes], topic: str, priority: int = 0) -> int:
        """Insert ready messages with one multi-row INSERT; how many."""
        params = self.sql.insert_params(payloads, topic, priority)
        return len(await self.raw.rows(self.conn, self.sql.insert_sql(len(payloads)), params))

    async def claim(self, topic: str, limit: int, vt_ms: int) -> tuple[int, ClaimedRows]:
        """Lease up to ``limit`` messages; (token, rows)."""
        raise NotImplementedError

    async def ack(self, msg_id: int, token: int) -> bool:
        """Delete one message if the lease is still ours."""
        return (await self.raw.run(self.conn, self.sql._ack, (msg_id, token)))[0] == 1

    async def ack_many(self, ids: Sequence[int], token: int) -> int:
        """Delete leased messages with one statement; how many."""
        return (await self.raw.run(self.conn, self.sql.ack_many_sql(len(ids)), (token, *ids)))[0]

    async def wait_claim(self, topic: str, vt_ms: int, timeout: float) -> tuple[int, ClaimedRows]:
        """Claim one message, polling with backoff until one comes or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        pause = FIRST_POLL
        while True:
            token, rows = await self.claim(topic, 1, vt_ms)
            remaining = deadline - time.monotonic()
            if rows or remaining <= 0:
                return token, rows
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, POLL_CAP)

    async def _in_transaction(self, begin: str, steps: Any) -> Any:
        await self.raw.run(self.conn, begin)
        try:
            result = await steps()
        except BaseException:
            await self.raw.run(self.conn, "ROLLBACK")
            raise
        await self.raw.run(self.conn, "COMMIT")
        return result


class SQLiteAsyncFloor(AsyncFloor):
    """The claim in BEGIN IMMEDIATE with UPDATE ... RETURNING."""

    statements = SQLiteFloor
    drivers = (Aiosqlite,)

    async def claim(self, topic: str, limit: int, vt_ms: int) -> tuple[int, ClaimedRows]:
        token = random.getrandbits(63)

        async def take() -> ClaimedRows:
            params = self.sql.claim_params(topic, limit, vt_ms, token)
            return await self.raw.rows(self.conn, self.sql._claim, params)

        return token, await self._in_transaction("BEGIN IMMEDIATE", take)


class PostgreSQLAsyncFloor(AsyncFloor):
    """One statement per operation; a waiting claim sleeps on LISTEN."""

    statements = PostgreSQLFloor
    drivers = (Asyncpg,)

    def __init__(self, url: sa.URL, prefix: str, raw: AsyncRaw) -> None:
        super().__init__(url, prefix, raw)
        self._listener: Any = None
        self._wake = asyncio.Event()

    async def open(self) -> None:
        await super().open()
        # asyncpg prepares every statement, and after five runs PostgreSQL may keep a generic
        # plan of the claim with sequential scans (measured: get + ack falling from 1,200 to
        # 125/s over a run). squeal's own connections set the same (docs/performance.md).
        await self.raw.run(self.conn, "SET enable_seqscan = off")

    async def put(self, payload: bytes, topic: str, priority: int = 0) -> int:
        params = self.sql.insert_params([payload], topic, priority)
        return int((await self.raw.rows(self.conn, self.sql.insert_sql(1), params))[0][0])

    async def claim(self, topic: str, limit: int, vt_ms: int) -> tuple[int, ClaimedRows]:
        token = random.getrandbits(63)
        params = self.sql.claim_params(topic, limit, vt_ms, token)
        return token, await self.raw.rows(self.conn, self.sql._claim, params)

    async def wait_claim(self, topic: str, vt_ms: int, timeout: float) -> tuple[int, ClaimedRows]:
        if self._listener is None:
            self._listener = await self.raw.connect(self.url)
            await self.raw.listen(self._listener, self.sql.channel, self._wake)  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout
        while True:
            self._wake.clear()
            token, rows = await self.claim(topic, 1, vt_ms)
            remaining = deadline - time.monotonic()
            if rows or remaining <= 0:
                return token, rows
            await woken(self._wake, min(remaining, 0.5))

    async def close(self) -> None:
        if self._listener is not None:
            await self.raw.close(self._listener)
        await super().close()


class MySQLAsyncFloor(AsyncFloor):
    """READ COMMITTED; the claim selects with SKIP LOCKED, then updates, in one transaction."""

    statements = MySQLFloor
    drivers = (Aiomysql, Asyncmy)

    async def open(self) -> None:
        await super().open()
        await self.raw.run(self.conn, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        version = await self.raw.rows(self.conn, "SELECT @@version", ())
        self._returning = "mariadb" in str(version[0][0]).lower()

    async def claim(self, topic: str, limit: int, vt_ms: int) -> tuple[int, ClaimedRows]:
        token = random.getrandbits(63)
        sql = self.sql

        async def take() -> ClaimedRows:
            params = sql.claim_params(topic, limit, vt_ms, token)
            rows = sql.best(await self.raw.rows(self.conn, sql._claim, params), limit)
            if rows:
                ids = [r[0] for r in rows]
                await self.raw.run(self.conn, sql.take_sql(len(rows)), (vt_ms, token, *ids))
            return sql.taken(rows)  # type: ignore[no-any-return]

        return token, await self._in_transaction("BEGIN", take)

    async def put_many(self, payloads: Sequence[bytes], topic: str, priority: int = 0) -> int:
        if self._returning:
            return await super().put_many(payloads, topic, priority)
        # MySQL has no INSERT ... RETURNING: a multi-row insert takes consecutive ids.
        params = self.sql.insert_params(payloads, topic, priority)
        sql = self.sql._insert + ", ".join([self.sql._row] * len(payloads))
        return (await self.raw.run(self.conn, sql, params))[0]


_FLOORS: dict[str, type[AsyncFloor]] = {
    "sqlite": SQLiteAsyncFloor,
    "postgresql": PostgreSQLAsyncFloor,
    "mysql": MySQLAsyncFloor,
    "mariadb": MySQLAsyncFloor,
}


def async_floor_for(url: sa.URL, prefix: str) -> AsyncFloor:
    """The asyncio floor for ``url``'s database: on the URL's driver where a floor is written
    for it, else on the database's first (asyncpg for every PostgreSQL driver). Unconnected."""
    cls = _FLOORS.get(url.get_backend_name())
    if cls is None:
        raise ValueError(f"no asyncio floor for the {url.get_backend_name()!r} database")
    named = [raw for raw in cls.drivers if raw.driver == url.get_driver_name()]
    return cls(url, prefix, (named or list(cls.drivers))[0]())


__all__ = ["AsyncFloor", "AsyncRaw", "async_floor_for", "woken"]
