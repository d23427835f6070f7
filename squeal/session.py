"""The one boundary between squeal and the database: connections, transactions, retries, errors."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from squeal.bridge import sleep as pause_for
from squeal.bridge import usable_here
from squeal.connections import ConnectionStash, detect_dead_peer
from squeal.dialects.base import Strategy
from squeal.drivers import Driver, driver_for
from squeal.errors import (
    DatabaseBusy,
    DatabaseError,
    LeaseLost,
    OutcomeUnknown,
    PutOutcomeUnknown,
    SchemaMissing,
    SchemaOutOfDate,
)
from squeal.executor import CallerExecutor, Executor, RawExecutor
from squeal.prepared import Prepared
from squeal.recorded import Fit, fit, recorded
from squeal.schema import SCHEMA_REVISION, Tables
from squeal.server import UNKNOWN, Server

T = TypeVar("T")
log = logging.getLogger("squeal")

#: How long squeal keeps retrying a transient failure (deadlock, lock timeout, busy).
RETRY_SECONDS = 30.0
#: How often squeal reconnects and retries after a dropped connection before giving up.
RECONNECT_ATTEMPTS = 3
#: How long after a dropped connection squeal keeps trying to open a new one when the server
#: refuses or is not ready (a restart, a failover): new connections that fail in this window
#: are tried again, not counted as reconnects, with pauses growing to ``RECONNECT_PAUSE``.
RECONNECT_SECONDS = 15.0
RECONNECT_PAUSE = 0.5
#: A new connection that failed sooner than this was refused (a server answering "not
#: now"); one that took longer met a dead path, which counts as a reconnect.
REFUSED_WITHIN = 1.0
#: Set on a driver error raised after a unit of work began on its connection (its statements
#: may have run, its commit may have landed); errors opening a connection lack it.
_BEGAN = "_squeal_began"
#: Pools whose connections cannot be detached: every checkout is the same connection.
_SHARED_CONNECTION_POOLS = (sa.pool.StaticPool, sa.pool.SingletonThreadPool, sa.pool.AssertionPool)
#: What an engine of an asyncio driver needs instead of a Queue.
_ASYNC_QUEUE = "squeal.aio.AsyncQueue"


def wrap(error: BaseException, action: str) -> DatabaseError:
    """A DatabaseError that names the driver's error but never the statement's parameters."""
    source = getattr(error, "orig", None) or error
    first_line = (str(source).strip().splitlines() or [""])[0]
    # SQLAlchemy appends "[SQL: ...]" and "[parameters: ...]" to its own text; drop them.
    first_line = first_line.split(" [SQL:")[0].split("[parameters:")[0].strip()
    return DatabaseError(f"{action} failed: {type(source).__name__}: {first_line}")


def migrate_hint(engine: sa.Engine, prefix: str, schema: str | None = None) -> str:
    """The shell command that brings this database's squeal tables up to date."""
    url = engine.url.render_as_string(hide_password=True)
    option = "" if prefix == "squeal" else f" --prefix {prefix}"
    if schema is not None:
        option += f" --schema {schema}"
    return f"squeal migrate --url '{url}'{option}   (or Queue.create(), or alembic upgrade)"


