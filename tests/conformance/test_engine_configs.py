"""Engines configured the way teams configure them: every one runs the queue's whole life.

One scenario (create, put and claim in every form, settles, the outbox and a settle in the
caller's transaction, dedup, a topic lock, inspection, destroy), run on each engine
configuration of ``CONFIGS`` on every database: squeal's own connections set what they need
(autocommit, isolation) whatever the engine says, and a caller's transaction follows the
engine's settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from squeal import Queue

#: Engine options as applications pass them to ``create_engine``.
CONFIGS: dict[str, dict[str, Any]] = {
    "autocommit": {"isolation_level": "AUTOCOMMIT"},
    "serializable": {"isolation_level": "SERIALIZABLE"},
    "nullpool": {"poolclass": sa.pool.NullPool},
    "pre_ping": {"pool_pre_ping": True},
}


@pytest.fixture(params=sorted(CONFIGS))
def configured(request: pytest.FixtureRequest, db_url: str) -> Iterator[sa.Engine]:
    """An engine on the database under test with one of the configurations."""
    engine = sa.create_engine(db_url, **CONFIGS[request.param])
    yield engine
    engine.dispose()


def test_the_whole_queue_works_on_the_engine_as_configured(
    configured: sa.Engine, prefix: str
) -> None:
    q = Queue(configured, prefix=prefix)
    q.create()
    try:
        _exercise(q, configured)
    finally:
        q.destroy()
        q.close()


def _exercise(q: Queue, engine: sa.Engine) -> None:
    q.put(b"one", "t", priority=1)
    q.put_many([b"two", b"three"], "t")
    assert q.put(b"dup", "t", dedup_key="k") is not None
    assert q.put(b"dup", "t", dedup_key="k") is None
    assert q.size("t") == 4

    first = q.get("t")
    assert first is not None
    assert first.payload == b"one"
    first.nack(delay=0)
    batch = q.get_many("t", 10)
    assert sorted(m.payload for m in batch) == [b"dup", b"one", b"three", b"two"]
    batch[0].release()
    q.ack_many(batch[1:])
    again = q.get("t")
    assert again is not None
    again.ack()
    assert q.stats() == {}

    # The outbox and a settle in the caller's transaction, on the configured engine.
    with engine.connect() as conn:
        q.put(b"outbox", "o", connection=conn)
        conn.commit()
    msg = q.get("o")
    assert msg is not None
    assert msg.payload == b"outbox"
    with engine.connect() as conn:
        msg.ack(connection=conn)
        conn.commit()
    assert msg.pending
    assert q.stats() == {}

    q.put(b"locked", "l")
    lock = q.acquire_topic()
    assert lock is not None
    assert lock.topic == "l"
    got = q.get("l")
    assert got is not None
    got.ack()
    lock.release()
    assert q.topics() == {}
