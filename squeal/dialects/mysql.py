"""MySQL 8 and MariaDB 10.6+: lock with SKIP LOCKED, then update by id (no UPDATE ... RETURNING)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.dml import Insert

from squeal.clock import now_ms
from squeal.dialects.base import (
    EVERYWHERE,
    LOCK_TIMEOUT_SECONDS,
    ClaimedRow,
    ClaimScope,
    Strategy,
    dies,
    gate_params,
    in_claim_order,
    promoted,
    scope_params,
    unexpired,
)
from squeal.dialects.bundle import Bundle
from squeal.dialects.dedup import MySQLWindows
from squeal.dialects.health import MySQLHealth
from squeal.dialects.locking import MySQLLocking
from squeal.dialects.migration_lock import MySQLMigrationLock
from squeal.drivers.base import Code
from squeal.errors import PayloadTooLarge, UnsupportedDatabase
from squeal.executor import Executor
from squeal.server import Server


@compiles(now_ms, "mysql")
@compiles(now_ms, "mariadb")
def _now_ms(element: now_ms, compiler: Any, **kw: Any) -> str:
    # Arithmetic on UTC_TIMESTAMP avoids UNIX_TIMESTAMP's session time zone (and its DST jumps).
    return "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000)"


_MARIADB_MIN = (10, 6)
_LOCK_TIMEOUTS = (
    f"SET SESSION innodb_lock_wait_timeout = {LOCK_TIMEOUT_SECONDS}, "
    f"lock_wait_timeout = {LOCK_TIMEOUT_SECONDS}"
)
#: Room for the statement around a payload.
_STATEMENT_MARGIN = 16 * 1024
#: ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK (on Galera also a write set that failed
#: certification: another node's transaction wrote the same row first), and Galera's "WSREP has
#: not yet prepared node for application use" (1047: the node is joining, or lost quorum; a
#: plain server never sends it for squeal's statements).
_RETRYABLE_ERRORS = frozenset({1047, 1205, 1213})
#: Client errors of a lost connection that SQLAlchemy does not always recognise: server gone
#: (2006), lost during a query (2013), lost (2055), and MariaDB Connector/C's read/write
#: errors on a closed socket (5013, 5014).
_DISCONNECT_ERRORS = frozenset({2006, 2013, 2055, 5013, 5014})


class _Candidate(NamedTuple):
    id: int
    payload: bytes
    neg_priority: int
    attempts: int
    enqueued_at: int
    max_attempts: int | None
    headers: str | None
    due: bool
    dies: bool


def _force_index(select: sa.Select[Any], table: sa.Table, index: str) -> sa.Select[Any]:
    hint = f"FORCE INDEX ({index})"
    return select.with_hint(table, hint, "mysql").with_hint(table, hint, "mariadb")


#: A LIMIT that keeps every row (and keeps a derived table from being merged into its query).
_ALL = 2**62

#: A ready walk from the start reads this many more ids than it claims (twice the claim, plus
#: this): a plain read cannot see which rows other consumers are locking at that moment.
_PROBE_SLACK = 16

#: The (due, dies) columns of a ready candidate.
_READY_FLAGS = (sa.literal(False).label("due"), sa.literal(False).label("dies"))


class MySQLStrategy(Strategy):
    """Claims in one READ COMMITTED transaction: SELECT ... SKIP LOCKED, then UPDATE by id.

    READ COMMITTED matters: under REPEATABLE READ the locking SELECT also takes gap locks,
    which block producers inserting into the same index range until the claim commits.
    """

    label: ClassVar[str] = "MySQL"
    min_version: ClassVar[tuple[int, ...]] = (8, 0, 1)

    def check_server(self, connection: sa.Connection) -> Server:
        limit = connection.exec_driver_sql("SELECT @@max_allowed_packet").scalar()
        if not getattr(connection.dialect, "is_mariadb", False):
            found = super().check_server(connection)
        else:
            found = Server(self.server_version(connection))
            if found.version < _MARIADB_MIN:
                raise UnsupportedDatabase(
                    "squeal needs MariaDB 10.6 or newer for SKIP LOCKED (this server is "
                    f"{'.'.join(map(str, found.version))})"
                )
        return Server(found.version, int(limit) if limit is not None else None)

    @cached_property
    def topic_scan(self) -> sa.Select[Any]:
        # "Using index for group-by": the optimizer's own loose scan of the claim index. (A
        # correlated "next topic" subquery, as elsewhere, scans the whole index per step.)
        return sa.select(self.m.c.topic).group_by(self.m.c.topic)

    def insert(
        self,
        ex: Executor,
        shared: dict[str, Any],
        payloads: Sequence[bytes],
        keys: Sequence[str | None],
    ) -> list[int | None]:
        # The server refuses (and PyMySQL then drops the connection on) a statement larger than
        # max_allowed_packet; say so before sending it. Drivers send bytes as text, escaped or
        # in hex, so a payload may take up to twice its size.
        limit = ex.server.statement_limit
        if limit is not None:
            for payload in payloads:
                size = len(payload)
                if size * 2 + _STATEMENT_MARGIN > limit:
                    raise PayloadTooLarge(
                        f"a payload of {size} bytes does not fit the server's max_allowed_packet "
                        f"({limit} bytes; payloads may use half of it): raise it on the server"
                    )
        return super().insert(ex, shared, payloads, keys)

    begin_sql: ClassVar[str] = "START TRANSACTION"
    #: A result set costs MariaDB more than the OK packet's insert id.
    single_insert_returns: ClassVar[bool] = False

    def insert_ignoring_conflicts(
        self, values: dict[str, Any] | list[dict[str, Any]], table: sa.Table | None = None
    ) -> Insert:
        # Inputs are validated before SQL runs, so IGNORE only ever skips the duplicate key.
        return mysql.insert(self.m if table is None else table).values(values).prefix_with("IGNORE")

    def upsert(self, table: sa.Table, row: dict[str, Any], update: Sequence[str]) -> Insert:
        stmt = mysql.insert(table).values(row)
        return stmt.on_duplicate_key_update({name: stmt.inserted[name] for name in update})

    #: Autocommit (the driver's): a put or an ack is one round trip. READ COMMITTED for the
    #: whole session, set once: a claim's locking reads take no gap locks that would block
    #: puts. Claims run on these same connections in START TRANSACTION ... COMMIT, as the
    #: floor's do: one connection per consumer thread, not a second one just for claiming.
    session_sql: ClassVar[tuple[str, ...]] = (
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        _LOCK_TIMEOUTS,
    )
    isolation_level: ClassVar[str | None] = "READ COMMITTED"

    def is_retryable(self, code: Code, error: BaseException) -> bool:
        return code in _RETRYABLE_ERRORS

    def is_disconnect(self, code: Code, error: BaseException) -> bool:
        return code in _DISCONNECT_ERRORS

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
        params = {"in_topic": topic, "limit": limit, **scope_params(scope), **gate_params(limited)}
        if scope.sweep:
            params["attempts_limit"] = max_attempts
        claimed, killed = self._claim_once(ex, scope, params, vt_ms, token)
        if killed and len(claimed) < limit:
            # Rows whose ttl ran out took the place of live ones in the walk; they are dead
            # now (in this transaction), so one more walk finds what lies behind them.
            more, _ = self._claim_once(
                ex, scope, {**params, "limit": limit - len(claimed)}, vt_ms, token
            )
            claimed = in_claim_order([*claimed, *more])
        return claimed

    def _claim_once(
        self, ex: Executor, scope: ClaimScope, params: dict[str, Any], vt_ms: int, token: int
    ) -> tuple[list[ClaimedRow], bool]:
        """One walk: the rows it leased, and whether it killed any (lease or ttl ran out)."""
        limit = params["limit"]
        if scope.after is None:
            params["probe_limit"] = limit * 2 + _PROBE_SLACK
        locked = [_Candidate(*row) for row in ex.rows(self._candidates(scope), params)]
        live = [row for row in locked if not row.dies]
        live.sort(key=lambda r: (r.neg_priority, r.id))
        picked = live[:limit]
        picked_ids = {row.id for row in picked}
        if picked:
            ex.count(self._lease, {"ids": list(picked_ids), "vt_ms": vt_ms, "token": token})
        promote = [row.id for row in locked if row.due and row.id not in picked_ids]
        if promote:
            ex.count(
                self._promote_ids, {"ids": promote, "attempts_limit": params["attempts_limit"]}
            )
        rows: list[ClaimedRow] = [
            (
                r.id,
                r.payload,
                r.neg_priority,
                r.attempts + 1,
                r.enqueued_at,
                r.max_attempts,
                r.headers,
            )
            for r in picked
        ]
        return rows, any(row.dies for row in locked)

    def after_floor(self, m: sa.Table) -> sa.ColumnElement[bool]:
        """The floor spelled out: InnoDB ranges an OR of key prefixes, not a row comparison."""
        after_p = sa.bindparam("after_p", type_=sa.BigInteger())
        return sa.or_(
            m.c.neg_priority > after_p,
            sa.and_(
                m.c.neg_priority == after_p,
                m.c.id > sa.bindparam("after_id", type_=sa.BigInteger()),
            ),
        )

    @cached_property
    def _shapes(self) -> dict[tuple[bool, bool], sa.Select[Any] | sa.CompoundSelect[Any]]:
        return {}

    def _candidates(self, scope: ClaimScope) -> sa.Select[Any] | sa.CompoundSelect[Any]:
        """The claim's one locking statement for ``scope`` (built once per shape)."""
        shape = (scope.sweep, scope.after is not None)
        statement = self._shapes.get(shape)
        if statement is None:
            statement = self._shapes[shape] = self._build(*shape)
        return statement

    def _build(self, sweep: bool, floored: bool) -> sa.Select[Any] | sa.CompoundSelect[Any]:
        """Ready rows in claim order (from the floor: a locking walk that stops at ``limit``
        rows; from the start: found by a plain read, past what claims left behind), and in a
        sweep the higher priorities than the floor's and the due waiting rows, all locked, in
        one round trip."""
        m = self.m
        # InnoDB's optimizer, seeing that most rows match, picks a full scan plus filesort, which
        # also locks every row it sorts; each branch must walk its own index in order.
        claim_ix, due_ix = f"{m.name}_claim_ix", f"{m.name}_due_ix"
        if floored:
            ready: sa.Select[Any] = _force_index(
                self.ready_ids.with_only_columns(*self.claimed_columns, *_READY_FLAGS),
                m,
                claim_ix,
            ).with_for_update(skip_locked=True)
        else:
            # The probe reads the claim index alone (a ttl is in the row, not the index): rows
            # whose ttl ran out are left out when locked, and the sweep's due walk kills them.
            probe: sa.Select[Any] = self.ready_walk().with_only_columns(m.c.id, m.c.neg_priority)
            probe = _force_index(
                probe.limit(sa.bindparam("probe_limit", type_=sa.Integer())), m, claim_ix
            )
            ready = self._locked_by_key(probe, *_READY_FLAGS, first=True, also=unexpired(m))
        if not sweep:
            return ready
        due = _force_index(self.due_ids.limit(_ALL), m, due_ix)
        branches = [
            ready.self_group(),
            # Parenthesised: a locking clause may not end a bare member of a UNION.
            self._locked_by_key(
                due, sa.literal(True).label("due"), dies(m).label("dies")
            ).self_group(),
        ]
        if floored:
            higher = _force_index(self.higher_ids, m, claim_ix)
            branches.insert(1, self._locked_by_key(higher, *_READY_FLAGS).self_group())
        return sa.union_all(*branches)

    def _locked_by_key(
        self,
        walk: sa.Select[Any],
        *flags: sa.ColumnElement[Any],
        first: bool = False,
        also: sa.ColumnElement[bool] | None = None,
    ) -> sa.Select[Any]:
        """The ids ``walk`` finds by a plain read, then locked by primary key and checked again
        (with ``first``, only the first ``limit`` of them that are not locked, in claim order).

        A locking read visits the table row of every delete-marked index entry it passes, and
        InnoDB only learns that a range has ended from the next entry that is not
        delete-marked: a walk that runs out (as a sweep's higher priorities and due rows
        usually do, and a walk from the start passes the entries of everything claimed) visits
        every entry claims and acks left behind, at three page reads each, for as long as purge
        is held back (a snapshot held anywhere on the server). A plain read passes them within
        the index page. The derived table has a LIMIT, so it is not merged into the locking
        query; the row's own conditions (and ``also``) are checked again on the version the
        lock reads (a message claimed or acked since the walk is not taken).
        """
        m = self.m
        found = walk.subquery("found")
        locked = (
            sa.select(*self.claimed_columns, *flags)
            .select_from(found.join(m, m.c.id == found.c.id))
            .where(walk.whereclause)  # type: ignore[arg-type]
            .prefix_with("STRAIGHT_JOIN")
        )
        if also is not None:
            locked = locked.where(also)
        if first:
            locked = locked.order_by(found.c.neg_priority, found.c.id).limit(
                sa.bindparam("limit", type_=sa.Integer())
            )
        return _force_index(locked, m, "PRIMARY").with_for_update(skip_locked=True)

    @cached_property
    def _lease(self) -> sa.Update:
        m = self.m
        return (
            sa.update(m)
            .where(m.c.id.in_(sa.bindparam("ids", expanding=True)))
            .values(self.take_lease)
        )

    @cached_property
    def _promote_ids(self) -> sa.Update:
        m = self.m
        return (
            sa.update(m).where(m.c.id.in_(sa.bindparam("ids", expanding=True))).values(promoted(m))
        )


BUNDLE = Bundle(
    dialects=("mysql", "mariadb"),
    strategy=MySQLStrategy,
    locking=MySQLLocking,
    windows=MySQLWindows,
    migration_lock=MySQLMigrationLock,
    health=MySQLHealth,
)
