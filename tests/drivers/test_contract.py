"""The driver contract: every public operation once, on every database and every driver.

The conformance suite states the semantics once per database, on its primary driver; this
module proves each driver runs them: parameters and rows in its own shapes, payloads byte for
byte, its error codes classified, its session set up, its notifications delivered.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from squeal import Limit, Queue, migrate
from squeal.connections import Link
from squeal.waiting import AsyncListener, Listener
from tests.race import joined

pytestmark = pytest.mark.every_driver

#: All 256 byte values, an empty payload, and random bytes.
PAYLOADS = [bytes(range(256)), b"", os.urandom(70_000), b"\x00", "caf\u00e9 \u2603".encode()]


@contextmanager
def squeals_link(queue: Queue) -> Iterator[Link]:
    """One of the connections squeal keeps for ``queue`` (set up as squeal sets it up)."""
    stash = queue._session._stash
    assert stash is not None, "this driver runs through SQLAlchemy, not squeal's connections"
    link = stash.take()
    try:
        yield link
    finally:
        stash.give_back(link)


def _scalar(link: Link, sql: str) -> Any:
    link.cursor.execute(sql)
    return link.cursor.fetchall()[0][0]


def test_every_operation_runs_on_this_driver(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(failure_base_delay=0.0, max_attempts=2)
    one = q.put(b"one", "ops", priority=5)
    ids = q.put_many([b"two", b"three", b"four"], "ops", dedup_keys=["k2", None, "k4"])
    assert q.put(b"again", "ops", dedup_key="k2") is None
    assert one is not None
    assert None not in ids
    assert [m.id for m in q.peek("ops", 10)] == [one, *ids]
    first = q.get("ops")
    assert first is not None
    assert (first.id, first.payload, first.priority) == (one, b"one", 5)
    first.touch()
    first.release()
    batch = q.get_many("ops", 10)
    assert [m.id for m in batch] == [one, *ids]
    q.touch_many(batch)
    q.ack_many(batch[:2])
    q.nack_many(batch[2:])
    again = q.get_many("ops", 10)
    assert sorted(m.id for m in again) == sorted(ids[1:])
    for m in again:
        m.nack()
    assert sorted(d.id for d in q.dead("ops")) == sorted(ids[1:])
    assert q.stats()["ops"].dead == 2
    assert q.redrive("ops") == 2
    assert q.size("ops") == 2
    assert q.purge("ops") == 2
    assert q.topics() == {}


def test_pauses_limits_and_schedules_run_on_this_driver(make_queue: Callable[..., Queue]) -> None:
    q = make_queue()
    q.put_many([b"a", b"b", b"c"], "flow")
    q.pause("flow")
    assert q.get_many("flow", 3) == []
    q.resume("flow")
    assert q.set_limit("flow", concurrency=2, rate=10) == Limit("flow", 2, 10, 1.0)
    assert q.limits() == [Limit("flow", 2, 10, 1.0)]
    got = q.get_many("flow", 3)  # under the limit: lock, count, claim, spend
    assert len(got) == 2
    q.ack_many(got)
    q.set_limit("flow", concurrency=None, rate=None)
    last = q.get_many("flow", 3)
    assert len(last) == 1
    q.ack_many(last)
    q.schedule("tick", topic="flow", every=3600)
    assert q.run_schedules() in (0, 1)
    assert [s.name for s in q.schedules()] == ["tick"]
    assert q.unschedule("tick")


def test_payloads_round_trip_byte_for_byte(make_queue: Callable[..., Queue]) -> None:
    q = make_queue()
    for payload in PAYLOADS:
        q.put(payload, "single")
    q.put_many(PAYLOADS, "batch")
    for topic in ("single", "batch"):
        assert [m.payload for m in q.peek(topic, 10)] == PAYLOADS
        got = q.get_many(topic, 10)
        assert [m.payload for m in got] == PAYLOADS
        assert all(type(m.payload) is bytes for m in got)
        q.ack_many(got)
    q.put(PAYLOADS[0], "one")
    msg = q.get("one")
    assert msg is not None
    assert type(msg.payload) is bytes
    assert msg.payload == PAYLOADS[0]
    msg.ack()


def test_dedup_window_topic_locks_and_the_callers_transaction(
    make_queue: Callable[..., Queue], engine: sa.Engine
) -> None:
    q = make_queue(dedup_window=60.0)
    with engine.begin() as conn:
        inside = q.put(b"outbox", "orders", dedup_key="o1", connection=conn)
    with engine.connect() as conn:
        assert q.put(b"rolled back", "orders", connection=conn) is not None
        conn.rollback()
    assert inside is not None
    msg = q.get("orders")
    assert msg is not None
    assert msg.id == inside
    with engine.begin() as conn:
        msg.ack(connection=conn)
    assert q.put(b"outbox", "orders", dedup_key="o1") is None  # the window outlives the ack
    q.put(b"a", "group-a")
    lock = q.acquire_topic()
    assert lock is not None
    assert lock.topic == "group-a"
    assert q.acquire_topic() is None
    lock.touch()
    lock.release()


def test_migrations_run_on_this_driver(engine: sa.Engine, prefix: str) -> None:
    migrate.upgrade(engine, prefix=prefix)
    try:
        assert migrate.current(engine, prefix=prefix) == migrate.head()
    finally:
        migrate.downgrade(engine, prefix=prefix, revision="base", drop_version_table=True)
    assert migrate.current(engine, prefix=prefix) is None


def test_a_wait_is_woken_by_a_put(make_queue: Callable[..., Queue], db: str) -> None:
    q = make_queue()
    producer = make_queue()
    waiter = q._waiting()
    if db == "postgresql":
        # Every PostgreSQL driver listens; a put's notification ends the wait, not a timeout.
        assert isinstance(waiter, Listener | AsyncListener)
        mark = waiter.mark()
        producer.put(b"wake", "w")
        waiter.wait(mark, 30.0)
        assert waiter.mark() != mark, "no notification arrived within 30 s"
        q.ack_many(q.get_many("w", 5))
    late = threading.Timer(0.2, producer.put, args=(b"late", "w"))
    late.start()
    got = q.get_many("w", 5, wait=30.0)
    joined([late])
    assert [m.payload for m in got] == [b"late"]
    q.ack_many(got)
    producer.close()


SESSION_CHECKS: dict[str, list[tuple[str, Any]]] = {
    "postgresql": [("SHOW lock_timeout", "5s"), ("SHOW enable_seqscan", "off")],
    "mysql": [
        ("SELECT @@autocommit", 1),
        ("SELECT @@session.innodb_lock_wait_timeout", 5),
    ],
    "sqlite": [],
}


def test_squeals_connections_are_set_up_on_this_driver(queue: Queue, db: str) -> None:
    queue.size()
    with squeals_link(queue) as link:
        for sql, expected in SESSION_CHECKS[db]:
            found = _scalar(link, sql)
            assert str(found) == str(expected), sql
        if db == "postgresql":  # autocommit: every statement is its own transaction
            assert _scalar(link, "SELECT now()") != _scalar(link, "SELECT now()")
        if db == "mysql":  # MariaDB < 11.1 names it tx_isolation, MySQL 8 transaction_isolation
            link.cursor.execute(
                "SHOW SESSION VARIABLES WHERE Variable_name IN "
                "('tx_isolation', 'transaction_isolation')"
            )
            assert [row[1] for row in link.cursor.fetchall()] == ["READ-COMMITTED"]
        if db == "sqlite":
            assert link.dbapi.isolation_level is None
            _scalar(link, "SELECT 1")
            sqlite = getattr(link.dbapi, "driver_connection", link.dbapi)  # aiosqlite's own
            assert not sqlite.in_transaction


LOCK_WAIT = {
    "postgresql": "SET lock_timeout = '100ms'",
    "mysql": "SET SESSION innodb_lock_wait_timeout = 1",
    "sqlite": "PRAGMA busy_timeout = 50",
}
BEGIN = {"postgresql": "BEGIN", "mysql": "START TRANSACTION", "sqlite": "BEGIN IMMEDIATE"}


def test_this_drivers_errors_are_classified(queue: Queue, engine: sa.Engine, db: str) -> None:
    msg_id = queue.put(b"locked", "errors")
    table = queue._tables.message.name
    session = queue._session
    with engine.connect() as holder, squeals_link(queue) as link:
        holder.exec_driver_sql(BEGIN[db] if db == "sqlite" else "SELECT 1")
        if db != "sqlite":
            holder.exec_driver_sql(f"SELECT id FROM {table} WHERE id = {msg_id} FOR UPDATE")
        link.cursor.execute(LOCK_WAIT[db])
        driver_error = session._driver_errors()
        update = f"UPDATE {table} SET attempts = 1 WHERE id = {msg_id}"
        with pytest.raises(driver_error) as waited:  # noqa: PT012 (BEGIN itself waits on SQLite)
            link.cursor.execute(BEGIN[db])
            link.cursor.execute(update)
        with pytest.raises(driver_error) as wrong:
            link.cursor.execute("SELEC nonsense")
        holder.rollback()
        session.driver.rollback(link.dbapi, link.cursor)
        link.cursor.execute(LOCK_WAIT[db].replace("100ms", "5s").replace("= 1", "= 5"))
        if db == "sqlite":
            link.cursor.execute("PRAGMA busy_timeout = 5000")
    assert session._retryable(waited.value), repr(waited.value)
    assert not session._disconnected(waited.value)
    assert not session._retryable(wrong.value)
    assert not session._disconnected(wrong.value)


@pytest.mark.dialects("postgresql")
def test_statements_run_after_the_session_drops_its_prepared_statements(
    make_queue: Callable[..., Queue],
) -> None:
    """A pooler or DISCARD ALL may drop what a driver prepared server-side: nothing fails.

    (psycopg 3 and squeal's psycopg2 adapter prepare statements they run repeatedly.)
    """
    q = make_queue()
    for round_ in range(3):
        for i in range(6):  # past every driver's preparation threshold
            q.put(f"{round_}.{i}".encode(), "prep")
            m = q.get("prep")
            assert m is not None
            m.ack()
        with squeals_link(q) as link:
            link.cursor.execute("DEALLOCATE ALL")
    # A message after the drop is stored and delivered like any other.
    q.put(b"after", "prep")
    m = q.get("prep")
    assert m is not None
    assert m.payload == b"after"
    m.ack()
    assert q.size("prep") == 0
