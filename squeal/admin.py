"""Statements for looking at and repairing a queue: counts, dead letters, redrive, purge."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from squeal.clock import now_ms
from squeal.dialects.base import death_reason, expired, unexpired
from squeal.dialects.base import dies as dies_when_due
from squeal.executor import Executor
from squeal.schema import DEAD, READY, WAITING, Tables, in_state

#: The states a message is stored in, each a range of the claim index under its topic.
STORED = (READY, WAITING, DEAD)


class AdminStatements:
    """Read and repair statements for one prefix (built once per queue).

    ``topics`` lists the topics that have messages, one index probe each (the database's own
    loose index scan: :meth:`squeal.dialects.base.Strategy.topic_scan`).
    """

    def __init__(self, tables: Tables, topics: sa.Select[Any]) -> None:
        m = self.m = tables.message
        now = now_ms()
        due = sa.and_(in_state(m.c.state, WAITING), m.c.visible_at <= now)
        not_due = sa.and_(in_state(m.c.state, WAITING), m.c.visible_at > now)
        dies = dies_when_due(m)
        # A due WAITING row is what the next claim will make of it: READY, or DEAD; a READY
        # row whose ttl ran out is dead (the next sweep makes it so).
        ready_row = in_state(m.c.state, READY)
        #: The two kinds of ready row: stored READY within its ttl, and WAITING that is due
        #: and will not die (what the next claim makes READY).
        self.ready_kinds = (sa.and_(ready_row, unexpired(m)), sa.and_(due, sa.not_(dies)))
        self.ready = sa.or_(*self.ready_kinds)
        self.dead = sa.or_(
            in_state(m.c.state, DEAD),
            sa.and_(due, dies),
            sa.and_(ready_row, sa.not_(unexpired(m))),
        )
        delayed = sa.and_(not_due, m.c.lease_token.is_(None))
        leased = sa.and_(not_due, m.c.lease_token.is_not(None))

        def tally(condition: sa.ColumnElement[bool], name: str) -> sa.Label[Any]:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0).label(name)

        tallies = (
            tally(self.ready, "ready"),
            tally(delayed, "delayed"),
            tally(leased, "leased"),
            tally(self.dead, "dead"),
            sa.func.min(sa.case((self.ready, m.c.enqueued_at))).label("oldest"),
        )
        #: Every message counted: one pass over the table.
        self.stats = (
            sa.select(m.c.topic, *tallies, now.label("now")).group_by(m.c.topic).order_by(m.c.topic)
        )
        self._within(topics, tallies)
        self.size = (
            sa.select(sa.func.count())
            .select_from(m)
            .where(m.c.topic == sa.bindparam("in_topic"), self.ready)
        )
        stored = sa.select(
            m.c.id,
            m.c.topic,
            m.c.payload,
            m.c.neg_priority,
            m.c.attempts,
            m.c.enqueued_at,
            m.c.headers,
        ).limit(sa.bindparam("limit"))
        topic = m.c.topic == sa.bindparam("in_topic")
        among = m.c.id.in_(sa.bindparam("ids", expanding=True))
        # A row the next claim will find dead has not recorded it yet: say what it will record.
        pending = sa.not_(in_state(m.c.state, DEAD))
        died_at = sa.case(
            (pending, sa.case((expired(m), m.c.expires_at), else_=m.c.visible_at)),
            else_=m.c.died_at,
        )
        reason = sa.case((pending, death_reason(m)), else_=m.c.dead_reason)
        #: Dead messages, oldest first, with when and why they died and the last nack's
        #: error; the next ready ones in delivery order (nothing leased).
        self.dead_list = (
            stored.add_columns(died_at, reason, m.c.last_error)
            .where(topic, self.dead)
            .order_by(m.c.id)
        )
        self.peek = stored.where(topic, self.ready).order_by(m.c.neg_priority, m.c.id)
        self.dead_ids = (
            sa.select(m.c.id)
            .where(m.c.topic == sa.bindparam("in_topic"), self.dead)
            .order_by(m.c.id)
            .limit(sa.bindparam("limit"))
        )
        #: The same, among the given ids only (``redrive(topic, ids=...)``).
        self.dead_ids_among = self.dead_ids.where(among)
        self.redrive = (
            sa.update(m)
            .where(m.c.id.in_(sa.bindparam("ids", expanding=True)))
            # Due now, not READY: their old claim keys lie below the queue objects' floors, and
            # sweeps find them in the due index (squeal.claim_scope).
            .values(
                state=WAITING,
                attempts=0,
                lease_token=None,
                visible_at=now,
                expires_at=None,
                died_at=None,
                dead_reason=None,
            )
        )
        self.purge_all = sa.delete(m).where(m.c.topic == sa.bindparam("in_topic"))
        #: Purges of the given ids only (``purge(topic, ids=...)``): all of them, or the dead.
        self.purge_ids = self.purge_all.where(among)
        #: One message by id unless a live lease holds it (an expired lease does not).
        self.delete_one = sa.delete(m).where(
            m.c.id == sa.bindparam("msg_id", type_=sa.BigInteger()), sa.not_(leased)
        )
        self.purge_dead = sa.delete(m).where(m.c.topic == sa.bindparam("in_topic"), self.dead)
        self.purge_dead_ids = self.purge_dead.where(among)

    def _within(self, topics: sa.Select[Any], tallies: tuple[sa.Label[Any], ...]) -> None:
        """The two statements of a bounded count (``Queue.stats(limit=...)``).

        Each topic's stored states are ranges of the claim index. :attr:`ranges` probes, per
        topic and state, for the entry just past ``:count_limit`` (``OFFSET``: at most that
        many index entries read); :attr:`short_tallies` then counts, row by row, only the
        ranges the probe found short (``:short``: their topics). A range it found long
        is not read: it counts as the limit, a lower bound.
        """
        m = self.m
        listed = topics.subquery("listed")

        def in_range(topic: sa.ColumnElement[Any], state: int) -> sa.Select[Any]:
            return (
                sa.select(m.c.id)
                .where(m.c.topic == topic, in_state(m.c.state, state))
                .order_by(m.c.neg_priority, m.c.id)
                .limit(1)
            )

        def first(state: int) -> sa.ScalarSelect[Any]:
            rows = in_range(listed.c.topic, state)
            # READY's first entry: when the next ready message was enqueued.
            return (
                rows.with_only_columns(m.c.enqueued_at) if state == READY else rows
            ).scalar_subquery()

        limit = sa.bindparam("count_limit", type_=sa.Integer())
        past = (in_range(listed.c.topic, state).offset(limit).scalar_subquery() for state in STORED)
        #: Per topic and stored state: the range's first entry (None: empty; for READY, when
        #: that message was enqueued), then the entry past the limit (None: the range is
        #: short); then the database clock. (An empty range's second probe finds nothing at
        #: once: skipping it by CASE costs more where the database inlines the first.)
        self.ranges = sa.select(
            listed.c.topic, *(first(state) for state in STORED), *past, now_ms()
        )

        # A DEAD row is dead whatever else it holds: the index alone counts those.
        dead_only = (*(sa.literal(0) for _ in range(3)), sa.func.count(), sa.null())

        def short(state: int) -> sa.Select[Any]:
            topics = sa.bindparam("short", expanding=True, type_=m.c.topic.type)
            return (
                sa.select(m.c.topic, *(dead_only if state == DEAD else tallies))
                .where(in_state(m.c.state, state), m.c.topic.in_(topics))
                .group_by(m.c.topic)
            )

        #: Per stored state, the tallies of :attr:`stats` over its short ranges.
        self.short_tallies = {state: short(state) for state in STORED}

    def counted_within(self, ex: Executor, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Rows like :attr:`stats`' plus ``estimated``, reading at most about
        ``params["count_limit"]`` index entries per topic and stored state."""
        limit = params["count_limit"]
        ranges = ex.rows(self.ranges, params)
        found: dict[Any, list[Any]] = {}
        for i, state in enumerate(STORED):
            # Ranges with a first entry and none past the limit: count them row by row.
            short = [row[0] for row in ranges if row[1 + i] is not None and row[4 + i] is None]
            if not short:
                continue
            for topic, *tallies in ex.rows(self.short_tallies[state], {**params, "short": short}):
                into = found.setdefault(topic, [0, 0, 0, 0, None])
                for j in range(4):
                    into[j] += int(tallies[j])
                if tallies[4] is not None:
                    into[4] = tallies[4] if into[4] is None else min(into[4], tallies[4])
        rows = []
        for topic, next_ready, _, _, past_ready, past_waiting, past_dead, now in ranges:
            ready, delayed, leased, dead, oldest = found.get(topic, [0, 0, 0, 0, None])
            if past_ready is not None:  # the next READY message; a due WAITING one may be older
                ready += limit
                oldest = next_ready if oldest is None else min(oldest, next_ready)
            if past_waiting is not None:
                delayed += limit
            if past_dead is not None:
                dead += limit
            long = any(past is not None for past in (past_ready, past_waiting, past_dead))
            rows.append((topic, ready, delayed, leased, dead, oldest, now, long))
        return rows
