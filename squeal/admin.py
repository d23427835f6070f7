"""Statements for looking at and repairing a queue: counts, dead letters, redrive, purge."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from squeal.clock import now_ms
from squeal.dialects.base import death_reason, expired, unexpired
from squeal.dialects.base import dies as dies_when_due
from squeal.schema import DEAD, READY, WAITING, Tables, in_state


class AdminStatements:
    """Read and repair statements for one prefix (built once per queue)."""

    def __init__(self, tables: Tables) -> None:
        m = self.m = tables.message
        now = now_ms()
        due = sa.and_(in_state(m.c.state, WAITING), m.c.visible_at <= now)
        not_due = sa.and_(in_state(m.c.state, WAITING), m.c.visible_at > now)
        dies = dies_when_due(m)
        # A due WAITING row is what the next claim will make of it: READY, or DEAD; a READY
        # row whose ttl ran out is dead (the next sweep makes it so).
        ready_row = in_state(m.c.state, READY)
        self.ready = sa.or_(sa.and_(ready_row, unexpired(m)), sa.and_(due, sa.not_(dies)))
        self.dead = sa.or_(
            in_state(m.c.state, DEAD),
            sa.and_(due, dies),
            sa.and_(ready_row, sa.not_(unexpired(m))),
        )
        delayed = sa.and_(not_due, m.c.lease_token.is_(None))
        leased = sa.and_(not_due, m.c.lease_token.is_not(None))

        def tally(condition: sa.ColumnElement[bool], name: str) -> sa.Label[Any]:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0).label(name)

        self.stats = (
            sa.select(
                m.c.topic,
                tally(self.ready, "ready"),
                tally(delayed, "delayed"),
                tally(leased, "leased"),
                tally(self.dead, "dead"),
                sa.func.min(sa.case((self.ready, m.c.enqueued_at))).label("oldest"),
                now.label("now"),
            )
            .group_by(m.c.topic)
            .order_by(m.c.topic)
        )
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
