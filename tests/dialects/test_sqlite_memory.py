"""An in-memory SQLite database: one shared connection, so squeal goes through the engine."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from squeal import Queue


@pytest.mark.dialects("sqlite")
@pytest.mark.parametrize("poolclass", [sa.pool.StaticPool, sa.pool.SingletonThreadPool])
def test_queue_on_an_in_memory_sqlite_database_works_end_to_end(
    db: str, poolclass: type[sa.pool.Pool]
) -> None:
    engine = sa.create_engine("sqlite://", poolclass=poolclass)
    queue = Queue(engine, visibility_timeout=30.0, max_attempts=1)
    queue.create()
    ids = queue.put_many([b"a", b"b"], "t")
    first = queue.get("t")
    assert first is not None
    assert (first.id, first.payload) == (ids[0], b"a")
    first.ack()
    second = queue.get("t")
    assert second is not None
    second.nack()
    assert [m.id for m in queue.dead("t")] == [ids[1]]
    assert queue.stats()["t"].dead == 1
    assert queue.size("t") == 0
    queue.close()
    engine.dispose()
