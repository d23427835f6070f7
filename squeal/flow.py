"""Flow control per topic: pause and resume (docs/flow_control.md).

A topic's row in ``{prefix}_topic`` records its state. The claim statements of every database
skip a paused topic themselves (``squeal.dialects.base.running``): the check is inside the
claim, never a filter in Python or a per-process cache, so a pause takes effect for every
consumer of every process with the next claim after it commits. So do the topic-lock
candidates (``acquire_topic``, the Buffer). Puts still land; ``size`` and ``topics`` count as
before; ``stats`` shows the state.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import sqlalchemy as sa

from squeal.clock import now_ms
from squeal.dialects.base import Strategy
from squeal.executor import Executor
from squeal.schema import Tables, in_state, text_value


class FlowStatements:
    """The statements of one prefix's topic table (built once per queue)."""

    def __init__(self, strategy: Strategy, tables: Tables) -> None:
        self.strategy = strategy
        self.t = tables.topic

    @cached_property
    def _ensure_row(self) -> sa.Executable:
        """The topic's row, inserted unpaused and unlimited unless it exists."""
        row = {"topic": sa.bindparam("in_topic"), "paused": 0, "updated_at": now_ms()}
        return self.strategy.insert_ignoring_conflicts(row, table=self.t)

    @cached_property
    def _set_paused(self) -> sa.Update:
        t = self.t
        return (
            sa.update(t)
            .where(t.c.topic == sa.bindparam("in_topic"))
            .values(paused=sa.bindparam("paused", type_=sa.SmallInteger()), updated_at=now_ms())
        )

    @cached_property
    def _paused(self) -> sa.Select[Any]:
        t = self.t
        return sa.select(t.c.topic).where(in_state(t.c.paused, 1)).order_by(t.c.topic)

    def ensure(self, ex: Executor, topic: str) -> None:
        """Give ``topic`` its row unless it has one."""
        ex.count(self._ensure_row, {"in_topic": topic})

    def pause(self, ex: Executor, topic: str) -> None:
        """Pause ``topic`` (two statements: run them in one transaction)."""
        self.ensure(ex, topic)
        ex.count(self._set_paused, {"in_topic": topic, "paused": 1})

    def resume(self, ex: Executor, topic: str) -> None:
        """Resume ``topic`` (nothing if it was not paused)."""
        ex.count(self._set_paused, {"in_topic": topic, "paused": 0})

    def paused(self, ex: Executor) -> list[str]:
        """The paused topics, in name order."""
        return [text_value(row[0]) for row in ex.rows(self._paused, {})]


__all__ = ["FlowStatements"]
