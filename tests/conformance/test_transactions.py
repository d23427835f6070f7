"""connection=: put, put_many and ack inside the caller's transaction (outbox, exactly-once)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import squeal
from squeal import Message, Queue


def _claim(q: Queue, topic: str = "default", **kwargs: Any) -> Message:
    msg = q.get(topic, **kwargs)
    assert msg is not None, f"expected a message in topic {topic!r}"
    return msg


def _leased(q: Queue, topic: str) -> int:
    stats = q.stats().get(topic)
    return 0 if stats is None else stats.leased


@pytest.fixture
def effects(engine: sa.Engine, prefix: str) -> Iterator[sa.Table]:
    """An application table on the queue's database, one row per handled message."""
    table = sa.Table(
        f"{prefix}_app_effect",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("msg_id", sa.BigInteger, nullable=False),
        sa.Column("note", sa.String(50), nullable=False),
    )
    table.create(engine)
    yield table
    table.drop(engine)


def _effect_rows(engine: sa.Engine, table: sa.Table) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.msg_id, table.c.note).order_by(table.c.id))
        return [(r.msg_id, r.note) for r in rows]


def _handle(engine: sa.Engine, effects: sa.Table, msg: Message, note: str) -> None:
    """A handler whose write and ack commit together."""
    with engine.begin() as conn:
        conn.execute(sa.insert(effects).values(msg_id=msg.id, note=note))
        msg.ack(connection=conn)


# -- put --------------------------------------------------------------------------------------


def test_put_in_a_committed_transaction_appears_only_at_commit(
    queue: Queue, engine: sa.Engine
) -> None:
    with engine.begin() as conn:
        msg_id = queue.put(b"x", "t", connection=conn)
        assert isinstance(msg_id, int)
        assert queue.size("t") == 0
    assert queue.size("t") == 1
    assert _claim(queue, "t").id == msg_id


def test_put_in_a_rolled_back_transaction_is_dropped(queue: Queue, engine: sa.Engine) -> None:
    with engine.connect() as conn:
        queue.put(b"x", "t", connection=conn)
        conn.rollback()
    assert queue.stats() == {}
    assert queue.get("t") is None


def test_put_with_connect_and_explicit_commit_is_kept(queue: Queue, engine: sa.Engine) -> None:
    with engine.connect() as conn:
        queue.put(b"x", "t", connection=conn)
        conn.commit()
    assert _claim(queue, "t").payload == b"x"


def test_put_many_in_a_rolled_back_transaction_drops_every_message(
    queue: Queue, engine: sa.Engine
) -> None:
    with engine.connect() as conn:
        ids = queue.put_many([b"a", b"b", b"c"], "t", connection=conn)
        assert len(ids) == 3
        conn.rollback()
    assert queue.stats() == {}


def test_put_many_in_a_committed_transaction_keeps_every_message(
    queue: Queue, engine: sa.Engine
) -> None:
    with engine.begin() as conn:
        ids = queue.put_many([b"a", b"b", b"c"], "t", connection=conn)
        assert queue.size("t") == 0
    assert [m.id for m in queue.get_many("t", 10)] == ids


def test_put_commits_and_rolls_back_with_the_applications_own_write(
    queue: Queue, engine: sa.Engine, effects: sa.Table
) -> None:
    with engine.connect() as conn:
        conn.execute(sa.insert(effects).values(msg_id=0, note="dropped"))
        queue.put(b"dropped", "outbox", connection=conn)
        conn.rollback()
        conn.execute(sa.insert(effects).values(msg_id=0, note="kept"))
        queue.put(b"kept", "outbox", connection=conn)
        conn.commit()
    assert _effect_rows(engine, effects) == [(0, "kept")]
    assert [m.payload for m in queue.get_many("outbox", 10)] == [b"kept"]


def test_dedup_sees_a_put_made_earlier_in_the_same_transaction(
    queue: Queue, engine: sa.Engine
) -> None:
    with engine.begin() as conn:
        assert isinstance(queue.put(b"a", "t", dedup_key="k", connection=conn), int)
        assert queue.put(b"b", "t", dedup_key="k", connection=conn) is None
    assert queue.size("t") == 1


# -- ack --------------------------------------------------------------------------------------


