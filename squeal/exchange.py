"""Exchanges: one publish, a copy in every topic bound to it (docs/exchanges.md).

``Queue.bind(exchange, topic, key=...)`` records a row in ``{prefix}_binding``;
``Queue.publish(payload, exchange)`` reads the exchange's live bindings and puts a copy of the
payload into each bound topic, all in one transaction (every copy or none, in the caller's
transaction when given one). A publish with a ``key`` reaches the topics bound with that key
(a direct exchange); without one, every topic bound (a fanout). An exchange is only a name:
it exists while topics are bound to it, and a publish to an exchange with no binding stores
nothing.

A binding may expire (``expires``): it lasts that long unless bound again, so a consumer that
renews its binding while it runs stops receiving copies some time after it dies (kombu's
``x-expires`` queues, Celery's remote-control mailboxes). Expired rows are deleted by the next
publish to their exchange, or bind to it (after the bind committed). A binding's ``ttl`` is
each copy's ``ttl`` (a copy not claimed in time dies, docs/state_machine.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from squeal.clock import now_ms
from squeal.dialects.base import Strategy
from squeal.executor import Executor
from squeal.message import from_ms
from squeal.schema import Tables, text_value


@dataclass(frozen=True)
class Binding:
    """A topic bound to an exchange (:meth:`squeal.Queue.bindings`)."""

    exchange: str
    #: The binding key ("" when bound without one): a publish with a key reaches the topics
    #: bound with that key; a publish without one reaches every topic bound.
    key: str
    topic: str
    #: Seconds each copy may wait to be claimed (None: the publish's ``ttl``, if any).
    ttl: float | None
    #: When the binding ends unless bound again (database clock; None: until unbound).
    expires_at: datetime | None


@dataclass(frozen=True)
class Target:
    """Where one publish puts a copy: a bound topic, with the binding's ttl (ms)."""

    topic: str
    ttl_ms: int | None


class ExchangeStatements:
    """The statements of one prefix's binding table (built once per queue)."""

    def __init__(self, strategy: Strategy, tables: Tables) -> None:
        self.strategy = strategy
        self.b = tables.binding

    def _pk(self, key: bool = True) -> sa.ColumnElement[bool]:
        b = self.b
        where = (b.c.exchange == sa.bindparam("in_exchange")) & (
            b.c.topic == sa.bindparam("in_topic")
        )
        return where & (b.c.binding_key == sa.bindparam("in_key")) if key else where

    @cached_property
    def _expiry(self) -> sa.ColumnElement[Any]:
        """When a binding made now ends: NULL for a binding without a lifetime."""
        return now_ms() + sa.bindparam("lifetime_ms", type_=sa.BigInteger())

    @cached_property
    def bind(self) -> sa.Executable:
        """Insert the binding, or set an existing one's ttl and lifetime (one statement)."""
        row: dict[str, Any] = {
            "exchange": sa.bindparam("in_exchange"),
            "binding_key": sa.bindparam("in_key"),
            "topic": sa.bindparam("in_topic"),
            "ttl_ms": sa.bindparam("ttl_ms", type_=sa.BigInteger()),
            "expires_at": self._expiry,
            "bound_at": now_ms(),
        }
        return self.strategy.upsert(self.b, row, ("ttl_ms", "expires_at"))

    @cached_property
    def unbind_key(self) -> sa.Delete:
        return sa.delete(self.b).where(self._pk())

    @cached_property
    def unbind_all(self) -> sa.Delete:
        return sa.delete(self.b).where(self._pk(key=False))

    @cached_property
    def bound(self) -> sa.Select[Any]:
        """An exchange's bindings, live or expired (a publish deletes the expired ones)."""
        b = self.b
        live = sa.or_(b.c.expires_at.is_(None), b.c.expires_at >= now_ms())
        return (
            sa.select(b.c.binding_key, b.c.topic, b.c.ttl_ms, live.label("live"))
            .where(b.c.exchange == sa.bindparam("in_exchange"))
            .order_by(b.c.binding_key, b.c.topic)  # key order: concurrent deletes never cross
        )

    @cached_property
    def expired(self) -> sa.Delete:
        """One binding, if it has expired (a renewal since it was read keeps it)."""
        return sa.delete(self.b).where(self._pk(), self.b.c.expires_at < now_ms())

    def listed(self, exchange: bool) -> sa.Select[Any]:
        b = self.b
        query = sa.select(b.c.exchange, b.c.binding_key, b.c.topic, b.c.ttl_ms, b.c.expires_at)
        query = query.where(sa.or_(b.c.expires_at.is_(None), b.c.expires_at >= now_ms()))
        if exchange:
            query = query.where(b.c.exchange == sa.bindparam("in_exchange"))
        return query.order_by(b.c.exchange, b.c.binding_key, b.c.topic)

    @cached_property
    def listed_one(self) -> sa.Select[Any]:
        return self.listed(True)

    @cached_property
    def listed_every(self) -> sa.Select[Any]:
        return self.listed(False)


