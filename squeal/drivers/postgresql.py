"""PostgreSQL drivers: psycopg 3, psycopg2 and pg8000."""

from __future__ import annotations

import hashlib
import importlib
import threading
import weakref
from contextlib import suppress
from typing import Any, ClassVar

from squeal.drivers.base import Code, Driver, readable
from squeal.prepared import Params, number_markers

#: libpq settings that mean the application tuned TCP itself (then squeal leaves it alone).
_TCP_PARAMETERS = frozenset(
    {"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"}
)


class Psycopg(Driver):
    """psycopg 3 (``postgresql+psycopg``): ``notifies()`` waits for notifications natively."""

    name: ClassVar[str] = "psycopg"
    extra: ClassVar[str] = "postgresql"
    notifications: ClassVar[bool] = True

    def code(self, error: BaseException) -> Code:
        return getattr(error, "sqlstate", None)

    def socket(self, dbapi: Any) -> int | None:
        return int(dbapi.fileno())

    def tcp_tuned(self, dbapi: Any) -> bool:
        return bool(_TCP_PARAMETERS & dbapi.info.get_parameters().keys())

    def connect_timeout(self, seconds: int) -> dict[str, Any]:
        return {"connect_timeout": seconds}

    def notified(self, dbapi: Any, timeout: float) -> bool:
        return any(True for _ in dbapi.notifies(timeout=timeout, stop_after=1))


