"""What keeps a queue fast for months, read from the server: one set of checks per database.

A queue deletes every row it delivers, so its tables live on the database's clean-up of dead
rows: PostgreSQL's vacuum (which a snapshot held anywhere on the server holds back), InnoDB's
purge (its history list) and SQLite's free pages and write-ahead log. Each check reads what
the server already keeps and says what to do about it; none changes anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import sqlalchemy as sa

from squeal.schema import Tables

Status = Literal["ok", "warning", "action", "unknown"]

#: A snapshot (PostgreSQL) or transaction (InnoDB) open this long holds back the clean-up of
#: every row deleted since: worth a warning; past ACTION_AFTER, worth acting on.
WARN_AFTER_SECONDS = 60.0
ACTION_AFTER_SECONDS = 600.0
#: Dead rows beyond this many, and more of them than live ones, are a warning.
DEAD_ROWS = 10_000
#: InnoDB history list lengths that are a warning / need action.
HISTORY_WARNING = 100_000
HISTORY_ACTION = 1_000_000
#: A SQLite write-ahead log larger than this is not being checkpointed back.
WAL_WARNING_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """One check: what was found and, unless all is well, what to do."""

    check: str
    status: Status
    detail: str
    advice: str = ""


def _aged(seconds: float) -> Status:
    if seconds >= ACTION_AFTER_SECONDS:
        return "action"
    return "warning" if seconds >= WARN_AFTER_SECONDS else "ok"


class Health:
    """The checks for one database; :meth:`findings` runs them on a connection."""

    label: ClassVar[str] = "database"
    #: Opens a transaction whose snapshot holds back clean-up (``squeal bench --soak``).
    snapshot_sql: ClassVar[str] = "BEGIN"

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.names = [t.name for t in (tables.message, tables.topic_lock, tables.dedup)]

    def checks(self) -> list[Callable[[sa.Connection], list[Finding]]]:
        """The checks, in the order they are reported."""
        return []

    def numbers(self, conn: sa.Connection) -> dict[str, float]:
        """What a soak run plots over time: sizes, dead rows, clean-up backlog."""
        return {}

    def per_table(self, conn: sa.Connection, sql: str) -> Sequence[Any]:
        """Rows of ``sql``, whose ``:names`` is the list of squeal's table names (and
        ``:schema`` their schema, when it has one)."""
        statement = sa.text(sql).bindparams(sa.bindparam("names", expanding=True))
        return conn.execute(statement, {"names": self.names, **self.in_schema}).all()

    @property
    def in_schema(self) -> dict[str, str]:
        """The ``:schema`` parameter of the queries, when the tables have a schema."""
        schema = self.tables.schema
        return {} if schema is None else {"schema": schema}

    def findings(self, conn: sa.Connection) -> list[Finding]:
        """Run every check; a check the connection may not run says so instead of failing."""
        found: list[Finding] = []
        for check in self.checks():
            try:
                found.extend(check(conn))
            except sa.exc.DBAPIError as error:
                if conn.in_transaction():
                    conn.rollback()
                name = check.__name__.strip("_").replace("_", " ")
                reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
                found.append(
                    Finding(
                        name,
                        "unknown",
                        f"could not be read: {reason}",
                        "grant the monitoring privileges it needs (docs/operations.md)",
                    )
                )
        return found


class PostgreSQLHealth(Health):
    """Autovacuum, dead rows, the oldest snapshot on the server, table sizes."""

    label = "PostgreSQL"
    snapshot_sql = "BEGIN ISOLATION LEVEL REPEATABLE READ"

    @property
    def _schemas(self) -> str:
        """Where squeal's tables are: their schema, or the search path's."""
        if self.tables.schema is None:
            return "schemaname = ANY(current_schemas(false))"
        return "schemaname = :schema"

    def checks(self) -> list[Callable[[sa.Connection], list[Finding]]]:
        return [self._autovacuum, self._dead_rows, self._oldest_snapshot]

    def numbers(self, conn: sa.Connection) -> dict[str, float]:
        row = conn.execute(
            sa.text(
                "SELECT n_live_tup, n_dead_tup, pg_table_size(relid), pg_indexes_size(relid) "
                "FROM pg_stat_user_tables "
                f"WHERE relname = :name AND {self._schemas}"
            ),
            {"name": self.tables.message.name, **self.in_schema},
        ).first()
        if row is None:
            return {}
        live, dead, table, indexes = row
        return {
            "live_rows": live,
            "dead_rows": dead,
            "table_mib": table / 1048576,
            "index_mib": indexes / 1048576,
        }

    def _autovacuum(self, conn: sa.Connection) -> list[Finding]:
        on = conn.exec_driver_sql("SHOW autovacuum").scalar() == "on"
        if on:
            return [Finding("autovacuum", "ok", "autovacuum is on")]
        return [
            Finding(
                "autovacuum",
                "action",
                "autovacuum is OFF: nothing removes the rows every ack deletes, so squeal's "
                "tables and indexes only grow and every claim walks more dead entries",
                "turn it on (ALTER SYSTEM SET autovacuum = on; SELECT pg_reload_conf()), or "
                "run VACUUM on squeal's tables on a schedule",
            )
        ]

    def _dead_rows(self, conn: sa.Connection) -> list[Finding]:
        rows = self.per_table(
            conn,
            "SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid), "
            "EXTRACT(EPOCH FROM now() - GREATEST(last_autovacuum, last_vacuum)) "
            "FROM pg_stat_user_tables "
            f"WHERE relname IN :names AND {self._schemas}",
        )
        found = []
        for name, live, dead, size, since in rows:
            vacuumed = "never vacuumed" if since is None else f"vacuumed {since:.0f} s ago"
            detail = f"{name}: {live} live rows, {dead} dead, {size / 1048576:.1f} MiB, {vacuumed}"
            many = dead > DEAD_ROWS and dead > live
            found.append(
                Finding(
                    "dead rows",
                    "warning" if many else "ok",
                    detail,
                    f"VACUUM {name}; if it keeps growing, look for a snapshot held open"
                    if many
                    else "",
                )
            )
        return found

    def _oldest_snapshot(self, conn: sa.Connection) -> list[Finding]:
        row = conn.exec_driver_sql(
            "SELECT pid, usename, application_name, state, "
            "EXTRACT(EPOCH FROM now() - COALESCE(xact_start, query_start)), "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 80) "
            "FROM pg_stat_activity "
            "WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid() "
            "ORDER BY age(backend_xmin) DESC LIMIT 1"
        ).first()
        if row is None:
            return [Finding("oldest snapshot", "ok", "no other session holds a snapshot")]
        pid, user, app, state, age, query = row
        age = float(age or 0.0)
        who = f"pid {pid} ({user}{', ' + app if app else ''}, {state})"
        status = _aged(age)
        return [
            Finding(
                "oldest snapshot",
                status,
                f"{who} has held a snapshot for {age:.0f} s: {query!r}",
                ""
                if status == "ok"
                else f"vacuum cannot remove any row deleted since: end that transaction "
                f"(SELECT pg_terminate_backend({pid})) or bound idle ones "
                "(idle_in_transaction_session_timeout)",
            )
        ]


class MySQLHealth(Health):
    """InnoDB's history list, the oldest transaction, table sizes."""

    label = "MySQL"
    snapshot_sql = "START TRANSACTION WITH CONSISTENT SNAPSHOT"

    @property
    def _database(self) -> str:
        """The database squeal's tables are in: their schema, or the connection's."""
        return "DATABASE()" if self.tables.schema is None else ":schema"

    def checks(self) -> list[Callable[[sa.Connection], list[Finding]]]:
        return [self._history_list, self._oldest_transaction, self._table_sizes]

    def numbers(self, conn: sa.Connection) -> dict[str, float]:
        found: dict[str, float] = {}
        try:
            length = conn.exec_driver_sql(
                "SELECT `count` FROM information_schema.INNODB_METRICS "
                "WHERE name = 'trx_rseg_history_len'"
            ).scalar()
            if length is not None:
                found["history_list"] = float(length)
        except sa.exc.DBAPIError:  # no PROCESS privilege
            conn.rollback()
        row = conn.execute(
            sa.text(
                "SELECT data_length, index_length FROM information_schema.TABLES "
                f"WHERE table_schema = {self._database} AND table_name = :name"
            ),
            {"name": self.tables.message.name, **self.in_schema},
        ).first()
        if row is not None:
            found["table_mib"] = row[0] / 1048576
            found["index_mib"] = row[1] / 1048576
        return found

    def _history_list(self, conn: sa.Connection) -> list[Finding]:
        length = conn.exec_driver_sql(
            "SELECT `count` FROM information_schema.INNODB_METRICS "
            "WHERE name = 'trx_rseg_history_len'"
        ).scalar()
        if length is None:
            return [Finding("history list", "unknown", "InnoDB does not report it here")]
        length = int(length)
        status: Status = (
            "action"
            if length >= HISTORY_ACTION
            else "warning"
            if length >= HISTORY_WARNING
            else "ok"
        )
        return [
            Finding(
                "history list",
                status,
                f"InnoDB history list length {length} (undo not yet purged)",
                ""
                if status == "ok"
                else "purge is behind: look for a long transaction (below) and end it",
            )
        ]

    def _oldest_transaction(self, conn: sa.Connection) -> list[Finding]:
        row = conn.exec_driver_sql(
            "SELECT trx_mysql_thread_id, TIMESTAMPDIFF(SECOND, trx_started, NOW()), trx_state, "
            "LEFT(COALESCE(trx_query, ''), 80) FROM information_schema.INNODB_TRX "
            "WHERE trx_mysql_thread_id <> CONNECTION_ID() ORDER BY trx_started LIMIT 1"
        ).first()
        if row is None:
            return [Finding("oldest transaction", "ok", "no other transaction is open")]
        thread, age, state, query = row
        status = _aged(float(age or 0))
        return [
            Finding(
                "oldest transaction",
                status,
                f"connection {thread} ({state}) has had a transaction open for {age} s: {query!r}",
                ""
                if status == "ok"
                else f"InnoDB cannot purge what was deleted since: end it (KILL {thread})",
            )
        ]

    def _table_sizes(self, conn: sa.Connection) -> list[Finding]:
        rows = self.per_table(
            conn,
            "SELECT table_name, table_rows, data_length + index_length, data_free "
            "FROM information_schema.TABLES "
            f"WHERE table_schema = {self._database} AND table_name IN :names",
        )
        return [
            Finding(
                "table size",
                "ok",
                f"{name}: about {rows} rows, {size / 1048576:.1f} MiB, "
                f"{free / 1048576:.1f} MiB free",
            )
            for name, rows, size, free in rows
        ]