class Exchanges:
    """The binding statements and the steps built on them (run inside a queue's writes)."""

    def __init__(self, strategy: Strategy, tables: Tables) -> None:
        self._s = ExchangeStatements(strategy, tables)

    def bind(
        self,
        ex: Executor,
        exchange: str,
        topic: str,
        *,
        key: str,
        ttl_ms: int | None,
        lifetime_ms: int | None,
    ) -> None:
        """Bind ``topic``, or set its binding's ttl and lifetime (one statement)."""
        values = {
            "in_exchange": exchange,
            "in_key": key,
            "in_topic": topic,
            "ttl_ms": ttl_ms,
            "lifetime_ms": lifetime_ms,
        }
        ex.count(self._s.bind, values)

    def prune(self, ex: Executor, exchange: str) -> int:
        """Delete the exchange's expired bindings: read without locks, then each deleted by
        its key (in key order, so concurrent prunes and publishes never wait on each other
        in a cycle), unless it was renewed since. Run it in a transaction of its own, or
        none: how many were deleted."""
        rows = ex.rows(self._s.bound, {"in_exchange": exchange})
        return sum(
            self._delete_expired(ex, exchange, text_value(k), text_value(t))
            for k, t, _, live in rows
            if not live
        )

    def _delete_expired(self, ex: Executor, exchange: str, key: str, topic: str) -> int:
        values = {"in_exchange": exchange, "in_key": key, "in_topic": topic}
        return ex.count(self._s.expired, values)

    def unbind(self, ex: Executor, exchange: str, topic: str, key: str | None) -> int:
        """Remove ``topic``'s binding under ``key`` (None: under every key); how many."""
        values = {"in_exchange": exchange, "in_topic": topic}
        if key is None:
            return ex.count(self._s.unbind_all, values)
        return ex.count(self._s.unbind_key, {**values, "in_key": key})

    def targets(self, ex: Executor, exchange: str, key: str | None) -> list[Target]:
        """The topics a publish to ``exchange`` (with ``key``, or to all) puts a copy into,
        in name order, each once; expired bindings met on the way are deleted."""
        found: dict[str, int | None] = {}
        for raw_key, raw_topic, ttl_ms, live in ex.rows(self._s.bound, {"in_exchange": exchange}):
            bound_key, topic = text_value(raw_key), text_value(raw_topic)
            if not live:
                self._delete_expired(ex, exchange, bound_key, topic)
            elif key is None or bound_key == key:
                ttl = None if ttl_ms is None else int(ttl_ms)
                if topic in found:  # bound under two keys: one copy, the shorter ttl
                    ttl = _shorter(found[topic], ttl)
                found[topic] = ttl
        return [Target(topic, found[topic]) for topic in sorted(found)]

    def bindings(self, ex: Executor, exchange: str | None) -> list[Binding]:
        """The live bindings (of one exchange, or of every one), by exchange, key and topic."""
        if exchange is None:
            rows: Sequence[Any] = ex.rows(self._s.listed_every, {})
        else:
            rows = ex.rows(self._s.listed_one, {"in_exchange": exchange})
        return [_binding(row) for row in rows]


def _shorter(a: int | None, b: int | None) -> int | None:
    """The shorter of two ttls (None: no limit)."""
    if a is None:
        return b
    return a if b is None else min(a, b)


def _binding(row: Sequence[Any]) -> Binding:
    exchange, key, topic, ttl_ms, expires_at = row
    return Binding(
        exchange=text_value(exchange),
        key=text_value(key),
        topic=text_value(topic),
        ttl=None if ttl_ms is None else int(ttl_ms) / 1000,
        expires_at=None if expires_at is None else from_ms(int(expires_at)),
    )


__all__ = ["Binding", "ExchangeStatements", "Exchanges", "Target"]
