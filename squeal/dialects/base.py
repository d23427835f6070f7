"""The strategy every database shares; subclasses override what their database does differently."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from typing import Any, ClassVar, cast

import sqlalchemy as sa
from sqlalchemy.sql.dml import Insert

from squeal.clock import now_ms
from squeal.drivers.base import Code
from squeal.errors import UnsupportedDatabase
from squeal.executor import Executor
from squeal.schema import DEAD, READY, WAITING, Tables, in_state, text_value
from squeal.server import Server

#: What a claim returns for one message: (id, payload, neg_priority, attempts, enqueued_at,
#: max_attempts, headers), ``attempts`` already counting this claim, ``max_attempts`` the
#: message's own (None: the queue's), ``headers`` its JSON text (None: none). Plain tuples, as
#: the driver returns them.
ClaimedRow = tuple[int, bytes, int, int, int, int | None, str | None]
#: How a put's rows get their times: (delayed, with a ttl). Each kind has statements of its own,
#: so the common put (neither) computes nothing it does not need.
Timing = tuple[bool, bool]
#: Every Timing, for building the statements of each.
TIMINGS: tuple[Timing, ...] = ((False, False), (True, False), (False, True), (True, True))


def timing(shared: dict[str, Any]) -> Timing:
    """The Timing of a put's ``shared`` values (delay_ms, ttl_ms)."""
    return shared["delay_ms"] > 0, shared["ttl_ms"] is not None


#: Claim order of ClaimedRows: priority, then id.
_CLAIM_ORDER = itemgetter(2, 0)
#: A claim key: (neg_priority, id), the claim index's order.
Key = tuple[int, int]
#: Bound in place of "no bound": below every claim key.
_LOWEST = -(2**62)
#: Window in place of "no window": longer than any time squeal stores (no overflow from now).
_FOREVER = 2**62


@dataclass(frozen=True)
class ClaimScope:
    """Where one claim looks (squeal.claim_scope decides)."""

    #: Whether the claim also promotes due messages and looks at ready ones of a higher
    #: priority than the floor's.
    sweep: bool
    #: Ready messages: only those whose claim key is greater than this (None: all); in a sweep,
    #: also those of a higher priority than this key's.
    after: Key | None
    #: Due messages: only those that fell due within this many ms before the database's now
    #: (None: all). A duration, like every time squeal binds: the database's clock decides.
    due_within_ms: int | None


#: A claim that looks everywhere.
EVERYWHERE = ClaimScope(sweep=True, after=None, due_within_ms=None)


def in_claim_order(rows: Sequence[Sequence[Any]]) -> list[ClaimedRow]:
    """Claimed rows (in the ClaimedRow column order) sorted by priority, then id."""
    return sorted(cast(Sequence[ClaimedRow], rows), key=_CLAIM_ORDER)


