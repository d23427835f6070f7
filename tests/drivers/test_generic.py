"""A driver without an adapter runs through SQLAlchemy's public API: slower, still correct.

The adapter of the database's own driver is taken away for the test, so that the real driver
and server run squeal through :class:`squeal.drivers.Generic`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from squeal import Queue
from squeal.drivers import ADAPTERS, ASYNC_ADAPTERS, Generic
from squeal.waiting import Poller
from tests.race import joined


def test_a_driver_without_an_adapter_runs_every_operation_through_sqlalchemy(
    engine: sa.Engine,
    make_queue: Callable[..., Queue],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    adapters = ASYNC_ADAPTERS if engine.dialect.is_async else ADAPTERS
    monkeypatch.delitem(adapters, (engine.dialect.name, engine.dialect.driver))
    monkeypatch.setattr("squeal.drivers._generic_logged", set())
    caplog.set_level(logging.INFO, logger="squeal")
    q = make_queue(failure_base_delay=0.0, max_attempts=2, dedup_window=30.0)
    assert isinstance(q._session.driver, Generic)
    assert [r.getMessage() for r in caplog.records if "no adapter" in r.getMessage()]
    ids = q.put_many([b"\x00a", b"b", b"c"], "g", dedup_keys=["k", None, None])
    assert q.put(b"again", "g", dedup_key="k") is None
    with engine.begin() as conn:
        q.put(b"outbox", "g", connection=conn)
    first = q.get("g")
    assert first is not None
    assert (first.id, first.payload) == (ids[0], b"\x00a")
    first.touch()
    first.nack()
    batch = q.get_many("g", 10)
    assert sorted(m.payload for m in batch) == [b"\x00a", b"b", b"c", b"outbox"]
    q.ack_many(batch)
    assert q.stats() == {}
    assert isinstance(q._waiting(), Poller)  # no notifications: polling
    late = threading.Timer(0.2, q.put, args=(b"late", "w"))
    late.start()
    got = q.get("w", wait=30.0)
    joined([late])
    assert got is not None
    got.ack()
    q.put(b"x", "locked")
    lock = q.acquire_topic()
    assert lock is not None
    lock.release()