def test_ack_in_a_rolled_back_transaction_leaves_the_message_leased(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put(b"x", "t")
    msg = _claim(queue, "t")
    with engine.connect() as conn:
        msg.ack(connection=conn)
        conn.rollback()
    assert queue.get("t") is None
    assert _leased(queue, "t") == 1


def test_ack_in_a_committed_transaction_deletes_the_message(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put(b"x", "t")
    msg = _claim(queue, "t")
    with engine.begin() as conn:
        msg.ack(connection=conn)
    assert (msg.settled, msg.pending) == (False, True)  # squeal did not see the commit
    assert queue.stats() == {}


def test_ack_many_in_a_rolled_back_transaction_leaves_every_message_leased(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put_many([b"a", b"b"], "t")
    msgs = queue.get_many("t", 5)
    with engine.connect() as conn:
        queue.ack_many(msgs, connection=conn)
        conn.rollback()
    assert _leased(queue, "t") == 2


def test_ack_many_in_a_committed_transaction_deletes_every_message(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put_many([b"a", b"b"], "t")
    msgs = queue.get_many("t", 5)
    with engine.begin() as conn:
        queue.ack_many(msgs, connection=conn)
    assert queue.stats() == {}


def test_ack_with_the_handlers_write_commits_both(
    queue: Queue, engine: sa.Engine, effects: sa.Table
) -> None:
    queue.put(b"x", "t")
    msg = _claim(queue, "t")
    with engine.begin() as conn:
        conn.execute(sa.insert(effects).values(msg_id=msg.id, note="done"))
        msg.ack(connection=conn)
    assert _effect_rows(engine, effects) == [(msg.id, "done")]
    assert queue.stats() == {}


def test_handler_failing_after_its_ack_undoes_both_and_the_retry_has_one_effect(
    queue: Queue, engine: sa.Engine, effects: sa.Table
) -> None:
    queue.put(b"x", "t")
    first = _claim(queue, "t")

    def failing_handler() -> None:
        with engine.begin() as conn:
            conn.execute(sa.insert(effects).values(msg_id=first.id, note="first"))
            first.ack(connection=conn)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        failing_handler()
    assert _effect_rows(engine, effects) == []
    assert _leased(queue, "t") == 1
    first.touch(visibility_timeout=0.2)  # its consumer dies: the lease runs out
    time.sleep(0.3)
    retry = _claim(queue, "t")
    assert (retry.id, retry.attempts) == (first.id, 2)
    with engine.begin() as conn:
        conn.execute(sa.insert(effects).values(msg_id=retry.id, note="retry"))
        retry.ack(connection=conn)
    assert _effect_rows(engine, effects) == [(first.id, "retry")]
    assert queue.stats() == {}


def test_stale_consumers_ack_raises_before_commit_so_only_one_effect_exists(
    queue: Queue, engine: sa.Engine, effects: sa.Table
) -> None:
    queue.put(b"x", "t")
    zombie = _claim(queue, "t", visibility_timeout=0.2)
    time.sleep(0.3)
    holder = _claim(queue, "t", visibility_timeout=30)
    with pytest.raises(squeal.LeaseLost):
        _handle(engine, effects, zombie, "zombie")
    assert _effect_rows(engine, effects) == []
    assert _leased(queue, "t") == 1  # the new holder's lease is intact
    _handle(engine, effects, holder, "holder")
    with pytest.raises(squeal.LeaseLost):
        _handle(engine, effects, zombie, "zombie")
    assert _effect_rows(engine, effects) == [(holder.id, "holder")]
    assert queue.stats() == {}


def test_ack_with_connection_of_an_expired_unclaimed_lease_succeeds(
    queue: Queue, engine: sa.Engine, effects: sa.Table
) -> None:
    queue.put(b"x", "t")
    msg = _claim(queue, "t", visibility_timeout=0.2)
    time.sleep(0.3)
    with engine.begin() as conn:
        conn.execute(sa.insert(effects).values(msg_id=msg.id, note="late"))
        msg.ack(connection=conn)
    assert _effect_rows(engine, effects) == [(msg.id, "late")]
    assert queue.stats() == {}


# -- settles pending in the caller's transaction ------------------------------------------------


@pytest.mark.parametrize("settle", ["ack", "nack", "release"])
def test_a_settle_in_a_committed_transaction_is_pending_then_a_second_settle_is_refused(
    queue: Queue, engine: sa.Engine, settle: str
) -> None:
    queue.put(b"x", "t")
    msg = _claim(queue, "t")
    with engine.begin() as conn:
        getattr(msg, settle)(connection=conn)
        assert msg.pending
    assert not msg.settled
    with pytest.raises(squeal.AlreadySettled, match="committed"):
        msg.nack()
    assert (msg.settled, msg.pending) == (True, False)
    with pytest.raises(squeal.AlreadySettled):
        msg.ack()
    assert _leased(queue, "t") == 0


@pytest.mark.parametrize("settle", ["ack", "nack", "release"])
def test_a_settle_in_a_rolled_back_transaction_leaves_the_handle_free_to_settle_again(
    queue: Queue, engine: sa.Engine, settle: str
) -> None:
    queue.put(b"x", "t")
    msg = _claim(queue, "t")
    with engine.connect() as conn:
        getattr(msg, settle)(connection=conn)
        conn.rollback()
    assert msg.pending
    msg.release()  # the database still holds this handle's lease: it works
    assert msg.settled
    again = _claim(queue, "t")
    assert again.id == msg.id
    again.ack()


def test_leaving_a_with_block_does_not_nack_a_message_acked_in_an_open_transaction(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put(b"x", "t")
    with engine.connect() as conn:
        with _claim(queue, "t") as msg:
            msg.ack(connection=conn)
        # A nack here would have waited for the row lock of this very transaction.
        assert msg.pending
        conn.commit()
    assert queue.stats() == {}
    with pytest.raises(squeal.AlreadySettled):
        msg.release()


def test_nack_many_in_the_callers_transaction_commits_with_it(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put_many([b"a", b"b"], "t")
    msgs = queue.get_many("t", 5)
    with engine.connect() as conn:
        queue.nack_many(msgs, delay=0, connection=conn)
        conn.rollback()
    assert _leased(queue, "t") == 2
    with engine.begin() as conn:
        queue.nack_many(msgs, delay=0, connection=conn)
    assert _leased(queue, "t") == 0
    assert sorted(m.id for m in queue.get_many("t", 5)) == sorted(m.id for m in msgs)


def test_put_through_another_engine_is_the_queues_first_call(
    queue: Queue, db_url: str, engine: sa.Engine
) -> None:
    # The queue's own engine has never connected (its dialect knows no server version yet):
    # the server check reads the caller's connection.
    fresh = Queue(sa.create_engine(db_url), prefix=queue.prefix)
    try:
        with engine.begin() as conn:
            fresh.put(b"outbox", "t", connection=conn)
        got = _claim(queue, "t")
        assert got.payload == b"outbox"
        with engine.begin() as conn:
            got.ack(connection=conn)
    finally:
        fresh.close()
        fresh.engine.dispose()