class Session:
    """Runs units of work for one queue: on connections squeal manages, or in the caller's."""

    def __init__(self, engine: sa.Engine, strategy: Strategy, tables: Tables) -> None:
        self.engine = engine
        self.strategy = strategy
        self.tables = tables
        self._schema_ok = False
        #: What the first check found (the server squeal's statements are checked against).
        self.server: Server = UNKNOWN
        self._prepared: dict[Any, Prepared] = {}
        self._errors: tuple[type[BaseException], ...] = ()
        self.driver: Driver = driver_for(engine.dialect)
        # A pool that hands out one shared connection, or a driver without an adapter: every
        # unit of work goes through SQLAlchemy instead of a connection squeal keeps.
        shared = isinstance(engine.pool, _SHARED_CONNECTION_POOLS)
        native = self.driver.native and not shared
        self._stash = (
            ConnectionStash(engine, self._prepare, socket_of=self.driver.socket) if native else None
        )
        #: An asyncio driver's engine: usable only inside the bridge (squeal.aio).
        self._bridged = engine.dialect.is_async
        #: ``time.monotonic()`` of the last dropped connection, until a unit of work succeeds.
        self._lost_at: float | None = None

    def _prepare(self, dbapi: Any) -> None:
        """Set up a connection squeal keeps: the driver's autocommit, the database's session."""
        self.driver.prepare(dbapi, self.strategy.session_sql)
        fileno = self.driver.socket(dbapi)
        if fileno is not None and not self.driver.tcp_tuned(dbapi):
            detect_dead_peer(fileno)

    def forget_schema(self) -> None:
        """Check the schema again on next use (after create or destroy)."""
        self._schema_ok = False

    def close(self) -> None:
        """Close the connections squeal keeps for this queue."""
        if self._stash is not None:
            self._stash.close()

    # -- units of work --------------------------------------------------------------------------

    def write(
        self,
        work: Callable[[Executor], T],
        connection: sa.Connection | None = None,
        *,
        atomic: bool = False,
        commit_on: type[BaseException] | None = None,
        idempotent: bool = True,
    ) -> T:
        """Run ``work`` in the caller's transaction, or on squeal's own connection.

        ``atomic``: several statements that must commit together (one statement always does).
        ``commit_on``: an exception type after which squeal's own transaction still commits
        (the exception is raised afterwards), e.g. LeaseLost in a batch whose others succeeded.
        ``idempotent=False``: work that would take effect twice if an earlier try committed
        (a put without a dedup key): after a try whose outcome a dropped connection hid, it
        raises PutOutcomeUnknown instead of trying again.
        """
        if connection is not None:
            return self._in_callers(work, connection)
        return self._retrying(
            work, self._stash, atomic=atomic, commit_on=commit_on, idempotent=idempotent
        )

    def claim(self, work: Callable[[Executor], T], *, atomic: bool = False) -> T:
        """Run a claim: in a transaction unless the database claims in one statement and the
        claim is one (``atomic``: it is several, e.g. a limited topic's)."""
        atomic = atomic or not self.strategy.claim_is_one_statement
        return self._retrying(work, self._stash, atomic=atomic, commit_on=None, idempotent=True)

    def read(self, work: Callable[[Executor], T]) -> T:
        """Run read-only work."""
        return self._retrying(work, self._stash, atomic=False, commit_on=None, idempotent=True)

    def _in_callers(self, work: Callable[[Executor], T], connection: sa.Connection) -> T:
        # Wrapped errors are raised outside the except block, so that neither __cause__ nor
        # __context__ carries the original (whose text can include bound parameters).
        if self._bridged:
            usable_here(self.engine, instead=_ASYNC_QUEUE)
        try:
            self.driver.adopt(connection.connection.dbapi_connection)
            self._ensure_schema(connection)
            return work(CallerExecutor(connection, self.server))
        except sa.exc.SQLAlchemyError as error:
            failure = wrap(error, "squeal, in the caller's transaction")
        raise failure

    def _retrying(
        self,
        work: Callable[[Executor], T],
        stash: ConnectionStash | None,
        *,
        atomic: bool,
        commit_on: type[BaseException] | None,
        idempotent: bool,
    ) -> T:
        if self._bridged:
            usable_here(self.engine, instead=_ASYNC_QUEUE)
        tries: _Tries | None = None  # made at the first failure
        while True:
            failure: DatabaseError | None = None
            began = time.monotonic()
            try:
                if not self._schema_ok:
                    self._check_schema()
                if stash is None:
                    result = self._through_engine(work, atomic=atomic, commit_on=commit_on)
                else:
                    result = self._on_link(work, stash, atomic=atomic, commit_on=commit_on)
                if self._lost_at is not None:
                    self._lost_at = None
                return result
            except LeaseLost as lost:
                if tries is None or not tries.uncertain:
                    raise
                raise OutcomeUnknown(
                    f"{lost}; {_UNCERTAIN}", message_id=lost.message_id, lost=lost.lost
                ) from None
            except self._driver_errors() as error:
                tries = tries or _Tries()
                tries.began = began
                failure = self._after(error, tries, stash)
                if tries.uncertain and not idempotent:
                    failure = PutOutcomeUnknown(f"{wrap(error, 'squeal')}; {_NOT_TRIED_AGAIN}")
            if failure is not None:
                raise failure

    def _after(
        self, error: BaseException, tries: _Tries, stash: ConnectionStash | None
    ) -> DatabaseError | None:
        """After a driver error: pause and return None to try again, or the error to raise."""
        now = time.monotonic()
        tries.deadline = tries.deadline or now + RETRY_SECONDS
        began = getattr(error, _BEGAN, False)
        disconnected = self._disconnected(error)
        if disconnected:
            self._lost_at = self._lost_at or now
            if stash is not None:
                stash.close()  # its idle connections most likely went the way of this one
        tries.uncertain = tries.uncertain or (disconnected and began)
        # A new connection refused soon after one dropped: the server restarts, or a standby
        # is being promoted. Keep trying for a while, without counting.
        recovering = not began and self._lost_at is not None
        refused = recovering and now - tries.began < REFUSED_WITHIN
        if refused and now - (self._lost_at or now) < RECONNECT_SECONDS:
            log.debug("squeal: reconnecting: %s", type(error).__name__)
            tries.wait(RECONNECT_PAUSE)
            return None
        tries.reconnects += disconnected
        failure: DatabaseError | None = None
        if not (disconnected or recovering or self._retryable(error)):
            failure = wrap(error, "squeal")
        elif recovering:
            failure = wrap(error, "squeal (reconnecting after a dropped connection)")
        elif tries.reconnects > RECONNECT_ATTEMPTS:
            failure = wrap(error, f"squeal (after {RECONNECT_ATTEMPTS} reconnects)")
        elif now + tries.pause > tries.deadline:
            busy = wrap(error, f"squeal (retried for {RETRY_SECONDS:.0f}s)")
            failure = DatabaseBusy(str(busy), retryable=True)
        if failure is None:
            log.debug("squeal: transient database error, retrying: %s", type(error).__name__)
            tries.wait(0.25)
        elif tries.uncertain:
            failure = type(failure)(f"{failure}; {_UNCERTAIN}", retryable=failure.retryable)
        return failure

    def _on_link(
        self,
        work: Callable[[Executor], T],
        stash: ConnectionStash,
        *,
        atomic: bool,
        commit_on: type[BaseException] | None,
    ) -> T:
        """One attempt on one of squeal's connections (the hot path: no context managers)."""
        link = stash.take()
        ex = RawExecutor(
            link,
            self._prepared,
            self.engine.dialect,
            self.strategy.begin_sql,
            self.driver,
            server=self.server,
        )
        try:
            if atomic:
                ex.begin()
            result = _committed(work, ex, commit_on)
        except self._driver_errors() as error:
            link.close()  # its state is unknown: never reuse it
            _began(error)
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):
                # Cancelled (asyncio) or interrupted while a statement may be in flight: the
                # connection's state is unknown too.
                link.close()
                raise
            try:
                ex.rollback()
            except BaseException:
                link.close()
                raise
            stash.give_back(link)
            raise
        stash.give_back(link)
        return result

    def _through_engine(
        self,
        work: Callable[[Executor], T],
        *,
        atomic: bool,
        commit_on: type[BaseException] | None,
    ) -> T:
        """Through SQLAlchemy: a shared-connection pool (SQLite :memory:) or a generic driver."""
        with self.engine.connect() as conn:
            isolation = self.strategy.isolation_level
            if isolation is not None:
                conn.execution_options(isolation_level=isolation)
            try:
                return _committed(work, _Committing(conn, self.server), commit_on)
            except self._driver_errors() as error:
                _began(error)
                raise

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        if not self._errors:
            dbapi = self.engine.dialect.loaded_dbapi
            self._errors = (dbapi.Error, sa.exc.DBAPIError, *self.driver.lost)
        return self._errors

    def _disconnected(self, error: BaseException) -> bool:
        """The connection is gone (it was discarded; the next attempt opens a new one)."""
        if isinstance(error, sa.exc.DBAPIError):
            if error.connection_invalidated:
                return True
            error = error.orig or error
        if isinstance(error, self.driver.lost):
            return True
        if self.strategy.is_disconnect(self.driver.code(error), error):
            return True
        return bool(self.engine.dialect.is_disconnect(error, None, None))  # type: ignore[arg-type]

    def _retryable(self, error: BaseException) -> bool:
        """A deadlock, lock timeout or busy database: worth retrying until the deadline."""
        if isinstance(error, sa.exc.DBAPIError):
            error = error.orig or error
        return self.strategy.is_retryable(self.driver.code(error), error)

    # -- schema ---------------------------------------------------------------------------------

    def _check_schema(self) -> None:
        """The first use's look at the tables. A driver error is raised as it is, for the
        caller's retry loop (a server restarting, a cluster node not ready yet)."""
        try:
            with self.engine.connect() as conn:
                self._ensure_schema(conn)
                conn.rollback()
            return
        except self._driver_errors():
            raise
        except sa.exc.SQLAlchemyError as error:
            failure = wrap(error, "squeal (checking its tables)")
        raise failure

    def _ensure_schema(self, conn: sa.Connection) -> None:
        if self._schema_ok:
            return
        self.server = self.strategy.check_server(conn)
        prefix = self.tables.prefix
        command = migrate_hint(self.engine, prefix, self.tables.schema)
        schema = self.tables.schema
        where = f"prefix {prefix!r}" + ("" if schema is None else f" in schema {schema!r}")
        if not sa.inspect(conn).has_table(self.tables.message.name, schema=schema):
            raise SchemaMissing(
                f"squeal's tables for {where} do not exist; run: {command}",
                command=command,
            )
        found = recorded(conn, prefix, schema).revisions
        how = fit(found, SCHEMA_REVISION)
        if how is Fit.AHEAD:
            raise SchemaOutOfDate(
                f"squeal's tables for {where} are at revision {found[0]}, newer than this "
                f"squeal ({SCHEMA_REVISION}) and not marked compatible with it: run the squeal "
                f"version that migrated them",
            )
        if how is Fit.BEHIND:
            raise SchemaOutOfDate(
                f"squeal's tables for {where} are at revision {list(found) or 'unknown'}; "
                f"this squeal needs {SCHEMA_REVISION}; run: {command}",
                command=command,
            )
        self._schema_ok = True


