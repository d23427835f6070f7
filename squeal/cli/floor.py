"""The floor ``squeal bench`` compares squeal with: the same queue work written by hand.

Each floor is what a careful application would write against the raw driver, with no SQLAlchemy
on the path: its own connection, SQL text written once, one commit per operation. The SQL is
written once per database (the ``Floor`` classes); how a connection is opened, which parameter
marker it takes and how it waits for a notification is written once per driver (the ``Raw``
classes), so each driver squeal supports is compared with itself. It works on squeal's own
tables (created by ``squeal.migrate``), so both sides use the same indexes. Its claim does the
job any claim must do for at-least-once delivery (docs/guarantees.md): the best of the topic's
ready rows and of its *due* rows (expired leases, ended delays: an expired lease counts as
ready), in priority, then id, order, skipping rows other consumers hold where the database can,
setting the lease columns squeal sets. It does no more: due rows it does not take stay as they
are (squeal's claim moves them to READY, or DEAD after their last attempt), and it has no
attempt limit (the bench never nacks, so squeal's never comes into play).
"""

from __future__ import annotations

import importlib
import random
import select
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import sqlalchemy as sa

from squeal.schema import READY, WAITING, validate_prefix

#: The columns a claim returns (what a ``Message`` carries), in this order.
CLAIMED = "id, payload, neg_priority, attempts, enqueued_at"
#: The polling backoff while waiting for a message (the same as squeal's ``Poller``).
FIRST_POLL = 0.01
POLL_CAP = 0.1

ClaimedRows = list[tuple[Any, ...]]


class Raw:
    """One DB-API driver as an application uses it directly: autocommit connections."""

    #: SQLAlchemy's name for the driver (``url.get_driver_name()``).
    driver: ClassVar[str] = ""
    #: The package to import.
    module: ClassVar[str] = ""
    #: The parameter marker the floor's SQL is written with.
    mark: ClassVar[str] = "%s"

    def __init__(self) -> None:
        # Untyped drivers: loaded by name so that mypy needs no stubs for them.
        self.dbapi: Any = importlib.import_module(self.module)

    def connect(self, url: sa.URL) -> Any:
        """A new autocommit connection to ``url``."""
        raise NotImplementedError

    def listen(self, conn: Any, channel: str) -> None:
        """Subscribe ``conn`` to ``channel`` (PostgreSQL)."""
        conn.cursor().execute(f'LISTEN "{channel}"')

    def wait(self, conn: Any, timeout: float) -> None:
        """Return when a notification arrives on ``conn`` or ``timeout`` passes."""
        raise NotImplementedError


def server_args(url: sa.URL, port: int) -> dict[str, Any]:
    """The keywords a driver connects to ``url``'s server with (``port`` by default)."""
    return {
        "host": url.host or "localhost",
        "port": url.port or port,
        "user": url.username or "",
        "password": url.password or "",
    }


class Sqlite3(Raw):
    driver = "pysqlite"
    module = "sqlite3"
    mark = "?"

    def connect(self, url: sa.URL) -> Any:
        return self.dbapi.connect(url.database or "", isolation_level=None, timeout=30.0)


class Psycopg(Raw):
    driver = "psycopg"
    module = "psycopg"

    def connect(self, url: sa.URL) -> Any:
        return self.dbapi.connect(**server_args(url, 5432), dbname=url.database, autocommit=True)

    def wait(self, conn: Any, timeout: float) -> None:
        for _ in conn.notifies(timeout=timeout, stop_after=1):
            pass


class Psycopg2(Raw):
    driver = "psycopg2"
    module = "psycopg2"

    def connect(self, url: sa.URL) -> Any:
        conn = self.dbapi.connect(**server_args(url, 5432), dbname=url.database)
        conn.autocommit = True
        return conn

    def wait(self, conn: Any, timeout: float) -> None:
        if not conn.notifies and select.select([conn], [], [], timeout)[0]:
            conn.poll()
        conn.notifies.clear()


class Pg8000(Raw):
    driver = "pg8000"
    module = "pg8000.dbapi"

    def connect(self, url: sa.URL) -> Any:
        conn = self.dbapi.connect(**server_args(url, 5432), database=url.database)
        conn.autocommit = True
        return conn

    def wait(self, conn: Any, timeout: float) -> None:
        # pg8000 reads notifications only while it reads a reply: wait for the socket, then
        # let a trivial statement read what arrived.
        if not conn.notifications and select.select([conn._usock], [], [], timeout)[0]:
            conn.cursor().execute("SELECT 1")
        conn.notifications.clear()


