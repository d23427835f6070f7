"""Dedup windows: a key recorded in ``{prefix}_dedup`` blocks puts of that key until it expires.

A windowed put first *claims* its keys: for each key, one atomic "insert the key's row, or
replace a row whose window has run out". A key whose row is still live is blocked. The put then
inserts messages only for the keys it won, in the same transaction, so two producers racing on
one key can never both win: the loser waits for the winner's row lock and then finds a live row.

Expired rows need no background process: a claim of the same key replaces its row, and
:meth:`Windows.sweep` deletes a bounded batch of expired rows through the expiry index, skipping
rows another transaction holds. Times are the database clock's milliseconds (``now_ms()``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from squeal.clock import now_ms
from squeal.executor import Executor
from squeal.schema import Tables, text_value

#: Keys per claim statement: bind parameters stay far below every database's limit.
CHUNK = 500
#: Expired rows one sweep deletes at most.
SWEEP_LIMIT = 500
#: A queue sweeps after every this many keys its windowed puts recorded: each sweep may delete
#: several times what was written since the last one, so the table stays near its live size.
SWEEP_EVERY = 100
#: Cached statements per kind: sizes beyond this are built for each use.
_CACHE_SIZE = 64


class Windows:
    """Dedup-window statements for one prefix; subclasses spell the atomic claim."""

    #: Whether :meth:`sweep` runs several statements that must share one transaction.
    sweep_is_atomic: ClassVar[bool] = False

    def __init__(self, dialect: sa.Dialect, tables: Tables) -> None:
        self.dialect = dialect
        self.table = d = tables.dedup
        self._claims: dict[int, sa.Executable] = {}
        self._overrides: dict[int, sa.Executable] = {}
        self.topic = sa.bindparam("dedup_topic", type_=d.c.topic.type)
        self.keys = sa.bindparam("dedup_keys", expanding=True, type_=d.c.dedup_key.type)
        self.expires = now_ms() + sa.bindparam("window_ms", type_=sa.BigInteger())
        self.of_keys = sa.and_(d.c.topic == self.topic, d.c.dedup_key.in_(self.keys))
        #: Delete the rows of some keys of one topic (undo a claim; clear an override).
        self.forget = sa.delete(d).where(self.of_keys)
        #: Delete every row of one topic (``Queue.purge``).
        self.purge = sa.delete(d).where(d.c.topic == sa.bindparam("in_topic", type_=d.c.topic.type))

    # -- what each database spells differently --------------------------------------------------

    def claim(self, ex: Executor, topic: str, keys: Sequence[str], window_ms: int) -> set[str]:
        """Record ``keys`` (unique) for ``window_ms`` unless a live row blocks them.

        Returns the keys won: their rows now expire at now + ``window_ms``. Rows of the keys
        not returned are unchanged. Run it in the transaction that inserts the messages.
        """
        won: set[str] = set()
        ordered = sorted(keys)  # one lock order for every producer: fewer deadlocks
        for start in range(0, len(ordered), CHUNK):
            chunk = ordered[start : start + CHUNK]
            won.update(self._claim_chunk(ex, topic, chunk, window_ms))
        return won

    def _claim_chunk(
        self, ex: Executor, topic: str, keys: Sequence[str], window_ms: int
    ) -> set[str]:
        raise NotImplementedError

    def sweep(self, ex: Executor) -> int:
        """Delete up to :data:`SWEEP_LIMIT` expired rows that nobody holds; return how many."""
        return ex.count(self._sweep, {"limit": SWEEP_LIMIT})

    @cached_property
    def _sweep(self) -> sa.Executable:
        """``DELETE ... WHERE (topic, dedup_key) IN (expired rows, by the expiry index)``.

        SQLite has one writer at a time, so no row can be held by anybody else.
        """
        d = self.table
        expired = (
            sa.select(d.c.topic, d.c.dedup_key)
            .where(d.c.expires_at <= now_ms())
            .order_by(d.c.expires_at)
            .limit(sa.bindparam("limit"))
        )
        return sa.delete(d).where(sa.tuple_(d.c.topic, d.c.dedup_key).in_(expired))

    # -- shared statements ----------------------------------------------------------------------

    def override(self, ex: Executor, topic: str, keys: Sequence[str], window_ms: int) -> None:
        """Set the rows of ``keys`` to expire at now + ``window_ms``, live or not."""
        ordered = sorted(keys)
        for start in range(0, len(ordered), CHUNK):
            chunk = ordered[start : start + CHUNK]
            values = self._key_values(topic, chunk, window_ms)
            ex.count(self._sized(self._overrides, len(chunk), self._override_statement), values)

    def _override_statement(self, n: int) -> sa.Executable:
        raise NotImplementedError

    def _rows(self, n: int, expires: sa.ColumnElement[Any] | None = None) -> list[dict[str, Any]]:
        """VALUES for ``n`` keys (``key_0`` ...) of one topic, expiring at ``expires``."""
        d = self.table
        return [
            {
                "topic": self.topic,
                "dedup_key": sa.bindparam(f"key_{i}", type_=d.c.dedup_key.type),
                "expires_at": self.expires if expires is None else expires,
            }
            for i in range(n)
        ]

    def _key_values(self, topic: str, keys: Sequence[str], window_ms: int) -> dict[str, Any]:
        values: dict[str, Any] = {"dedup_topic": topic, "window_ms": window_ms}
        values.update((f"key_{i}", key) for i, key in enumerate(keys))
        return values

    @staticmethod
    def _sized(
        cache: dict[int, sa.Executable], n: int, build: Callable[[int], sa.Executable]
    ) -> sa.Executable:
        """The statement for ``n`` keys from ``cache``, built (and kept, a few) on first use."""
        stmt = cache.get(n)
        if stmt is None:
            stmt = build(n)
            if len(cache) < _CACHE_SIZE:
                cache[n] = stmt
        return stmt


class UpsertWindows(Windows):
    """PostgreSQL and SQLite: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired RETURNING``.

    PostgreSQL re-checks the WHERE against the newest committed row after waiting for a
    concurrent claim of the same key, and SQLite has one writer at a time, so one statement
    decides the race. A blocked key's row is left alone and not returned.
    """

    def _insert(self) -> postgresql.Insert | sqlite.Insert:
        raise NotImplementedError

    def _claim_chunk(
        self, ex: Executor, topic: str, keys: Sequence[str], window_ms: int
    ) -> set[str]:
        stmt = self._sized(self._claims, len(keys), self._claim_statement)
        rows = ex.rows(stmt, self._key_values(topic, keys, window_ms))
        return {text_value(row[0]) for row in rows}

    def _claim_statement(self, n: int) -> sa.Executable:
        return self._upsert(n, only_expired=True).returning(self.table.c.dedup_key)

    def _override_statement(self, n: int) -> sa.Executable:
        return self._upsert(n, only_expired=False)

    def _upsert(self, n: int, *, only_expired: bool) -> postgresql.Insert | sqlite.Insert:
        """Insert ``n`` keys' rows; a key's existing row takes the new expiry (if it ran out)."""
        d = self.table
        stmt = self._insert().values(self._rows(n))
        return stmt.on_conflict_do_update(
            index_elements=[d.c.topic, d.c.dedup_key],
            set_={"expires_at": stmt.excluded.expires_at},
            where=d.c.expires_at <= now_ms() if only_expired else None,
        )


class PostgreSQLWindows(UpsertWindows):
    """PostgreSQL's ``ON CONFLICT``; the sweep skips rows that other transactions hold."""

    def _insert(self) -> postgresql.Insert:
        return postgresql.insert(self.table)

    @cached_property
    def _sweep(self) -> sa.Executable:
        """``DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid ... FOR UPDATE SKIP LOCKED))``.

        PostgreSQL has no DELETE ... LIMIT; the ctid array keeps the delete a TID scan of the
        rows the locked index walk found (a key-tuple IN could be planned as a hash join).
        """
        d = self.table
        ctid: sa.ColumnElement[Any] = sa.literal_column("ctid")
        expired = (
            sa.select(ctid)
            .select_from(d)
            .where(d.c.expires_at <= now_ms())
            .order_by(d.c.expires_at)
            .limit(sa.bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        return sa.delete(d).where(ctid == sa.any_(sa.func.array(expired.scalar_subquery())))


class SQLiteWindows(UpsertWindows):
    """SQLite's ``ON CONFLICT`` (RETURNING needs 3.35, which squeal requires anyway)."""

    def _insert(self) -> sqlite.Insert:
        return sqlite.insert(self.table)


#: The expiry a MySQL claim writes first, marking the rows this transaction won (a real expiry
#: is a positive time; others cannot see this uncommitted value, and it is replaced before the
#: transaction ends).
_CLAIMED = -1


class MySQLWindows(Windows):
    """MySQL and MariaDB: ``INSERT ... ON DUPLICATE KEY UPDATE``, read back, then set the expiry.

    No RETURNING, and the affected-row count cannot tell an insert from an untouched row (the
    driver sets CLIENT_FOUND_ROWS), so the rows won are first marked with an impossible expiry
    (:data:`_CLAIMED`), read back by that mark, and then given their real expiry. Comparing a
    read-back expiry with the one written would confuse two claims in the same millisecond.
    """

    sweep_is_atomic: ClassVar[bool] = True

    def _claim_chunk(
        self, ex: Executor, topic: str, keys: Sequence[str], window_ms: int
    ) -> set[str]:
        stmt = self._sized(self._claims, len(keys), self._claim_statement)
        ex.count(stmt, self._key_values(topic, keys, window_ms))
        params = {"dedup_topic": topic, "dedup_keys": list(keys), "window_ms": window_ms}
        won = {text_value(row[0]) for row in ex.rows(self._marked, params)}
        if won:
            ex.count(self._settle_marked, params)
        return won

    def _claim_statement(self, n: int) -> sa.Executable:
        d = self.table
        stmt = mysql.insert(d).values(self._rows(n, sa.literal(_CLAIMED, sa.BigInteger())))
        expired = d.c.expires_at <= now_ms()
        return stmt.on_duplicate_key_update(
            expires_at=sa.case((expired, _CLAIMED), else_=d.c.expires_at)
        )

    @cached_property
    def _marked(self) -> sa.Select[Any]:
        d = self.table
        return sa.select(d.c.dedup_key).where(self.of_keys, d.c.expires_at == _CLAIMED)

    @cached_property
    def _settle_marked(self) -> sa.Update:
        d = self.table
        return (
            sa.update(d)
            .where(self.of_keys, d.c.expires_at == _CLAIMED)
            .values(expires_at=self.expires)
        )

    def _override_statement(self, n: int) -> sa.Executable:
        d = self.table
        stmt = mysql.insert(d).values(self._rows(n))
        return stmt.on_duplicate_key_update(expires_at=self.expires)

    def sweep(self, ex: Executor) -> int:
        """Lock expired rows with SKIP LOCKED, then delete exactly those.

        MySQL refuses a subquery on the table a DELETE changes, and has no SKIP LOCKED in
        DELETE; a plain DELETE ... LIMIT would wait for rows other puts are taking over.
        """
        rows = ex.rows(self._expired, {"limit": SWEEP_LIMIT})
        if not rows:
            return 0
        size = 1 << (len(rows) - 1).bit_length()  # a few cached sizes; pad with the last row
        padded = [*rows, *[rows[-1]] * (size - len(rows))]
        values: dict[str, Any] = {}
        for i, (topic, key) in enumerate(padded):
            values[f"sweep_topic_{i}"] = text_value(topic)
            values[f"sweep_key_{i}"] = text_value(key)
        ex.count(self._sized(self._sweeps, size, self._delete_rows), values)
        return len(rows)

    @cached_property
    def _sweeps(self) -> dict[int, sa.Executable]:
        return {}

    @cached_property
    def _expired(self) -> sa.Select[Any]:
        d = self.table
        return (
            sa.select(d.c.topic, d.c.dedup_key)
            .where(d.c.expires_at <= now_ms())
            .order_by(d.c.expires_at)
            .limit(sa.bindparam("limit"))
            .with_for_update(skip_locked=True)
        )

    def _delete_rows(self, n: int) -> sa.Executable:
        """Delete ``n`` rows by primary key: an OR of key equalities, each a PK lookup."""
        d = self.table
        match = sa.or_(
            *(
                sa.and_(
                    d.c.topic == sa.bindparam(f"sweep_topic_{i}", type_=d.c.topic.type),
                    d.c.dedup_key == sa.bindparam(f"sweep_key_{i}", type_=d.c.dedup_key.type),
                )
                for i in range(n)
            )
        )
        return sa.delete(d).where(match)


__all__ = ["CHUNK", "SWEEP_EVERY", "SWEEP_LIMIT", "Windows"]