class _Tries:
    """One operation's tries so far."""

    __slots__ = ("began", "deadline", "pause", "reconnects", "uncertain")

    def __init__(self) -> None:
        self.began = 0.0  # when the current try began
        self.deadline = 0.0  # when transient errors stop being retried (set at the first)
        self.pause = 0.002
        self.reconnects = 0
        self.uncertain = False  # a try that may have committed lost its connection

    def wait(self, most: float) -> None:
        """Pause before the next try: a jittered pause, doubling up to ``most``."""
        pause_for(self.pause * (0.5 + random.random()))
        self.pause = min(self.pause * 2, most)


#: What a failure's text adds when an earlier try lost its connection mid-work.
_UNCERTAIN = (
    "the connection was lost during an earlier try, which may have committed "
    "(a failover or a dropped connection hid its outcome)"
)


#: Why a put whose outcome a dropped connection hid is not tried again.
_NOT_TRIED_AGAIN = (
    "the connection was lost after the put was sent, so it may have been stored; squeal did "
    "not try again, which could store it twice (puts with a dedup_key are tried again)"
)


def _began(error: BaseException) -> None:
    """Mark ``error`` as raised once a unit of work began (see ``_BEGAN``)."""
    with contextlib.suppress(AttributeError, TypeError):
        setattr(error, _BEGAN, True)


def _committed(
    work: Callable[[Executor], T], ex: Executor, commit_on: type[BaseException] | None
) -> T:
    """Run ``work`` and commit; after a ``commit_on`` exception, commit and re-raise it."""
    try:
        result = work(ex)
    except BaseException as exc:
        if commit_on is not None and isinstance(exc, commit_on):
            ex.commit()
        raise
    ex.commit()
    return result


class _Committing(CallerExecutor):
    """The caller-style executor on a connection of ours from the engine: commit at the end."""

    def __init__(self, connection: sa.Connection, server: Server) -> None:
        super().__init__(connection, server)
        self._conn = connection

    def commit(self) -> None:
        self._conn.commit()
