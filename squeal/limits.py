"""Limits per topic: leases at once (concurrency) and claims per window (rate), enforced in
the database (docs/flow_control.md).

A limited topic is claimed under a lock on its row in ``{prefix}_topic``, in one transaction:
lock the row (``SELECT ... FOR UPDATE``; on SQLite, the write lock every claim takes), count
the topic's live leases if it has a concurrency limit, refill its token bucket by the database
clock if it has a rate, claim at most what both allow with the claim statements every topic
uses, and spend the tokens claimed. Every claim of the topic, in every process, takes its
turn on that row, and each statement after the lock sees what the claims before it committed
(READ COMMITTED reads a fresh snapshot per statement): no race over-claims.

An unlimited topic keeps its one-statement claim. That statement claims nothing from a topic
with a limit unless the claim holds the lock (``squeal.dialects.base.admitted``), so a limit
binds every claim that starts after it commits. A queue object learns that a topic is limited
when a claim of it comes back empty and the topic's row says so (one primary-key read, on
empty claims only), and claims it the limited way until its row says otherwise.

The rate is a token bucket: it holds at most ``rate`` tokens and gains ``rate`` per ``per``
seconds; each message claimed takes one. A topic idle for a window can therefore take one
burst of ``rate`` at once, and in any span of ``t`` seconds at most ``rate * (1 + t / per)``
messages are claimed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from squeal.clock import now_ms
from squeal.executor import Executor
from squeal.flow import FlowStatements
from squeal.schema import WAITING, Tables, in_state, text_value


class _Unset:
    """The default of :meth:`squeal.Queue.set_limit`'s arguments: leave that limit as it is."""

    def __repr__(self) -> str:
        return "UNSET"


#: An argument of ``set_limit`` that was not given.
UNSET: Any = _Unset()


@dataclass(frozen=True)
class Limit:
    """The limits of one topic (see :meth:`squeal.Queue.set_limit`); None: no such limit."""

    topic: str
    #: At most this many messages of the topic leased at once.
    concurrency: int | None
    #: At most ``rate`` messages claimed per ``per`` seconds (plus one burst of ``rate``).
    rate: int | None
    per: float | None


@dataclass(frozen=True)
class Allowance:
    """What one limited claim may take, and the token bucket it read."""

    #: Messages the claim may lease now.
    allowed: int
    #: The bucket's tokens at ``now`` (None: no rate limit).
    tokens: float | None
    #: The database's clock when the row was locked (epoch ms).
    now: int