def _param(name: str, type_: sa.types.TypeEngine[Any] | None = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


def ids_in_order(keys: Sequence[str | None], returned: Sequence[Sequence[Any]]) -> list[int | None]:
    """Each message's id from a multi-row INSERT's RETURNING (id, dedup_key); None if deduplicated.

    ``keys`` are the messages' dedup keys, in input order. Ids come from one sequence in
    insertion order, so sorted ids follow the input order.
    """
    if not any(key is not None for key in keys):
        return sorted(row[0] for row in returned)
    by_key = {text_value(key): id_ for id_, key in returned if key is not None}
    plain = iter(sorted(id_ for id_, key in returned if key is None))
    return [by_key.get(key) if key is not None else next(plain) for key in keys]


def scope_params(scope: ClaimScope) -> dict[str, int]:
    """The bounds a claim's statements bind for ``scope`` (the lowest values for none)."""
    after_p, after_id = scope.after or (_LOWEST, _LOWEST)
    due_within_ms = _FOREVER if scope.due_within_ms is None else scope.due_within_ms
    return {"after_p": after_p, "after_id": after_id, "due_within_ms": due_within_ms}


def running(topics: sa.Table, topic: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """True unless ``topic`` is paused (its row in the topic table says so)."""
    paused = sa.and_(topics.c.topic == topic, in_state(topics.c.paused, 1))
    return sa.not_(sa.exists().where(paused))


def admitted(topics: sa.Table, topic: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """True unless ``topic`` is paused, or has a limit and the claim does not hold the topic's
    row (``:in_limit`` is 0): a claim of a limited topic must go through squeal.limits."""
    t = topics.c
    limited = sa.or_(t.concurrency.is_not(None), t.rate.is_not(None))
    barred = sa.or_(in_state(t.paused, 1), sa.and_(_param("in_limit", sa.Integer()) == 0, limited))
    return sa.not_(sa.exists().where(t.topic == topic, barred))


def gate_params(limited: bool) -> dict[str, int]:
    """What a claim binds for :func:`admitted`: whether it holds the topic's limit."""
    return {"in_limit": int(limited)}


def allowed_attempts(m: sa.Table) -> sa.ColumnElement[int]:
    """The message's own ``max_attempts`` (a put's), else the queue's (``:max_attempts``)."""
    return sa.func.coalesce(m.c.max_attempts, _param("attempts_limit", sa.Integer()))


def dead_on_expiry(m: sa.Table) -> sa.ColumnElement[bool]:
    """True for a row whose lease ran out on its last allowed attempt."""
    return sa.and_(m.c.lease_token.is_not(None), m.c.attempts >= allowed_attempts(m))


def expired(m: sa.Table) -> sa.ColumnElement[bool]:
    """True for a message never claimed (or only released) whose ttl ran out."""
    # Never NULL (a row without a ttl is not expired), so NOT and CASE on it are two-valued.
    return sa.and_(m.c.attempts == 0, m.c.expires_at.is_not(None), m.c.expires_at <= now_ms())


def dies(m: sa.Table) -> sa.ColumnElement[bool]:
    """True for a due row that dies instead of becoming READY: its last lease ran out, or its
    ttl did (a READY row with a ttl keeps its expiry in ``visible_at``, so it is in the due
    index's range once it has run out)."""
    return sa.or_(dead_on_expiry(m), expired(m))


def unexpired(m: sa.Table) -> sa.ColumnElement[bool]:
    """True for a READY row whose ttl, if it has one, has not run out (its ``visible_at``)."""
    return sa.or_(m.c.visible_at.is_(None), m.c.visible_at > now_ms())


def promoted_state(m: sa.Table) -> sa.Case[Any]:
    """The state a due row moves to: READY, or DEAD when its last lease or its ttl ran out."""
    return sa.case((dies(m), DEAD), else_=READY)


#: Why a message died (``dead_reason``): a nack on its last attempt, its lease running out
#: on its last attempt, its ttl running out before a claim.
FAILED, LEASE_EXPIRED, EXPIRED = "failed", "lease expired", "expired"


def death_reason(m: sa.Table) -> sa.Case[Any]:
    """Why a due row that :func:`dies` dies (NULL for one that does not)."""
    return sa.case((dead_on_expiry(m), LEASE_EXPIRED), (expired(m), EXPIRED), else_=None)


def promoted(m: sa.Table) -> dict[str, Any]:
    """SET clause for due rows: READY (or DEAD, saying when and why), no longer waiting for a
    time; a message never claimed keeps its ttl's expiry in ``visible_at`` (NULL without one).
    Only rows that fall due pay for it, never the claim of a ready row."""
    expiry = sa.case((sa.and_(m.c.attempts == 0, sa.not_(dies(m))), m.c.expires_at), else_=None)
    return {
        "state": promoted_state(m),
        "visible_at": expiry,
        "died_at": sa.case((dies(m), now_ms()), else_=None),
        "dead_reason": death_reason(m),
    }


#: How long one statement on squeal's own connections waits for a row or table lock held by
#: another session before failing (the session then retries until its own deadline, and raises
#: DatabaseBusy): a lock held elsewhere never blocks squeal forever.
LOCK_TIMEOUT_SECONDS = 5


class Strategy:
    """How squeal talks to one kind of database.

    The statements here are built once per queue and run through an :class:`Executor`, which
    compiles each once per dialect; the hot path only binds parameters.
    """

    #: Human name and the oldest server version squeal runs on.
    label: ClassVar[str] = "database"
    min_version: ClassVar[tuple[int, ...]] = ()

    def __init__(self, dialect: sa.Dialect, tables: Tables, *, notify: bool = True) -> None:
        self.dialect = dialect
        self.tables = tables
        #: Whether puts announce new messages (the Queue's ``notify`` option).
        self.notify = notify
        m = self.m = tables.message
        self._multirow_cache: dict[tuple[int, bool, Timing, bool], sa.Executable] = {}
        self._row_names_cache: dict[int, tuple[list[str], list[str]]] = {}
        now = now_ms()

        lease = sa.and_(m.c.id == _param("msg_id"), m.c.lease_token == _param("token"))
        self.ack = sa.delete(m).where(lease)
        self.ack_batch = sa.delete(m).where(
            m.c.lease_token == _param("token"), m.c.id.in_(sa.bindparam("ids", expanding=True))
        )
        out_of_attempts = m.c.attempts >= allowed_attempts(m)
        self.nack = (
            sa.update(m)
            .where(lease)
            .values(
                state=sa.case((out_of_attempts, DEAD), else_=WAITING),
                visible_at=sa.case((out_of_attempts, None), else_=now + _param("delay_ms")),
                lease_token=None,
                died_at=sa.case((out_of_attempts, now), else_=None),
                dead_reason=sa.case((out_of_attempts, FAILED), else_=None),
                # The nack's error, else the one an earlier nack gave.
                last_error=sa.func.coalesce(_param("error", sa.Text()), m.c.last_error),
            )
        )
        self.release = (
            sa.update(m)
            .where(lease, sa.not_(in_state(m.c.state, DEAD)))
            # Due now, not READY: a released message has an old claim key, below the floors of
            # other queue objects; their sweeps find it in the due index (squeal.claim_scope).
            .values(state=WAITING, visible_at=now, lease_token=None, attempts=m.c.attempts - 1)
        )
        #: The leases of some messages: (id, token) of each that is still leased.
        self.leases = sa.select(m.c.id, m.c.lease_token).where(
            m.c.id.in_(sa.bindparam("ids", expanding=True)), in_state(m.c.state, WAITING)
        )
        self.touch = (
            sa.update(m)
            .where(lease, sa.not_(in_state(m.c.state, DEAD)))
            .values(state=WAITING, visible_at=now + _param("vt_ms", sa.BigInteger()))
        )

        # Only WAITING rows and READY rows with a ttl have a visible_at, so this range of the due
        # index is exactly the rows whose delay, backoff, lease or ttl has run out. (A state
        # test here would let the planner prefer the claim index and filter every leased row.)
        #: The claimed topic is not paused (``Queue.pause``) and, unless the claim holds its
        #: limit (squeal.limits), has none: one primary-key probe per statement, not per row,
        #: since it does not depend on the row.
        self.gate = admitted(tables.topic, _param("in_topic"))
        due = sa.and_(
            m.c.topic == _param("in_topic"),
            m.c.visible_at <= now,
            m.c.visible_at >= now - _param("due_within_ms", sa.BigInteger()),
            self.gate,
        )
        # Every due row is promoted (or leased) by the claim that finds it, not just ``limit``
        # of them: a due row left WAITING could outrank the READY row the claim returns. Each
        # row is promoted once per wait, so the work stays O(1) per message overall; a claim
        # right after many messages fall due at once does that work in one go.
        self.due_ids = sa.select(m.c.id).where(due).order_by(m.c.visible_at)
        self.ready_ids = self.ready_walk(unexpired(m))
        self.take_lease = {
            "state": WAITING,
            "visible_at": now + _param("vt_ms", sa.BigInteger()),
            "lease_token": _param("token"),
            "attempts": m.c.attempts + 1,
        }
        self.claimed_columns = (
            m.c.id,
            m.c.payload,
            m.c.neg_priority,
            m.c.attempts,
            m.c.enqueued_at,
            m.c.max_attempts,
            m.c.headers,
        )

    # -- what subclasses specialise -------------------------------------------------------------

    @cached_property
    def topic_scan(self) -> sa.Select[Any]:
        """The topics that have messages (one column, ``topic``), found by a loose index scan:
        one seek of the claim index per topic, whatever the topics hold. Here a recursive CTE
        that steps from each topic to the next; MySQL's optimizer does it for GROUP BY."""
        m = self.m
        later = m.alias("later")
        walk = sa.select(sa.func.min(m.c.topic).label("topic")).cte("topics", recursive=True)
        step = sa.select(sa.func.min(later.c.topic)).where(later.c.topic > walk.c.topic)
        walk = walk.union_all(sa.select(step.scalar_subquery()).where(walk.c.topic.is_not(None)))
        return sa.select(walk.c.topic).where(walk.c.topic.is_not(None))

    @cached_property
    def higher_ids(self) -> sa.Select[Any]:
        """Ready rows of a higher priority than the floor's, in claim order (a sweep's)."""
        return self.ready_walk(unexpired(self.m), higher=True)

    def ready_walk(self, *also: sa.ColumnElement[bool], higher: bool = False) -> sa.Select[Any]:
        """Ids of the topic's READY rows after the floor (``higher``: of a higher priority than
        the floor's), in claim order, up to ``:limit``, that also meet ``also`` (a claim's:
        their ttl has not run out)."""
        m = self.m
        after_p = _param("after_p", sa.BigInteger())
        bound = m.c.neg_priority < after_p if higher else self.after_floor(m)
        return (
            sa.select(m.c.id)
            .where(
                m.c.topic == _param("in_topic"),
                in_state(m.c.state, READY),
                bound,
                *also,
                self.gate,
            )
            .order_by(m.c.neg_priority, m.c.id)
            .limit(_param("limit"))
        )

    def after_floor(self, m: sa.Table) -> sa.ColumnElement[bool]:
        """``(neg_priority, id) > (:after_p, :after_id)``, which the claim index can seek to."""
        return sa.tuple_(m.c.neg_priority, m.c.id) > sa.tuple_(
            _param("after_p", sa.BigInteger()), _param("after_id", sa.BigInteger())
        )

    #: Starts a transaction on one of squeal's autocommit connections.
    begin_sql: ClassVar[str] = "BEGIN"
    #: Whether a one-row put reads its id with RETURNING (else from the cursor's lastrowid).
    single_insert_returns: ClassVar[bool] = True
    #: Whether a claim needs a transaction around its statements (one statement needs none).
    claim_is_one_statement: ClassVar[bool] = False

    def insert_one(self, ex: Executor, plain: sa.Insert, returning: sa.Insert, values: Any) -> int:
        """Run a one-row INSERT and return its new id: ``returning`` (``plain`` with
        ``RETURNING id``) where this database reads ids that way, else ``plain`` and the
        cursor's lastrowid."""
        if self.dialect.insert_returning and self.single_insert_returns:
            return int(ex.rows(returning, values)[0][0])
        found = ex.insert(plain, values)
        if found is None:  # pragma: no cover - an INSERT without a conflict inserts
            raise RuntimeError("squeal: an INSERT inserted no row")
        return found

    def insert_ignoring_conflicts(
        self, values: dict[str, Any] | list[dict[str, Any]], table: sa.Table | None = None
    ) -> Insert:
        """An insert of ``values`` (one row or several) into ``table`` (the message table by
        default) that skips rows whose key is taken."""
        raise NotImplementedError

    def upsert(self, table: sa.Table, row: dict[str, Any], update: Sequence[str]) -> Insert:
        """One statement that inserts ``row`` into ``table`` or, when its primary key is
        taken, sets the ``update`` columns of that row to ``row``'s values: it locks the row
        exclusively at once (an insert that met the row and then updated it would take a
        shared lock first, and two such deadlock on MySQL and MariaDB)."""
        raise NotImplementedError

    #: Statements that set up each connection squeal keeps (after autocommit is on).
    session_sql: ClassVar[tuple[str, ...]] = ()
    #: Isolation level for work that runs through SQLAlchemy (a driver without an adapter).
    isolation_level: ClassVar[str | None] = None

    def server_version(self, connection: sa.Connection) -> tuple[int, ...]:
        """The server's version as a tuple of ints (as ``connection``'s engine found it: the
        caller's connection may come from another engine than the queue's, not yet connected)."""
        info = connection.dialect.server_version_info or self.dialect.server_version_info or ()
        return tuple(int(v) for v in info if isinstance(v, int))

    def check_server(self, connection: sa.Connection) -> Server:
        """What squeal needs to know about the server; UnsupportedDatabase if it is too old."""
        version = self.server_version(connection)
        if version < self.min_version:
            wanted = ".".join(map(str, self.min_version))
            found = ".".join(map(str, version)) or "unknown"
            raise UnsupportedDatabase(
                f"squeal needs {self.label} {wanted} or newer (this server is {found})"
            )
        return Server(version)

    def after_migrate(self, connection: sa.Connection) -> None:
        """Database-level settings squeal needs once its tables exist."""

    def is_retryable(self, code: Code, error: BaseException) -> bool:
        """True when the driver ``error`` (server error ``code``) is transient: deadlock,
        lock timeout, busy."""
        return False

    def is_disconnect(self, code: Code, error: BaseException) -> bool:
        """True when the server ended the session in a way SQLAlchemy does not recognise."""
        return False

    def claim(
        self,
        ex: Executor,
        *,
        topic: str,
        limit: int,
        vt_ms: int,
        token: int,
        max_attempts: int,
        scope: ClaimScope = EVERYWHERE,
        limited: bool = False,
    ) -> list[ClaimedRow]:
        """Lease up to ``limit`` ready messages of ``topic``, best priority first.

        In a sweeping ``scope`` the due WAITING rows (delay over, backoff over, lease expired)
        are promoted first and compete with the READY rows; otherwise only READY rows after
        the scope's floor are looked at (squeal.claim_scope). ``limited``: the claim holds the
        topic's limit (squeal.limits); without it, a limited topic gives nothing. The default
        is two statements in one write transaction: promote the due rows, then lease READY
        rows in index order.
        """
        params = {"in_topic": topic, "limit": limit, **scope_params(scope), **gate_params(limited)}
        if scope.sweep:
            # SQLite keeps no dead index entries, so a sweep simply walks every ready row.
            params.update(scope_params(EVERYWHERE))
            ex.count(self._promote, {**params, "attempts_limit": max_attempts})
        params.update(vt_ms=vt_ms, token=token)
        return in_claim_order(ex.rows(self._lease_ready, params))

    @cached_property
    def _promote(self) -> sa.Update:
        m = self.m
        return sa.update(m).where(m.c.id.in_(self.due_ids.scalar_subquery())).values(promoted(m))

    @cached_property
    def _lease_ready(self) -> sa.Update:
        m = self.m
        return (
            sa.update(m)
            .where(m.c.id.in_(self.ready_ids.scalar_subquery()))
            .values(self.take_lease)
            .returning(*self.claimed_columns)
        )

    # -- shared machinery -----------------------------------------------------------------------

    def insert(
        self,
        ex: Executor,
        shared: dict[str, Any],
        payloads: Sequence[bytes],
        keys: Sequence[str | None],
    ) -> list[int | None]:
        """Insert messages that share ``shared`` (topic, priority, delay) in one statement.

        ``payloads`` and their dedup ``keys`` (None, or unique among them) are in input order.
        Returns each message's id, or None where its key deduplicated it.
        """
        dedup = any(key is not None for key in keys)
        kind = timing(shared)
        if len(payloads) == 1:
            values = {**shared, "payload": payloads[0], "dedup_key": keys[0]}
            if not (self.dialect.insert_returning and self.single_insert_returns):
                return [ex.insert(self._single[dedup, kind], values)]
            found = ex.rows(self._returning_id[dedup, kind], values)
            return [int(found[0][0]) if found else None]
        if not self.dialect.insert_returning:
            return [
                self.insert(ex, shared, [p], [k])[0] for p, k in zip(payloads, keys, strict=True)
            ]
        payload_names, key_names = self._row_names(len(payloads))
        values = dict(shared)
        values.update(zip(payload_names, payloads, strict=True))
        values.update(zip(key_names, keys, strict=True))
        bare = shared["msg_max_attempts"] is None and shared["headers"] is None
        statement = self._multirow(len(payloads), dedup, kind, bare)
        return ids_in_order(keys, ex.rows(statement, values))

    def insert_statements(self, n: int) -> int:
        """How many statements :meth:`insert` sends for ``n`` messages (one per message on a
        database without INSERT ... RETURNING, e.g. MySQL 8: those need a transaction)."""
        return 1 if n == 1 or self.dialect.insert_returning else n

    def new_row(self, kind: Timing) -> dict[str, Any]:
        """The column values of a new message (one ``payload`` and ``dedup_key`` parameter).

        A ready message's ``visible_at`` is NULL outright, and only a delayed put's statement
        adds the delay, only a put with a ttl its expiry: the common put computes no CASE per
        row. A ready message with a ttl keeps its expiry in ``visible_at`` as well, where the
        due index finds it once it has run out (``dies``).
        """
        delayed, ttl = kind
        now = now_ms()
        row: dict[str, Any] = {
            "topic": _param("topic"),
            "neg_priority": _param("neg_priority"),
            # What the timing fixes is written into the SQL: a driver that formats parameters
            # itself (PyMySQL) formats each of a multi-row INSERT's parameters once per row.
            "state": sa.literal_column(str(WAITING if delayed else READY), sa.SmallInteger()),
            "visible_at": sa.null(),
            "enqueued_at": now,
            "attempts": sa.literal_column("0", sa.Integer()),
            "dedup_key": _param("dedup_key"),
            "payload": _param("payload", sa.LargeBinary()),
            "max_attempts": _param("msg_max_attempts", sa.Integer()),
            "headers": _param("headers", sa.Text()),
        }
        delay = _param("delay_ms", sa.BigInteger())
        if ttl:
            row["expires_at"] = now + delay + _param("ttl_ms", sa.BigInteger())
        if delayed:
            row["visible_at"] = now + delay
        elif ttl:
            row["visible_at"] = row["expires_at"]
        return row

    def _row_names(self, n: int) -> tuple[list[str], list[str]]:
        """The parameter names of ``_multirow(n)``: payload_i and dedup_key_i."""
        names = self._row_names_cache.get(n)
        if names is None:
            names = ([f"payload_{i}" for i in range(n)], [f"dedup_key_{i}" for i in range(n)])
            if len(self._row_names_cache) < 64:
                self._row_names_cache[n] = names
        return names

    @cached_property
    def _single(self) -> dict[tuple[bool, Timing], Insert]:
        """One-message INSERTs by (dedup, timing); with dedup, a taken key inserts nothing."""
        return {
            (dedup, kind): (
                self.insert_ignoring_conflicts(self.new_row(kind))
                if dedup
                else sa.insert(self.m).values(self.new_row(kind))
            )
            for dedup in (False, True)
            for kind in TIMINGS
        }

    @cached_property
    def _returning_id(self) -> dict[tuple[bool, Timing], sa.Executable]:
        return {kind: self.announced(s.returning(self.m.c.id)) for kind, s in self._single.items()}

    @property
    def wake_channel(self) -> str | None:
        """The channel puts announce ready messages on; None when consumers poll."""
        return None

    def announced(self, insert: Insert) -> sa.Executable:
        """The INSERT ... RETURNING a put runs; PostgreSQL adds its wake-up notification."""
        return insert

    def _multirow(self, n: int, dedup: bool, kind: Timing, bare: bool) -> sa.Executable:
        """The cached :meth:`multirow_insert` of ``n`` rows."""
        key = (n, dedup, kind, bare)
        stmt = self._multirow_cache.get(key)
        if stmt is None:
            stmt = self.multirow_insert(n, dedup, kind, bare=bare)
            if len(self._multirow_cache) < 64:
                self._multirow_cache[key] = stmt
        return stmt

    def multirow_insert(
        self, n: int, dedup: bool, kind: Timing, *, bare: bool = False
    ) -> sa.Executable:
        """An INSERT of ``n`` rows (payload_i, dedup_key_i) returning (id, dedup_key).

        The shared values are bound in every row, so the NULLs a put without dedup keys,
        max_attempts or headers (``bare``) would bind are written into the SQL: a driver that
        formats parameters itself (PyMySQL) then formats 3 per row (topic, priority, payload),
        not 9.
        """
        shared = self.new_row(kind)
        if bare:
            shared.update(max_attempts=sa.null(), headers=sa.null())
        key_type = self.m.c.dedup_key.type
        rows = [
            {
                **shared,
                "payload": _param(f"payload_{i}", sa.LargeBinary()),
                "dedup_key": sa.bindparam(f"dedup_key_{i}", type_=key_type) if dedup else sa.null(),
            }
            for i in range(n)
        ]
        base = self.insert_ignoring_conflicts(rows) if dedup else sa.insert(self.m).values(rows)
        return self.announced(base.returning(self.m.c.id, self.m.c.dedup_key))


__all__ = [
    "EVERYWHERE",
    "EXPIRED",
    "FAILED",
    "LEASE_EXPIRED",
    "TIMINGS",
    "ClaimScope",
    "ClaimedRow",
    "Key",
    "Strategy",
    "Timing",
    "admitted",
    "allowed_attempts",
    "dead_on_expiry",
    "death_reason",
    "dies",
    "expired",
    "gate_params",
    "ids_in_order",
    "in_claim_order",
    "promoted",
    "promoted_state",
    "running",
    "scope_params",
    "timing",
    "unexpired",
]