class _MySQLRaw(Raw):
    """The MySQL-family drivers all connect with the same keywords."""

    def connect(self, url: sa.URL) -> Any:
        return self.dbapi.connect(**server_args(url, 3306), database=url.database, autocommit=True)


class PyMySQL(_MySQLRaw):
    driver = "pymysql"
    module = "pymysql"


class MySQLdb(_MySQLRaw):
    driver = "mysqldb"
    module = "MySQLdb"


class MySQLConnector(_MySQLRaw):
    driver = "mysqlconnector"
    module = "mysql.connector"


class MariaDBConnector(_MySQLRaw):
    driver = "mariadbconnector"
    module = "mariadb"
    mark = "?"


class Floor:
    """Hand-written queue operations on squeal's tables; one DB-API connection of its own."""

    #: The database clock in epoch milliseconds, as SQL.
    now: ClassVar[str] = ""
    #: The drivers this database's floor runs on.
    drivers: ClassVar[tuple[type[Raw], ...]] = ()
    #: The table's name after the prefix: squeal's message table (the lean floor has its own).
    table_suffix: ClassVar[str] = "message"

    def __init__(self, url: sa.URL, prefix: str, raw: Raw) -> None:
        self.raw = raw
        self.write(prefix, raw.mark)
        self.conn: Any = self.connect(url)
        self.cur: Any = self.conn.cursor()

    @classmethod
    def statements(cls, prefix: str, mark: str) -> Floor:
        """The floor's SQL for ``prefix`` with parameter marker ``mark``, unconnected.

        The asyncio floor (``squeal.cli.floor_aio``) runs these same statements.
        """
        floor = cls.__new__(cls)
        floor.write(prefix, mark)
        return floor

    def write(self, prefix: str, mark: str) -> None:
        """Write the statements (once per floor)."""
        #: The driver's parameter marker.
        self.mark = mark
        self.table = f"{validate_prefix(prefix)}_{self.table_suffix}"
        t, now, p = self.table, self.now, self.mark
        columns = "topic, neg_priority, state, visible_at, enqueued_at, attempts, payload"
        self._row = f"({p}, {p}, {READY}, NULL, {now}, 0, {p})"
        self._insert = f"INSERT INTO {t} ({columns}) VALUES "
        self._ready = (
            f"SELECT id FROM {t} WHERE topic = {p} AND state = {READY} "
            f"ORDER BY neg_priority, id LIMIT {p}"
        )
        #: Due rows: only WAITING rows have a visible time; walks the (topic, visible_at) index.
        self._due = (
            f"SELECT id, neg_priority FROM {t} WHERE topic = {p} AND visible_at <= {now} "
            f"ORDER BY visible_at LIMIT {p}"
        )
        #: The best ``limit`` of the two candidate sets (each a derived table named so).
        self._best = f"SELECT id FROM ({{}}) AS c ORDER BY neg_priority, id LIMIT {p}"
        self._take = (
            f"UPDATE {t} SET state = {WAITING}, visible_at = {now} + {p}, "
            f"attempts = attempts + 1, lease_token = {p}"
        )
        self._ack = f"DELETE FROM {t} WHERE id = {p} AND lease_token = {p}"
        self._claim = self.claim_sql()

    def claim_sql(self) -> str:
        """The claim statement (written once)."""
        return ""

    def claim_params(self, topic: str, limit: int, vt_ms: int, token: int) -> tuple[Any, ...]:
        """The claim statement's parameters, in its markers' order."""
        raise NotImplementedError

    def connect(self, url: sa.URL) -> Any:
        """A new autocommit DB-API connection to ``url``."""
        return self.raw.connect(url)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # -- the operations ---------------------------------------------------------------------------

    def put(self, payload: bytes, topic: str, priority: int = 0) -> int:
        """Insert one ready message; its id."""
        raise NotImplementedError

    def put_many(self, payloads: Sequence[bytes], topic: str, priority: int = 0) -> list[int]:
        """Insert ready messages with one multi-row INSERT; their ids."""
        self.cur.execute(
            self.insert_sql(len(payloads)), self.insert_params(payloads, topic, priority)
        )
        return [row[0] for row in self.cur.fetchall()]

    def insert_sql(self, count: int) -> str:
        """Insert ``count`` ready rows, returning their ids."""
        return self._insert + ", ".join([self._row] * count) + " RETURNING id"

    def insert_params(self, payloads: Sequence[bytes], topic: str, priority: int) -> list[Any]:
        """The parameters of :meth:`insert_sql`."""
        params: list[Any] = []
        for payload in payloads:
            params += [topic, -priority, payload]
        return params

    def ack_many_sql(self, count: int) -> str:
        """Delete ``count`` leased messages (parameters: the token, then the ids)."""
        marks = ", ".join([self.mark] * count)
        return f"DELETE FROM {self.table} WHERE lease_token = {self.mark} AND id IN ({marks})"

    def claim(self, topic: str, limit: int, vt_ms: int) -> tuple[int, ClaimedRows]:
        """Lease up to ``limit`` ready messages; (lease token, rows of :data:`CLAIMED`)."""
        raise NotImplementedError

    def ack(self, msg_id: int, token: int) -> bool:
        """Delete one message if the lease is still ours."""
        self.cur.execute(self._ack, (msg_id, token))
        return bool(self.cur.rowcount == 1)

    def ack_many(self, ids: Sequence[int], token: int) -> int:
        """Delete leased messages with one statement; how many."""
        self.cur.execute(self.ack_many_sql(len(ids)), (token, *ids))
        return int(self.cur.rowcount)

    def wait_claim(self, topic: str, vt_ms: int, timeout: float) -> tuple[int, ClaimedRows]:
        """Claim one message, polling with backoff until one comes or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        pause = FIRST_POLL
        while True:
            token, rows = self.claim(topic, 1, vt_ms)
            remaining = deadline - time.monotonic()
            if rows or remaining <= 0:
                return token, rows
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, POLL_CAP)

    # -- bench support (not measured) --------------------------------------------------------

    def fill(self, topic: str, payload: bytes, count: int, *, priority: int = 0) -> None:
        """Insert ``count`` ready messages fast (multi-row statements of 500)."""
        done = 0
        while done < count:
            n = min(500, count - done)
            self.put_many([payload] * n, topic, priority)
            done += n

    def fill_waiting(self, topic: str, payload: bytes, count: int, *, priority: int) -> None:
        """Insert ``count`` messages that wait an hour: half leased, half delayed."""
        t, p, now = self.table, self.mark, self.now
        hour = 3_600_000
        columns = (
            "topic, neg_priority, state, visible_at, enqueued_at, attempts, lease_token, payload"
        )
        row = f"({p}, {p}, {WAITING}, {now} + {hour}, {now}, {p}, {p}, {p})"
        done = 0
        cur = self.cur
        while done < count:
            n = min(500, count - done)
            params: list[Any] = []
            for i in range(n):
                leased = (done + i) % 2 == 0
                token = random.getrandbits(63) if leased else None
                params += [topic, -priority, 1 if leased else 0, token, payload]
            cur.execute(f"INSERT INTO {t} ({columns}) VALUES " + ", ".join([row] * n), params)
            done += n

    def delete_topic(self, topic: str) -> None:
        """Delete every message of ``topic``."""
        self.cur.execute(f"DELETE FROM {self.table} WHERE topic = {self.mark}", (topic,))

    def settings(self) -> dict[str, str]:
        """The server's version and the durability settings that matter for throughput."""
        raise NotImplementedError

    def _one(self, sql: str) -> str:
        self.cur.execute(sql)
        return str(self.cur.fetchone()[0])


