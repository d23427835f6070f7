"""Statements squeal compiles once and binds itself (squeal/prepared.py), on every database."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
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


def _table() -> sa.Table:
    return sa.Table(
        "styles",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(20)),
        sa.Column("data", sa.LargeBinary),
        sa.Column("n", sa.Integer, server_default="7"),
    )


def _statements(t: sa.Table) -> tuple[sa.Executable, sa.Executable]:
    insert = sa.insert(t).values(
        id=sa.bindparam("id"), name=sa.bindparam("name"), data=sa.bindparam("data")
    )
    select = (
        sa.select(t.c.id, t.c.name, t.c.data, sa.literal_column("'5%'"))
        .where(t.c.id.in_(sa.bindparam("ids", expanding=True)), t.c.n == sa.bindparam("n"))
        .order_by(t.c.id)
    )
    return insert, select


@pytest.mark.dialects("sqlite")
@pytest.mark.parametrize("paramstyle", ["qmark", "numeric", "named", "format", "pyformat"])
def test_every_paramstyle_binds_what_its_driver_expects(paramstyle: str, tmp_path: Path) -> None:
    """sqlite3 takes qmark, numeric (:1) and named (:p1); format styles are compiled for a
    dialect that declares them and checked against the same rows through qmark."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'styles.db'}", paramstyle=paramstyle)
    t = _table()
    t.metadata.create_all(engine)
    insert, select = _statements(t)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        payloads = {i: bytes([i, 0, 255, 37]) for i in range(1, 6)}
        for i, data in payloads.items():
            sql, params = Prepared(insert, engine.dialect).bind(
                {"id": i, "name": f"n{i}", "data": data}
            )
            if paramstyle in ("format", "pyformat"):  # sqlite3 cannot run them: check the text
                assert sql.count("%s") == 3
                assert list(params) == [i, f"n{i}", data]
                cursor.execute(sql.replace("%s", "?"), params)
            else:
                cursor.execute(sql, _for_sqlite3(paramstyle, params))
        prepared = Prepared(select, engine.dialect)
        for ids in ([2, 4], [1, 2, 3, 5], [3]):
            sql, params = prepared.bind({"ids": ids, "n": 7})
            if paramstyle == "numeric":
                assert f":{len(ids) + 1}" in sql
                assert "%" not in sql.replace("'5%'", "")
            if paramstyle == "named":
                assert isinstance(params, dict)
                assert params[f"p{len(ids) + 1}"] == 7
            if paramstyle in ("format", "pyformat"):
                sql = sql.replace("%%", "%").replace("%s", "?")
            cursor.execute(sql, _for_sqlite3(paramstyle, params))
            assert cursor.fetchall() == [(i, f"n{i}", payloads[i], "5%") for i in ids]
    finally:
        raw.close()
        engine.dispose()


def _for_sqlite3(paramstyle: str, params: Any) -> Any:
    """sqlite3 (Python 3.12+) wants ``:1`` markers bound by name: the sequence as a mapping."""
    if paramstyle == "numeric":
        return {str(i): value for i, value in enumerate(params, 1)}
    return params


@pytest.mark.dialects("postgresql")
def test_numeric_dollar_statements_run_on_postgresql(db_url: str, prefix: str) -> None:
    """asyncpg's ``$1`` style, run through pg8000's own $-numbered entry point."""
    pg8000 = pytest.importorskip("pg8000")
    url = sa.make_url(db_url)
    pg_engine = sa.create_engine(url.set(drivername="postgresql+pg8000"))
    dialect = copy.copy(pg_engine.dialect)
    pg_engine.dispose()
    dialect.paramstyle = "numeric_dollar"
    t = _table()
    t.name = f"{prefix}_styles"
    conn = pg8000.connect(
        user=url.username,
        password=url.password,
        host=url.host,
        port=url.port or 5432,
        database=url.database,
    )
    try:
        conn.autocommit = True
        conn.run(
            f"CREATE TABLE {t.name} (id int primary key, name text, data bytea, n int default 7)"
        )
        insert, select = _statements(t)
        for i in range(1, 5):
            sql, params = Prepared(insert, dialect).bind(
                {"id": i, "name": f"n{i}", "data": b"%\x00"}
            )
            assert "$3" in sql
            conn.execute_unnamed(sql, vals=params)
        sql, params = Prepared(select, dialect).bind({"ids": [1, 3, 4], "n": 7})
        assert "$1, $2, $3" in sql
        assert "$4" in sql
        assert list(params) == [1, 3, 4, 7]
        rows = conn.execute_unnamed(sql, vals=params).rows
        assert [tuple(r) for r in rows] == [(i, f"n{i}", b"%\x00", "5%") for i in (1, 3, 4)]
    finally:
        conn.run(f"DROP TABLE IF EXISTS {t.name}")
        conn.close()


def test_an_unknown_paramstyle_is_refused_by_name() -> None:
    dialect = copy.copy(sa.create_engine("sqlite://").dialect)
    dialect.paramstyle = "mystery"
    with pytest.raises(NotImplementedError, match="mystery"):
        Prepared(sa.select(sa.bindparam("x")), dialect)


@pytest.mark.dialects("sqlite")
@pytest.mark.parametrize("paramstyle", ["numeric", "named"])
def test_a_literal_percent_s_is_not_taken_for_a_marker(paramstyle: str) -> None:
    """A literal '%s' in the statement's text is not a marker in the numbered styles.

    (SQLAlchemy's SQLite compiler also writes '%s' itself, in EXTRACT(epoch): that case is not
    handled yet; no SQLite driver uses these styles.)
    """
    engine = sa.create_engine("sqlite://", paramstyle=paramstyle)
    try:
        statement = sa.select(
            sa.func.length(sa.bindparam("when", type_=sa.String())),
            sa.literal_column("'%s %%s'"),
            sa.literal_column("'100%'"),
            sa.bindparam("n", type_=sa.Integer()),
        )
        sql, params = Prepared(statement, engine.dialect).bind(
            {"when": "1970-01-02 00:00:00", "n": 7}
        )
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(sql, _for_sqlite3(paramstyle, params))
            assert tuple(cursor.fetchone()) == (19, "%s %%s", "100%", 7)
        finally:
            raw.close()
    finally:
        engine.dispose()