class LimitStatements:
    """The statements of one prefix's limits (built once per queue)."""

    def __init__(self, flow: FlowStatements, tables: Tables) -> None:
        self.flow = flow
        self.t = tables.topic
        self.m = tables.message

    @cached_property
    def _locked(self) -> sa.Select[Any]:
        """The topic's limits and bucket, its row locked until the transaction ends."""
        c = self.t.c
        return (
            sa.select(c.concurrency, c.rate, c.per_ms, c.tokens, c.refilled_at, now_ms())
            .where(c.topic == sa.bindparam("in_topic"))
            .with_for_update()
        )

    @cached_property
    def _limited(self) -> sa.Select[Any]:
        c = self.t.c
        return sa.select(c.topic).where(
            c.topic == sa.bindparam("in_topic"),
            sa.or_(c.concurrency.is_not(None), c.rate.is_not(None)),
        )

    @cached_property
    def _leased(self) -> sa.Select[Any]:
        """The topic's messages leased now (lease not run out) through the due index."""
        m = self.m
        return (
            sa.select(sa.func.count())
            .select_from(m)
            .where(
                m.c.topic == sa.bindparam("in_topic"),
                m.c.visible_at > now_ms(),
                in_state(m.c.state, WAITING),
                m.c.lease_token.is_not(None),
            )
        )

    @cached_property
    def _spend(self) -> sa.Update:
        c = self.t.c
        return (
            sa.update(self.t)
            .where(c.topic == sa.bindparam("in_topic"))
            .values(
                tokens=sa.bindparam("tokens", type_=sa.Float()),
                refilled_at=sa.bindparam("refilled_at", type_=sa.BigInteger()),
            )
        )

    @cached_property
    def _store(self) -> sa.Update:
        c = self.t.c
        return (
            sa.update(self.t)
            .where(c.topic == sa.bindparam("in_topic"))
            .values(
                concurrency=sa.bindparam("concurrency", type_=sa.Integer()),
                rate=sa.bindparam("rate", type_=sa.Integer()),
                per_ms=sa.bindparam("per_ms", type_=sa.BigInteger()),
                tokens=sa.bindparam("tokens", type_=sa.Float()),
                refilled_at=sa.bindparam("refilled_at", type_=sa.BigInteger()),
                updated_at=now_ms(),
            )
        )

    @cached_property
    def _listed(self) -> sa.Select[Any]:
        c = self.t.c
        return (
            sa.select(c.topic, c.concurrency, c.rate, c.per_ms)
            .where(sa.or_(c.concurrency.is_not(None), c.rate.is_not(None)))
            .order_by(c.topic)
        )

    # -- claiming -------------------------------------------------------------------------------

    def limited(self, ex: Executor, topic: str) -> bool:
        """Whether ``topic`` has a limit now (a plain read)."""
        return bool(ex.rows(self._limited, {"in_topic": topic}))

    def allowance(self, ex: Executor, topic: str, wanted: int) -> Allowance | None:
        """Lock ``topic``'s row and say how many of ``wanted`` messages a claim may take now;
        None if the topic has no limit (any more). Run in the claim's transaction."""
        found = ex.rows(self._locked, {"in_topic": topic})
        if not found:
            return None
        concurrency, rate, per_ms, tokens, refilled_at, now = found[0]
        if concurrency is None and rate is None:
            return None
        now = int(now)
        allowed = wanted
        if concurrency is not None:
            leased = int(ex.rows(self._leased, {"in_topic": topic})[0][0])
            allowed = min(allowed, int(concurrency) - leased)
        bucket: float | None = None
        if rate is not None:
            bucket = refill(float(tokens or 0.0), int(refilled_at or now), now, rate, per_ms)
            # A hair over a whole token counts as that token (float sums of refills).
            allowed = min(allowed, math.floor(bucket + 1e-9))
        return Allowance(max(allowed, 0), bucket, now)

    def spend(self, ex: Executor, topic: str, allowance: Allowance, claimed: int) -> None:
        """Take ``claimed`` tokens from the bucket ``allowance`` read (nothing without a rate
        or a claim: the bucket keeps refilling from when it was last spent)."""
        if allowance.tokens is None or claimed == 0:
            return
        params = {"in_topic": topic, "tokens": allowance.tokens - claimed}
        ex.count(self._spend, {**params, "refilled_at": allowance.now})

    # -- setting and listing --------------------------------------------------------------------

    def set(self, ex: Executor, topic: str, changes: dict[str, Any]) -> Limit:
        """Apply ``changes`` (concurrency, rate, per_ms; a missing key stays as it is) to
        ``topic``'s limits and return them. Run in a transaction."""
        self.flow.ensure(ex, topic)
        concurrency, rate, per_ms, tokens, refilled_at, now = ex.rows(
            self._locked, {"in_topic": topic}
        )[0]
        old_rate = (rate, per_ms)
        concurrency = changes.get("concurrency", concurrency)
        rate = changes.get("rate", rate)
        per_ms = changes.get("per_ms", per_ms) if rate is not None else None
        if rate is not None and per_ms is None:
            per_ms = 1000
        if rate is None:
            tokens = refilled_at = None
        elif (rate, per_ms) != old_rate:
            # A new rate starts with a full bucket.
            tokens, refilled_at = float(rate), int(now)
        params = {"concurrency": concurrency, "rate": rate, "per_ms": per_ms, "tokens": tokens}
        ex.count(self._store, {"in_topic": topic, "refilled_at": refilled_at, **params})
        return _limit(topic, concurrency, rate, per_ms)

    def listed(self, ex: Executor) -> list[Limit]:
        """Every topic with a limit, in name order."""
        return [_limit(text_value(r[0]), r[1], r[2], r[3]) for r in ex.rows(self._listed, {})]


def refill(tokens: float, refilled_at: int, now: int, rate: int, per_ms: int) -> float:
    """The bucket's tokens at ``now`` (ms): ``rate`` per ``per_ms`` since ``refilled_at``, at
    most ``rate`` (a clock that went back adds nothing)."""
    gained = max(0, now - refilled_at) * rate / per_ms
    return min(float(rate), tokens + gained)


def _limit(topic: str, concurrency: Any, rate: Any, per_ms: Any) -> Limit:
    return Limit(
        topic,
        None if concurrency is None else int(concurrency),
        None if rate is None else int(rate),
        None if per_ms is None else int(per_ms) / 1000,
    )


__all__ = ["UNSET", "Allowance", "Limit", "LimitStatements", "refill"]