class SQLiteFloor(Floor):
    """Autocommit puts and acks; claims in BEGIN IMMEDIATE with UPDATE ... RETURNING."""

    drivers = (Sqlite3,)
    now = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"

    def put(self, payload: bytes, topic: str, priority: int = 0) -> int:
        cur = self.cur
        cur.execute(self._insert + self._row, (topic, -priority, payload))
        return int(cur.lastrowid)

    def claim_sql(self) -> str:
        ready = self._ready.replace("SELECT id ", "SELECT id, neg_priority ", 1)
        both = f"SELECT * FROM ({ready}) UNION ALL SELECT * FROM ({self._due})"
        return f"{self._take} WHERE id IN ({self._best.format(both)}) RETURNING {CLAIMED}"

    def claim_params(self, topic: str, limit: int, vt_ms: int, token: int) -> tuple[Any, ...]:
        return (vt_ms, token, topic, limit, topic, limit, limit)

    def claim(self, topic: str, limit: int, vt_ms: int) -> tuple[int, ClaimedRows]:
        token = random.getrandbits(63)
        cur = self.cur
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(self._claim, self.claim_params(topic, limit, vt_ms, token))
            rows = cur.fetchall()
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return token, rows

    def settings(self) -> dict[str, str]:
        return {
            "version": f"SQLite {self._one('SELECT sqlite_version()')}",
            "journal_mode": self._one("PRAGMA journal_mode"),
            "synchronous": {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}.get(
                s := self._one("PRAGMA synchronous"), s
            ),
        }


