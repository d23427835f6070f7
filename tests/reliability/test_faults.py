"""T4, T7, T11 and T14: killed sessions, the database clock, locks, and secrets."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import date, datetime
from typing import Any

import pytest
import sqlalchemy as sa

import squeal.session
from squeal import DatabaseBusy, DatabaseError, Queue
from squeal.executor import add_statement_listener, remove_statement_listener
from tests import needs

#: Per database: the server-side id of a connection, how to kill one, and what is in flight.
SESSION_ID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
KILL = {"postgresql": "SELECT pg_terminate_backend({})", "mysql": "KILL CONNECTION {}"}
#: What a user sets so that a lock held elsewhere fails fast instead of waiting forever.
LOCK_TIMEOUT_SQL = {
    "postgresql": "SET lock_timeout = 500",
    "mysql": "SET SESSION innodb_lock_wait_timeout=1, lock_wait_timeout=1",
}


@pytest.fixture
def tracked(db: str, db_url: str) -> Iterator[tuple[sa.Engine, list[int]]]:
    """An engine that records the server id of every connection it opens."""
    eng = sa.create_engine(db_url)
    ids: list[int] = []

    @sa.event.listens_for(eng, "connect")
    def record(dbapi: Any, _record: Any) -> None:
        cursor = dbapi.cursor()
        cursor.execute(LOCK_TIMEOUT_SQL[db])
        cursor.execute(SESSION_ID[db])
        ids.append(int(cursor.fetchone()[0]))
        cursor.close()
        dbapi.commit()  # a driver not in autocommit opened a transaction; end it

    yield eng, ids
    eng.dispose()


def _kill(engine: sa.Engine, db: str, ids: list[int]) -> None:
    """Kill every recorded session that still exists (closed ones are skipped)."""
    for i in ids:
        with engine.connect() as conn, suppress(sa.exc.DBAPIError):
            conn.exec_driver_sql(KILL[db].format(i))
            conn.commit()


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql", "mysql")
def test_server_killing_squeals_connections_between_operations_loses_nothing(
    db: str,
    engine: sa.Engine,
    make_queue: Callable[..., Queue],
    tracked: tuple[sa.Engine, list[int]],
) -> None:
    """T4: pg_terminate_backend / KILL CONNECTION of idle squeal connections; next call works."""
    eng, ids = tracked
    q = Queue(eng, prefix=make_queue().prefix)
    put = [q.put(f"m{i}".encode()) for i in range(20)]
    first = q.get()
    assert first is not None
    _kill(engine, db, list(ids))
    first.ack()  # on a new connection
    got = [first.id]
    _kill(engine, db, list(ids))
    while (m := q.get()) is not None:
        m.ack()
        got.append(m.id)
    assert sorted(got) == sorted(put)
    q.close()


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql", "mysql")
def test_server_killing_the_connection_inside_a_claim_is_retried_and_loses_nothing(
    db: str,
    engine: sa.Engine,
    make_queue: Callable[..., Queue],
    tracked: tuple[sa.Engine, list[int]],
) -> None:
    """T4: the session is killed just before a claim statement; the claim is retried."""
    eng, ids = tracked
    q = Queue(eng, prefix=make_queue().prefix, visibility_timeout=30)
    put = [q.put(f"m{i}".encode()) for i in range(10)]
    q.size()
    armed = [True]

    def kill_once(sql: str, params: Any) -> None:
        if armed[0] and "lease_token" in sql:
            armed[0] = False
            _kill(engine, db, list(ids))
            time.sleep(0.2)  # let the termination land before the statement is sent

    add_statement_listener(kill_once)
    try:
        m = q.get()
    finally:
        remove_statement_listener(kill_once)
    assert not armed[0], "the claim was never intercepted"
    assert m is not None
    m.ack()
    got = [m.id]
    while (m := q.get()) is not None:
        m.ack()
        got.append(m.id)
    assert sorted(got) == sorted(put), "a killed claim left a message leased or lost"
    q.close()


HOLD_WRITE_LOCK = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
c.execute("DELETE FROM " + sys.argv[2])
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.dialects("sqlite")
def test_sqlite_process_killed_while_holding_the_write_lock_does_not_block_others(
    engine: sa.Engine, queue: Queue
) -> None:
    """T4 on SQLite: SIGKILL the process holding BEGIN IMMEDIATE; a waiting put completes."""
    first = queue.put(b"before")
    path = engine.url.database
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(path), f"{queue.prefix}_message"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    result: list[object] = []
    writer = threading.Thread(target=lambda: result.append(queue.put(b"during")))
    writer.start()
    time.sleep(0.5)
    holder.kill()
    holder.wait()
    holder.stdout.close()
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert len(result) == 1
    assert isinstance(result[0], int)
    assert [m.payload for m in queue.get_many(limit=10)] == [b"before", b"during"]
    assert first is not None


def _looks_like_now(value: object) -> bool:
    now = time.time()
    if isinstance(value, (datetime, date)):
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return any(abs(value - now * scale) < 7 * 86400 * scale for scale in (1, 1000, 1e6))
    return False


def _values(params: Any) -> list[object]:
    if params is None:
        return []
    if isinstance(params, dict):
        return list(params.values())
    if isinstance(params, (list, tuple)):
        return (
            [v for p in params for v in _values(p)]
            if params and isinstance(params[0], (list, tuple, dict))
            else list(params)
        )
    return [params]


def test_no_client_clock_value_is_bound_into_claim_ack_nack_or_touch(queue: Queue) -> None:
    """T7: every lease, delay and backoff is computed from the database's clock."""
    seen: list[tuple[str, object]] = []

    def listen(sql: str, params: Any) -> None:
        seen.extend((sql, v) for v in _values(params) if _looks_like_now(v))

    queue.put_many([b"a", b"b", b"c"])
    queue.put(b"d", delay=0.01)
    add_statement_listener(listen)
    try:
        a = queue.get(visibility_timeout=5)
        assert a is not None
        a.touch(10)
        a.nack()
        b = queue.get()
        assert b is not None
        b.nack(delay=0.5)
        c = queue.get()
        assert c is not None
        c.release()
        for m in queue.get_many(limit=10):
            m.ack()
        queue.put(b"e", delay=1.0)
    finally:
        remove_statement_listener(listen)
    assert seen == []


