"""Every claim is an ordered walk of the claim index, on fresh and on analysed tables.

A plan that sorts the topic's backlog (or locks every row it sorts, on InnoDB) makes each claim
cost grow with the backlog. These tests read the database's own plan for the exact SQL a claim
sends, with leased messages ahead of the ready ones in priority order: a sweep (which also walks
the due index) and a claim from the queue object's floor (squeal.claim_scope).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from squeal import Queue, claim_scope
from squeal.executor import add_statement_listener, remove_statement_listener

BACKLOG = 5_000


@pytest.fixture
def backlog_queue(queue: Queue) -> Queue:
    for start in range(0, BACKLOG, 1000):
        queue.put_many([b"x" * 64] * 1000, "jobs", priority=start % 7)
    queue.put_many([b"hot"] * 500, "jobs", priority=100)
    queue.get_many("jobs", 500)  # 500 leased messages ahead of everything else
    return queue


@pytest.fixture(params=["sweep", "floor", "floored_sweep"])
def scope(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which claim: a fresh queue object's first (a sweep from the start), one from the floor,
    or a sweep from the floor."""
    if request.param == "floor":
        monkeypatch.setattr(claim_scope, "SWEEP_SECONDS", 3600.0)
    if request.param == "floored_sweep":
        monkeypatch.setattr(claim_scope, "SWEEP_SECONDS", 0.0)
    return str(request.param)


def _claim_statements(queue: Queue, scope: str) -> list[tuple[str, Any]]:
    """The statements (with their parameters) that one get() sends in ``scope``."""
    sent: list[tuple[str, Any]] = []
    claimer = queue if scope != "sweep" else Queue(queue.engine, prefix=queue.prefix)

    def capture(statement: str, parameters: Any) -> None:
        sent.append((statement, tuple(parameters) if isinstance(parameters, list) else parameters))

    add_statement_listener(capture)
    try:
        assert claimer.get("jobs") is not None
    finally:
        remove_statement_listener(capture)
        if claimer is not queue:
            claimer.close()
    return sent


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


@pytest.mark.dialects("postgresql")
@pytest.mark.parametrize("analysed", [False, True], ids=["fresh", "analysed"])
def test_postgresql_claim_walks_the_claim_index_without_sorting_the_backlog(
    backlog_queue: Queue, analysed: bool, scope: str
) -> None:
    table = f"{backlog_queue.prefix}_message"
    if analysed:
        with backlog_queue.engine.connect() as conn:
            conn.exec_driver_sql(f"ANALYZE {table}")
            conn.commit()
    first = "WITH" if scope != "floor" else "UPDATE"
    (statement, params), *_ = [
        s for s in _claim_statements(backlog_queue, scope) if s[0].lstrip().startswith(first)
    ]
    with backlog_queue.engine.connect() as conn:
        for _ in range(8):  # past psycopg's prepare threshold, so generic plans count too
            plan = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params
            ).scalar_one()
        conn.rollback()
    nodes = list(_walk((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]))
    scans = [
        n for n in nodes if n.get("Relation Name") == table and n["Node Type"].endswith("Scan")
    ]
    by_index = {n.get("Index Name") for n in scans}
    assert f"{table}_claim_ix" in by_index, by_index
    assert (f"{table}_due_ix" in by_index) == (scope != "floor"), by_index
    for node in scans:
        assert node["Node Type"] != "Seq Scan", node
        assert node["Actual Rows"] <= 1, node
    claim_scans = [n for n in scans if n.get("Index Name") == f"{table}_claim_ix"]
    assert all(n["Node Type"] == "Index Scan" for n in claim_scans), claim_scans
    # The floor is where the walk starts (an index condition), not a filter on what it reads;
    # a sweep also walks the higher priorities than the floor's.
    conditions = sorted(n["Index Cond"] for n in claim_scans)
    assert any("ROW(neg_priority, id) >" in c for c in conditions), conditions
    assert any("neg_priority <" in c for c in conditions) == (scope != "floor"), conditions
    big_sorts = [n for n in nodes if n["Node Type"] == "Sort" and n.get("Actual Rows", 0) > 2]
    assert not big_sorts, big_sorts


@pytest.mark.dialects("mysql")
def test_mysql_claim_locks_in_index_order_without_filesort(
    backlog_queue: Queue, scope: str
) -> None:
    first = "(SELECT" if scope != "floor" else "SELECT"
    (statement, params), *_ = [
        s for s in _claim_statements(backlog_queue, scope) if s[0].lstrip().startswith(first)
    ]
    with backlog_queue.engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN " + statement, params).mappings().all()
        conn.rollback()
    table = f"{backlog_queue.prefix}_message"
    claim_ix, due_ix = f"{table}_claim_ix", f"{table}_due_ix"
    assert not any("filesort" in (row["Extra"] or "") for row in rows if row["table"] == table)
    # Every walk is an index range: the floor (and the sweep's bound) start it, not filter it.
    # Walks that may run out (from the start, the higher priorities, the due rows) are plain
    # reads in derived tables, not merged into the locking query, and what they find is locked
    # one row at a time through the primary key; only the walk from the floor locks as it goes.
    ours = [row for row in rows if row["table"] == table]
    assert all(
        row["type"] == "range" or (row["key"] == "PRIMARY" and row["type"] == "eq_ref")
        for row in ours
    ), rows
    locking = [r["key"] for r in ours if r["type"] == "range" and r["select_type"] != "DERIVED"]
    probes = sorted(r["key"] for r in ours if r["select_type"] == "DERIVED")
    assert locking == ([] if scope == "sweep" else [claim_ix]), rows
    assert probes == ([] if scope == "floor" else [claim_ix, due_ix]), rows
    by_key = [r for r in ours if r["key"] == "PRIMARY"]
    assert len(by_key) == len(probes), rows


@pytest.mark.dialects("sqlite")
def test_sqlite_claim_walks_the_claim_index_without_a_temp_sort(
    backlog_queue: Queue, scope: str
) -> None:
    table = f"{backlog_queue.prefix}_message"
    statements = [
        s for s in _claim_statements(backlog_queue, scope) if s[0].lstrip().startswith("UPDATE")
    ]
    with backlog_queue.engine.connect() as conn:
        plans = [
            " | ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + s, p))
            for s, p in statements
        ]
        conn.rollback()
    assert any(f"{table}_claim_ix" in plan for plan in plans), plans
    assert any(f"{table}_due_ix" in plan for plan in plans) == (scope != "floor"), plans
    assert not any("TEMP B-TREE" in plan for plan in plans), plans