class Psycopg2(Driver):
    """psycopg2 (``postgresql+psycopg2``; plain ``postgresql://`` on SQLAlchemy 2.0)."""

    name: ClassVar[str] = "psycopg2"
    extra: ClassVar[str] = "psycopg2"
    notifications: ClassVar[bool] = True

    def __init__(self) -> None:
        #: Per connection squeal keeps: statement text -> uses so far (int) or prepared name.
        self._statements: weakref.WeakKeyDictionary[Any, dict[str, int | str]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def prepare(self, dbapi: Any, session_sql: Any) -> None:
        super().prepare(dbapi, session_sql)
        # bytea arrives as memoryview; squeal's messages carry bytes.
        psycopg2 = importlib.import_module("psycopg2")
        psycopg2.extensions.register_type(_bytes_type(psycopg2), dbapi)
        with self._lock:
            self._statements[dbapi] = {}

    def execute(self, dbapi: Any, cursor: Any, sql: str, params: Params) -> Any:
        # psycopg2 sends every statement as text, so the server plans it on every execution;
        # a claim takes longer to plan than to run. Like psycopg 3 (which prepares a statement
        # on its fifth execution), statements used again on a connection are prepared
        # server-side once and then executed by name.
        statements = self._statements.get(dbapi)
        if statements is None or not params:
            cursor.execute(sql, params)
            return cursor
        found = statements.get(sql, 0)
        if isinstance(found, int):
            if (
                found < 0  # its parameters' types cannot be inferred: never prepared
                or found + 1 < PREPARE_THRESHOLD
                or len(statements) >= PREPARED_MAX
                or dbapi.info.transaction_status != _IDLE  # a failed PREPARE would end it
            ):
                statements[sql] = found if found < 0 else found + 1
                cursor.execute(sql, params)
                return cursor
            name = "squeal_" + hashlib.blake2b(sql.encode(), digest_size=8).hexdigest()
            try:
                types = ", ".join(_pg_type(value) for value in params)
                cursor.execute(f"PREPARE {name} ({types}) AS {number_markers(sql, '${}')}")
            except importlib.import_module("psycopg2").Error:
                statements[sql] = -1
                cursor.execute(sql, params)
                return cursor
            statements[sql] = found = name
        try:
            cursor.execute(f"EXECUTE {found} ({', '.join(['%s'] * len(params))})", params)
        except Exception as error:
            if getattr(error, "pgcode", None) not in _PREPARED_GONE:
                raise
            # Something between squeal and the server dropped the session's prepared
            # statements (a transaction-mode pooler, DISCARD ALL): stop preparing here.
            with self._lock:
                self._statements.pop(dbapi, None)
            if dbapi.info.transaction_status != _IDLE:
                raise
            cursor.execute(sql, params)
        return cursor

    def code(self, error: BaseException) -> Code:
        return getattr(error, "pgcode", None)

    def socket(self, dbapi: Any) -> int | None:
        return int(dbapi.fileno())

    def tcp_tuned(self, dbapi: Any) -> bool:
        return bool(_TCP_PARAMETERS & dbapi.get_dsn_parameters().keys())

    def connect_timeout(self, seconds: int) -> dict[str, Any]:
        return {"connect_timeout": seconds}

    def notified(self, dbapi: Any, timeout: float) -> bool:
        if not dbapi.notifies and readable(dbapi.fileno(), timeout):
            dbapi.poll()
        found = bool(dbapi.notifies)
        dbapi.notifies.clear()
        return found


_BYTES: list[Any] = []


def _bytes_type(psycopg2: Any) -> Any:
    """A psycopg2 typecaster for bytea that gives ``bytes`` (made once)."""
    if not _BYTES:
        binary = psycopg2.BINARY

        def cast(value: Any, cursor: Any) -> bytes | None:
            found = binary(value, cursor)
            return None if found is None else bytes(found)

        _BYTES.append(psycopg2.extensions.new_type(binary.values, "SQUEAL_BYTES", cast))
    return _BYTES[0]


#: A statement is prepared server-side on this many executions on one connection (psycopg2).
PREPARE_THRESHOLD = 2
#: At most this many statements prepared per connection; others run as plain text.
PREPARED_MAX = 256
#: SQLSTATEs of a prepared statement that is gone or was never there (invalid_sql_statement_name)
#: or whose name is taken (duplicate_prepared_statement).
_PREPARED_GONE = frozenset({"26000", "42P05"})
#: psycopg2's TRANSACTION_STATUS_IDLE.
_IDLE = 0


class _Result:
    """A pg8000 statement's outcome, read the way a cursor's is."""

    __slots__ = ("rowcount", "rows")

    lastrowid = None

    def __init__(self, context: Any) -> None:
        self.rowcount = int(context.row_count)
        self.rows = context.rows or ()


#: Statement texts whose markers ``Pg8000`` has rewritten, at most this many kept.
_NUMBERED_MAX = 1024


def _pg_type(value: Any) -> str:
    """The PostgreSQL type a prepared statement declares for a parameter first seen as
    ``value`` (``unknown``: the server infers it from the statement, as for a NULL)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytea"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, list | tuple) and value and all(type(v) is int for v in value):
        return "bigint[]"
    return "unknown"


def _dbapi() -> Any:
    return importlib.import_module("pg8000.dbapi")


def _as_cursor_raises(error: Any) -> BaseException:
    """The exception pg8000's cursor raises for ``error`` (it narrows the server's errors)."""
    module = _dbapi()
    message = error.args[0] if error.args else None
    if not isinstance(message, dict):
        return module.ProgrammingError(message)  # type: ignore[no-any-return]
    code = message.get("C")
    if code == "28000":
        return module.InterfaceError(message)  # type: ignore[no-any-return]
    if code == "23505":
        return module.IntegrityError(message)  # type: ignore[no-any-return]
    return module.ProgrammingError(message)  # type: ignore[no-any-return]


class Pg8000(Driver):
    """pg8000 (``postgresql+pg8000``): pure Python; notifications arrive with any reply."""

    name: ClassVar[str] = "pg8000"
    extra: ClassVar[str] = "pg8000"
    notifications: ClassVar[bool] = True
    #: A reset or timed-out socket read escapes pg8000 as the OSError itself.
    lost: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

    def __init__(self) -> None:
        self._numbered: dict[str, str] = {}

    def execute(self, dbapi: Any, cursor: Any, sql: str, params: Params) -> Any:
        # pg8000's cursor rewrites every statement's %s markers to $1, $2 ... scanning it one
        # character at a time, on every execution: for a claim that costs more than the round
        # trip. squeal's statements are compiled once, so it rewrites each text once and hands
        # it to the connection's own execute_unnamed, which the cursor calls after rewriting.
        numbered = self._numbered.get(sql)
        if numbered is None:
            if len(self._numbered) >= _NUMBERED_MAX:
                self._numbered.clear()
            numbered = self._numbered[sql] = number_markers(sql, "${}")
        try:
            return _Result(dbapi.execute_unnamed(numbered, vals=params))
        except AttributeError:
            if getattr(dbapi, "_sock", None) is None:
                raise _dbapi().InterfaceError("connection is closed") from None
            raise
        except _dbapi().DatabaseError as error:
            raise _as_cursor_raises(error) from error

    def rows(self, result: Any) -> list[Any]:
        return list(result.rows)

    def code(self, error: BaseException) -> Code:
        args = getattr(error, "args", ())
        if args and isinstance(args[0], dict):
            found = args[0].get("C")
            return found if isinstance(found, str) else None
        return None

    def socket(self, dbapi: Any) -> int | None:
        sock = getattr(dbapi, "_usock", None)
        with suppress(Exception):
            return int(sock.fileno())  # type: ignore[union-attr]
        return None

    def connect_timeout(self, seconds: int) -> dict[str, Any]:
        return {}  # pg8000's timeout= also bounds every read, which would end long waits

    def notified(self, dbapi: Any, timeout: float) -> bool:
        # A notification already in pg8000's read buffer is not seen by select(): that wake-up
        # waits for the listener's re-check (Listener.RECHECK), it is never lost.
        if not dbapi.notifications:
            sock = self.socket(dbapi)
            if sock is None or not readable(sock, timeout):
                return False
            # pg8000 reads notifications only while it reads a reply: ask for an empty one.
            cursor = dbapi.cursor()
            try:
                cursor.execute("SELECT 1")
                cursor.fetchall()
            finally:
                cursor.close()
        found = bool(dbapi.notifications)
        dbapi.notifications.clear()
        return found


__all__ = ["Pg8000", "Psycopg", "Psycopg2"]