FAKETIME_CONSUMER = """
import sys, sqlalchemy as sa
from squeal import Queue
q = Queue(sa.create_engine(sys.argv[1]), prefix=sys.argv[2], visibility_timeout=30)
m = q.get()
print(m.payload.decode() if m else "none", flush=True)
m.ack()
print("none" if q.get() is None else "again", flush=True)
"""


@pytest.mark.dialects("postgresql", "mysql")  # SQLite's clock is the client's own clock
@pytest.mark.parametrize("shift", ["-3d", "+3d"])
def test_consumer_with_a_skewed_clock_behaves_the_same(
    db: str, db_url: str, queue: Queue, shift: str
) -> None:
    """T7: a consumer whose clock is days off (faketime) claims what is due, nothing else."""
    faketime = needs.tool("faketime", env="SQUEAL_TEST_FAKETIME", package="faketime")
    queue.put(b"due")
    queue.put(b"later", delay=60)
    out = subprocess.run(
        [faketime, "-f", shift, sys.executable, "-c", FAKETIME_CONSUMER, db_url, queue.prefix],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out == ["due", "none"]
    assert queue.stats()["default"].total == 1


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql", "mysql")
def test_ack_of_a_row_locked_elsewhere_raises_database_busy_instead_of_hanging(
    engine: sa.Engine,
    make_queue: Callable[..., Queue],
    tracked: tuple[sa.Engine, list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """T11: another session holds the message's row lock; with a lock timeout set, squeal
    retries until RETRY_SECONDS and then raises DatabaseBusy."""
    monkeypatch.setattr(squeal.session, "RETRY_SECONDS", 2.0)
    eng, _ = tracked
    q = Queue(eng, prefix=make_queue().prefix)
    mid = q.put(b"x")
    m = q.get()
    assert m is not None
    table = f"{q.prefix}_message"
    with engine.connect() as blocker:
        blocker.exec_driver_sql(f"SELECT id FROM {table} WHERE id = {mid} FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(DatabaseBusy) as caught:
            m.ack()
        assert time.monotonic() - started < 30
        blocker.rollback()
    assert caught.value.retryable
    again = q.get(visibility_timeout=1)  # the lease is still m's: nothing ready
    assert again is None
    q.close()


IN_TRANSACTION = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE state LIKE 'idle in transaction%%'",
    "mysql": "SELECT trx_mysql_thread_id FROM information_schema.innodb_trx",
}


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql", "mysql")
def test_no_connection_of_squeals_is_left_in_a_transaction_while_a_handler_runs(
    db: str,
    engine: sa.Engine,
    make_queue: Callable[..., Queue],
    tracked: tuple[sa.Engine, list[int]],
) -> None:
    """T11: between get and ack none of squeal's sessions holds an open transaction."""
    eng, ids = tracked
    q = Queue(eng, prefix=make_queue().prefix)
    q.put_many([b"a", b"b"])
    held = q.get_many(limit=2)
    assert len(held) == 2
    assert ids
    with engine.connect() as conn:
        open_ = {int(i) for i in conn.exec_driver_sql(IN_TRANSACTION[db]).scalars()}
    assert open_.isdisjoint(ids)
    q.ack_many(held)
    q.close()


MARKER = "Zq7SECRETmarker"


def _texts(error: BaseException) -> list[str]:
    out: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out += [str(e), repr(e)]
        todo += [e.__cause__, e.__context__]
    return out


@pytest.mark.every_driver
def test_payload_marker_never_appears_in_logs_or_in_a_failed_operations_error(
    engine: sa.Engine, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    """T14: DEBUG logs of squeal and SQLAlchemy, and the error of a put whose table vanished."""
    caplog.set_level(logging.DEBUG, logger="squeal")
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    payload = f"card {MARKER}".encode()
    queue.put(payload, dedup_key=f"k-{MARKER}")
    m = queue.get()
    assert m is not None
    assert m.payload == payload
    m.ack()
    queue.put(b"other")
    with engine.begin() as conn:  # the table goes away behind squeal's back
        conn.exec_driver_sql(f"ALTER TABLE {queue.prefix}_message RENAME TO {queue.prefix}_moved")
    try:
        with pytest.raises(DatabaseError) as caught:
            queue.put(payload, dedup_key=f"k2-{MARKER}")
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"ALTER TABLE {queue.prefix}_moved RENAME TO {queue.prefix}_message"
            )
    assert all(MARKER not in t for t in _texts(caught.value))
    assert all(MARKER not in r.getMessage() for r in caplog.records)


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql", "mysql")
def test_password_marker_never_appears_in_an_authentication_error(
    db_url: str, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    """T14: a wrong password containing the marker: the DatabaseError text never shows it."""
    caplog.set_level(logging.DEBUG, logger="squeal")
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    url = sa.make_url(db_url).set(username="squeal_nobody", password=f"pw-{MARKER}")
    eng = sa.create_engine(url)
    try:
        with pytest.raises(DatabaseError) as caught:
            Queue(eng, prefix=queue.prefix).put(b"x")
    finally:
        eng.dispose()
    texts = _texts(caught.value)
    assert all(MARKER not in t for t in texts), texts
    assert all(MARKER not in r.getMessage() for r in caplog.records)


@pytest.mark.dialects("sqlite", "mysql")  # PostgreSQL inserts any batch in one statement
def test_put_many_sent_row_by_row_is_one_transaction_across_a_retried_error(
    db: str, make_queue: Callable[..., Queue]
) -> None:
    """Without INSERT ... RETURNING (MySQL 8), put_many sends one INSERT per message; a
    transient error on a later one retries the batch in one transaction: each payload once."""
    q = make_queue()
    dialect = q.engine.dialect
    dialect.insert_returning = False  # what MySQL 8's dialect says (MariaDB and SQLite have it)
    dbapi = dialect.loaded_dbapi
    transient = (
        dbapi.OperationalError("database is locked")
        if db == "sqlite"
        else dbapi.OperationalError(1213, "Deadlock found when trying to get lock")
    )
    inserts: list[str] = []

    def fail_second_insert(sql: str, params: Any) -> None:
        if sql.lstrip().startswith("INSERT"):
            inserts.append(sql)
            if len(inserts) == 2:
                raise transient

    add_statement_listener(fail_second_insert)
    try:
        ids = q.put_many([b"a", b"b", b"c"], "t")
    finally:
        remove_statement_listener(fail_second_insert)
    assert len(inserts) == 5, "expected 2 INSERTs, the error, then 3 on the retry"
    stored = []
    while (m := q.get("t")) is not None:
        stored.append((m.id, m.payload))
        m.ack()
    assert stored == list(zip(ids, [b"a", b"b", b"c"], strict=True))