class SQLiteHealth(Health):
    """The file's free pages and its write-ahead log."""

    label = "SQLite"
    #: In WAL mode an open read transaction keeps checkpoints from finishing.
    snapshot_sql = "BEGIN"

    def checks(self) -> list[Callable[[sa.Connection], list[Finding]]]:
        return [self._file]

    def numbers(self, conn: sa.Connection) -> dict[str, float]:
        def pragma(name: str) -> float:
            return float(conn.exec_driver_sql(f"PRAGMA {name}").scalar() or 0)

        size = pragma("page_size")
        found = {
            "file_mib": pragma("page_count") * size / 1048576,
            "free_mib": pragma("freelist_count") * size / 1048576,
        }
        database = conn.engine.url.database
        if database and database != ":memory:" and os.path.exists(f"{database}-wal"):
            found["wal_mib"] = os.path.getsize(f"{database}-wal") / 1048576
        return found

    def _file(self, conn: sa.Connection) -> list[Finding]:
        def pragma(name: str) -> Any:
            return conn.exec_driver_sql(f"PRAGMA {name}").scalar()

        pages, free, size = pragma("page_count"), pragma("freelist_count"), pragma("page_size")
        mode = str(pragma("journal_mode")).lower()
        found = [
            Finding(
                "file",
                "warning" if pages and free > pages // 2 and free * size > 64 * 1048576 else "ok",
                f"{pages * size / 1048576:.1f} MiB, {free} of {pages} pages free, "
                f"journal_mode={mode}",
                "",
            )
        ]
        if found[0].status != "ok":
            found[0] = Finding(
                found[0].check,
                found[0].status,
                found[0].detail,
                "most of the file is free pages: VACUUM gives them back (it takes the file "
                "to itself for a while)",
            )
        database = conn.engine.url.database
        if mode == "wal" and database and database != ":memory:":
            wal = f"{database}-wal"
            wal_size = os.path.getsize(wal) if os.path.exists(wal) else 0
            big = wal_size > WAL_WARNING_BYTES
            found.append(
                Finding(
                    "write-ahead log",
                    "warning" if big else "ok",
                    f"{wal_size / 1048576:.1f} MiB",
                    "a reader that never finishes keeps checkpoints from completing: find it; "
                    "PRAGMA wal_checkpoint(TRUNCATE) then shrinks the log"
                    if big
                    else "",
                )
            )
        return found


__all__ = ["Finding", "Health", "MySQLHealth", "PostgreSQLHealth", "SQLiteHealth", "Status"]