class PostgreSQLFloor(Floor):
    """Autocommit: each operation is one statement; the claim skips locked rows."""

    drivers = (Psycopg, Psycopg2, Pg8000)
    now = "CAST(floor(extract(epoch FROM statement_timestamp()) * 1000) AS BIGINT)"

    def __init__(self, url: sa.URL, prefix: str, raw: Raw) -> None:
        super().__init__(url, prefix, raw)
        self.url = url
        self._listener: Any = None

    def write(self, prefix: str, mark: str) -> None:
        super().write(prefix, mark)
        #: Puts announce themselves on this channel, as squeal's do; waiting consumers LISTEN.
        self.channel = f"{validate_prefix(prefix)}_floor_wake"

    def insert_sql(self, count: int) -> str:
        """Insert ``count`` ready rows and notify the channel; selects their ids."""
        rows = ", ".join([self._row] * count)
        p = self.mark
        return (
            f"WITH ins AS ({self._insert}{rows} RETURNING id) "
            f"SELECT id FROM ins WHERE pg_notify({p}, {p})::text IS NOT NULL"
        )

    def insert_params(self, payloads: Sequence[bytes], topic: str, priority: int) -> list[Any]:
        return [*super().insert_params(payloads, topic, priority), self.channel, topic]

    def put(self, payload: bytes, topic: str, priority: int = 0) -> int:
        return self.put_many([payload], topic, priority)[0]

    def claim_sql(self) -> str:
        ready = self._ready.replace("SELECT id ", "SELECT id, neg_priority ", 1)
        both = "SELECT * FROM ready UNION ALL SELECT * FROM due"
        return (
            f"WITH ready AS ({ready} FOR UPDATE SKIP LOCKED), "
            f"due AS ({self._due} FOR UPDATE SKIP LOCKED) "
            f"{self._take} WHERE id = ANY(ARRAY({self._best.format(both)})) "
            f"RETURNING {CLAIMED}"
        )

    def claim_params(self, topic: str, limit: int, vt_ms: int, token: int) -> tuple[Any, ...]:
        return (topic, limit, topic, limit, vt_ms, token, limit)

    def claim(self, topic: str, limit: int, vt_ms: int) -> tuple[int, ClaimedRows]:
        token = random.getrandbits(63)
        self.cur.execute(self._claim, self.claim_params(topic, limit, vt_ms, token))
        return token, self.cur.fetchall()

    def wait_claim(self, topic: str, vt_ms: int, timeout: float) -> tuple[int, ClaimedRows]:
        """Claim; when nothing is ready, sleep on LISTEN until a put announces one."""
        if self._listener is None:
            self._listener = self.connect(self.url)
            self.raw.listen(self._listener, self.channel)
        deadline = time.monotonic() + timeout
        while True:
            token, rows = self.claim(topic, 1, vt_ms)
            remaining = deadline - time.monotonic()
            if rows or remaining <= 0:
                return token, rows
            self.raw.wait(self._listener, min(remaining, 0.5))

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        super().close()

    def settings(self) -> dict[str, str]:
        return {
            "version": "PostgreSQL " + self._one("SHOW server_version"),
            "fsync": self._one("SHOW fsync"),
            "synchronous_commit": self._one("SHOW synchronous_commit"),
            "wal_sync_method": self._one("SHOW wal_sync_method"),
            # Off, nothing analyses squeal's fresh tables: the planner works without statistics.
            "autovacuum": self._one("SHOW autovacuum"),
            "plan_cache_mode": self._one("SHOW plan_cache_mode"),
        }


