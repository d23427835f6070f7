"""Statements squeal compiles once and binds itself (squeal/prepared.py), on every database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from squeal import Queue
from squeal.executor import MAX_PREPARED
from squeal.prepared import Prepared


def _run(engine: sa.Engine, statement: sa.Executable, values: dict[str, Any]) -> tuple[Any, ...]:
    sql, params = Prepared(statement, engine.dialect).bind(values)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(sql, params)
        return tuple(cursor.fetchone())
    finally:
        raw.close()


def test_percent_signs_odd_names_and_repeated_names_bind_in_order(engine: sa.Engine) -> None:
    statement = sa.select(
        sa.literal_column("'100%(x)s %%'"),
        sa.bindparam("a.b", type_=sa.Integer()),
        sa.bindparam("c-d", type_=sa.String()),
        sa.bindparam("a.b", type_=sa.Integer()) + sa.bindparam("e", type_=sa.Integer()),
    )
    values = {"a.b": 7, "c-d": "text", "e": 35, "unused": object()}
    row = _run(engine, statement, values)
    assert row == ("100%(x)s %%", 7, "text", 42)
    assert values == {"a.b": 7, "c-d": "text", "e": 35, "unused": values["unused"]}


def test_put_many_of_many_batch_sizes_keeps_the_statement_cache_bounded(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue()
    sizes = range(2, MAX_PREPARED + 12)
    for n in sizes:
        assert len(q.put_many([b"x"] * n, "sizes")) == n
    assert len(q._session._prepared) <= MAX_PREPARED
    assert q.size("sizes") == sum(sizes)
