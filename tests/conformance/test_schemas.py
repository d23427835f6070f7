"""squeal's tables in a schema (MySQL/MariaDB: a database) of their own, chosen by ``schema=``
or by the engine's ``schema_translate_map``, honoured alike by migrations, queue operations,
outbox puts, topic locks, dedup and health. SQLite has no schemas: a clear error."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from squeal import Queue, SchemaMissing, ValidationError, cli, migrate
from squeal.dialects import bundle_for
from squeal.schema import SCHEMA_REVISION

pytestmark = pytest.mark.dialects("postgresql", "mysql")


@pytest.fixture
def schema(engine: sa.Engine, db: str) -> Iterator[str]:
    """A schema (a database, on MySQL/MariaDB) of this test's own, dropped afterwards."""
    name = f"s{secrets.token_hex(5)}"
    kind = "SCHEMA" if db == "postgresql" else "DATABASE"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE {kind} {name}")
    yield name
    cascade = " CASCADE" if db == "postgresql" else ""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP {kind} IF EXISTS {name}{cascade}")


def _tables(engine: sa.Engine, schema: str | None) -> set[str]:
    return set(sa.inspect(engine).get_table_names(schema=schema))


def test_a_queue_in_a_schema_keeps_all_of_its_work_there(
    engine: sa.Engine, schema: str, prefix: str
) -> None:
    q = Queue(engine, prefix=prefix, schema=schema, dedup_window=60)
    q.create()
    try:
        assert {f"{prefix}_message", f"{prefix}_alembic_version"} <= _tables(engine, schema)
        assert not {t for t in _tables(engine, None) if t.startswith(f"{prefix}_")}
        assert migrate.current(engine, prefix=prefix, schema=schema) == SCHEMA_REVISION
        assert migrate.current(engine, prefix=prefix) is None

        assert q.put(b"a", "t", dedup_key="k") is not None
        assert q.put(b"a", "t", dedup_key="k") is None  # the dedup window, in the schema
        with engine.begin() as conn:  # the outbox, through the caller's connection
            q.put(b"b", "t", connection=conn)
        lock = q.acquire_topic()
        assert lock is not None
        got = q.get_many("t", 5)
        assert sorted(m.payload for m in got) == [b"a", b"b"]
        with engine.begin() as conn:
            q.ack_many(got, connection=conn)
        lock.release()
        assert q.stats() == {}
        assert any(prefix in f.detail for f in q.health())

        # The default schema has no tables of this prefix, and the error says where it looked.
        elsewhere = Queue(engine, prefix=prefix)
        with pytest.raises(SchemaMissing, match=r"prefix '\w+' do not exist"):
            elsewhere.size("t")
        missing = Queue(engine, prefix=f"{prefix}x", schema=schema)
        with pytest.raises(SchemaMissing, match=rf"in schema '{schema}'.*--schema {schema}"):
            missing.size("t")
    finally:
        q.destroy()
        q.close()
    assert not {t for t in _tables(engine, schema) if t.startswith(f"{prefix}_")}


def test_schema_translate_map_is_honoured_by_migrations_queue_and_outbox(
    db_url: str, schema: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    mapped = sa.create_engine(db_url, execution_options={"schema_translate_map": {None: schema}})
    try:
        migrate.upgrade(mapped, prefix=prefix)  # what `squeal migrate` runs
        assert f"{prefix}_message" in _tables(mapped, schema)
        q = Queue(mapped, prefix=prefix)
        assert q.schema == schema
        with mapped.begin() as conn:  # the outbox through the user's mapped connection
            q.put(b"outbox", "t", connection=conn)
        msg = q.get("t")
        assert msg is not None
        assert msg.payload == b"outbox"
        msg.ack()
        q.close()
        assert (
            cli.main(
                ["migrate", "--url", db_url, "--prefix", prefix, "--schema", schema, "current"]
            )
            == 0
        )
        assert f"{SCHEMA_REVISION} (head)" in capsys.readouterr().out
        migrate.downgrade(mapped, prefix=prefix, drop_version_table=True)
        assert not {t for t in _tables(mapped, schema) if t.startswith(f"{prefix}_")}
    finally:
        mapped.dispose()


def test_two_schemas_with_one_prefix_neither_share_messages_nor_wake_nor_block_each_other(
    engine: sa.Engine, schema: str, prefix: str
) -> None:
    here = Queue(engine, prefix=prefix, schema=schema)
    there = Queue(engine, prefix=prefix)
    here.create()
    there.create()
    try:
        here.put(b"here", "t")
        assert there.get("t") is None
        got = here.get("t")
        assert got is not None
        got.ack()
        if here._strategy.wake_channel is not None:  # PostgreSQL: puts announce themselves
            assert here._strategy.wake_channel != there._strategy.wake_channel
        bundle = bundle_for(engine.dialect)
        assert bundle.migration_lock(prefix, schema).name != bundle.migration_lock(prefix).name
    finally:
        here.destroy()
        there.destroy()
        here.close()
        there.close()


@pytest.mark.dialects("sqlite")
def test_sqlite_has_no_schemas(engine: sa.Engine, prefix: str) -> None:
    with pytest.raises(ValidationError, match="SQLite has no schemas"):
        Queue(engine, prefix=prefix, schema="jobs")
    mapped = engine.execution_options(schema_translate_map={None: "jobs"})
    with pytest.raises(ValidationError, match="SQLite has no schemas"):
        migrate.upgrade(mapped, prefix=prefix)