class MySQLFloor(Floor):
    """Autocommit, READ COMMITTED: a claim is SELECT ... SKIP LOCKED, then UPDATE."""

    drivers = (PyMySQL, MySQLdb, MySQLConnector, MariaDBConnector)
    now = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)"

    def connect(self, url: sa.URL) -> Any:
        conn = self.raw.connect(url)
        cur = conn.cursor()
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur.execute("SELECT @@version")
        self._returning = "mariadb" in str(cur.fetchone()[0]).lower()
        cur.close()
        return conn

    def put(self, payload: bytes, topic: str, priority: int = 0) -> int:
        cur = self.cur
        cur.execute(self._insert + self._row, (topic.encode(), -priority, payload))
        return int(cur.lastrowid)

    def insert_params(self, payloads: Sequence[bytes], topic: str, priority: int) -> list[Any]:
        return super().insert_params(payloads, topic.encode(), priority)  # type: ignore[arg-type]

    def put_many(self, payloads: Sequence[bytes], topic: str, priority: int = 0) -> list[int]:
        if self._returning:
            return super().put_many(payloads, topic, priority)
        # MySQL has no INSERT ... RETURNING: a multi-row insert takes consecutive ids.
        params = self.insert_params(payloads, topic, priority)
        self.cur.execute(self._insert + ", ".join([self._row] * len(payloads)), params)
        first = int(self.cur.lastrowid)
        return list(range(first, first + len(payloads)))

    def claim_sql(self) -> str:
        # Each index must match its ORDER BY exactly, or InnoDB locks every row it sorts.
        t, p = self.table, self.mark
        return (
            f"(SELECT {CLAIMED} FROM {t} FORCE INDEX ({t}_claim_ix) "
            f"WHERE topic = {p} AND state = {READY} ORDER BY neg_priority, id LIMIT {p} "
            "FOR UPDATE SKIP LOCKED) UNION ALL "
            f"(SELECT {CLAIMED} FROM {t} FORCE INDEX ({t}_due_ix) "
            f"WHERE topic = {p} AND visible_at <= {self.now} ORDER BY visible_at LIMIT {p} "
            "FOR UPDATE SKIP LOCKED)"
        )

    def claim_params(self, topic: str, limit: int, vt_ms: int, token: int) -> tuple[Any, ...]:
        """The candidates' parameters (the claim selects, then takes with :meth:`take_sql`)."""
        return (topic.encode(), limit, topic.encode(), limit)

    def take_sql(self, count: int) -> str:
        """Lease ``count`` candidates (parameters: vt_ms, token, their ids)."""
        return f"{self._take} WHERE id IN ({', '.join([self.mark] * count)})"

    @staticmethod
    def best(rows: ClaimedRows, limit: int) -> ClaimedRows:
        """The best ``limit`` of both candidate sets."""
        return sorted(rows, key=lambda r: (r[2], r[0]))[:limit]

    @staticmethod
    def taken(rows: ClaimedRows) -> ClaimedRows:
        """The candidates as the take left them (one attempt more)."""
        return [(r[0], r[1], r[2], r[3] + 1, r[4]) for r in rows]

    def claim(self, topic: str, limit: int, vt_ms: int) -> tuple[int, ClaimedRows]:
        token = random.getrandbits(63)
        cur = self.cur
        cur.execute("BEGIN")
        try:
            cur.execute(self._claim, self.claim_params(topic, limit, vt_ms, token))
            rows = self.best(cur.fetchall(), limit)
            if rows:
                cur.execute(self.take_sql(len(rows)), (vt_ms, token, *[r[0] for r in rows]))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return token, self.taken(rows)

    def fill_waiting(self, topic: str, payload: bytes, count: int, *, priority: int) -> None:
        super().fill_waiting(topic.encode(), payload, count, priority=priority)  # type: ignore[arg-type]

    def delete_topic(self, topic: str) -> None:
        super().delete_topic(topic.encode())  # type: ignore[arg-type]

    def settings(self) -> dict[str, str]:
        return {
            "version": self._one("SELECT @@version"),
            "innodb_flush_log_at_trx_commit": self._one("SELECT @@innodb_flush_log_at_trx_commit"),
            "sync_binlog": self._one("SELECT @@sync_binlog"),
        }


_FLOORS: dict[str, type[Floor]] = {
    "sqlite": SQLiteFloor,
    "postgresql": PostgreSQLFloor,
    "mysql": MySQLFloor,
    "mariadb": MySQLFloor,
}


def floor_missing(url: sa.URL) -> str | None:
    """Why ``url`` has no floor to compare with (None: it has one)."""
    cls = _FLOORS.get(url.get_backend_name())
    if cls is None:
        return f"no raw-driver floor for the {url.get_backend_name()!r} database"
    if not any(raw.driver == url.get_driver_name() for raw in cls.drivers):
        written = ", ".join(raw.driver for raw in cls.drivers)
        return (
            f"no raw-driver floor for the {url.get_driver_name()} driver: the "
            f"{url.get_backend_name()} floor is written for {written}"
        )
    return None


def floor_for(url: sa.URL, prefix: str) -> Floor:
    """The floor for ``url``'s database on ``url``'s driver, connected."""
    missing = floor_missing(url)
    if missing:
        raise ValueError(missing)
    cls = _FLOORS[url.get_backend_name()]
    raw = next(raw for raw in cls.drivers if raw.driver == url.get_driver_name())
    return cls(url, prefix, raw())


__all__ = ["CLAIMED", "Floor", "Raw", "floor_for", "floor_missing", "server_args"]
