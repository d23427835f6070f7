"""Where a claim looks (squeal.claim_scope): a queue object starts its ready walk after the last
message it claimed and sweeps due messages now and then. Messages that become ready out of order
still join the claim order: at once for what this queue object did itself, within SWEEP_SECONDS
for what others did, within FULL_SWEEP_SECONDS for a delayed put that committed very late.

Each "busy topic" test claims one message every 0.1 s from a backlog that lasts four seconds,
longer than the interval it checks, however slow the machine: slowness only brings the next
sweep sooner.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from squeal import Message, Queue, claim_scope

BACKLOG = 40


def _claim(q: Queue, topic: str = "t") -> Message:
    msg = q.get(topic)
    assert msg is not None, f"expected a message in topic {topic!r}"
    return msg


def _busy(q: Queue) -> list[int | None]:
    """A backlog of plain messages, and one claim so that ``q`` has a floor after it."""
    ids = q.put_many([b"backlog"] * BACKLOG, "t")
    assert _claim(q).id == ids[0]
    return ids


def _claims_until(q: Queue, payload: bytes) -> None:
    """Claim one message every 0.1 s until ``payload`` comes, before the backlog runs out
    (after it, a claim comes back short and sweeps anyway)."""
    for _ in range(BACKLOG - 1):
        msg = _claim(q)
        if msg.payload == payload:
            return
        assert msg.payload == b"backlog"
        time.sleep(0.1)
    raise AssertionError(f"{payload!r} waited out a {BACKLOG}-message backlog")


def test_on_a_busy_topic_a_due_message_joins_within_the_sweep_interval(queue: Queue) -> None:
    _busy(queue)
    queue.put(b"due", "t", priority=5, delay=0.1)
    _claims_until(queue, b"due")


def test_a_claim_that_comes_back_short_also_takes_due_messages(queue: Queue) -> None:
    """A claim that skipped the due messages and found too few ready ones sweeps at once."""
    queue.put(b"ready-1", "t")
    due = queue.put(b"due", "t", delay=0.2)
    assert _claim(queue).payload == b"ready-1"
    ready = queue.put(b"ready-2", "t")
    time.sleep(0.3)
    assert [m.id for m in queue.get_many("t", 5)] == [due, ready]


def test_what_this_queue_object_does_out_of_order_is_claimed_next(queue: Queue) -> None:
    ids = _busy(queue)
    urgent = queue.put(b"urgent", "t", priority=5)
    assert _claim(queue).id == urgent
    second = _claim(queue)
    assert second.id == ids[1]
    second.release()
    assert _claim(queue).id == ids[1]
    third = _claim(queue)
    third.nack(delay=0)
    assert _claim(queue).id == third.id


def test_a_message_redriven_by_this_queue_object_is_claimed_next(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(max_attempts=1)
    doomed = q.put(b"doomed", "t")
    _claim(q).nack(delay=0)  # its last attempt: dead
    ids = _busy(q)
    assert ids[0] != doomed
    assert q.redrive("t") == 1
    assert _claim(q).id == doomed


def test_a_release_by_another_queue_object_joins_within_the_sweep_interval(
    make_queue: Callable[..., Queue],
) -> None:
    consumer, other = make_queue(), make_queue()
    consumer.put(b"held", "t")
    held = _claim(other)
    _busy(consumer)  # its floor is now after the held message
    held.release()
    _claims_until(consumer, b"held")


def test_a_higher_priority_put_by_another_queue_object_joins_within_the_sweep_interval(
    make_queue: Callable[..., Queue],
) -> None:
    consumer, producer = make_queue(), make_queue()
    _busy(consumer)
    producer.put(b"urgent", "t", priority=5)
    _claims_until(consumer, b"urgent")


@pytest.mark.dialects("postgresql", "mysql")  # SQLite: the open transaction blocks every claim
def test_a_delayed_put_that_commits_late_joins_within_the_full_sweep_interval(
    make_queue: Callable[..., Queue], engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its due time is before the sweeps' margin; only a sweep of the whole due index sees it."""
    monkeypatch.setattr(claim_scope, "SINCE_MARGIN_SECONDS", 0.0)
    monkeypatch.setattr(claim_scope, "SWEEP_SECONDS", 0.2)
    monkeypatch.setattr(claim_scope, "FULL_SWEEP_SECONDS", 1.0)
    # The interval is also 50 times the last full sweep's duration: on a loaded machine the
    # first one (which also compiles the statements) took long enough to put the next past the
    # backlog (a CI run, aio:postgresql).
    monkeypatch.setattr(claim_scope, "FULL_SWEEP_COST_RATIO", 0.0)
    q = make_queue()
    with engine.begin() as conn:
        q.put(b"late", "t", delay=0.05, connection=conn)
        _busy(q)  # a sweep
        time.sleep(0.3)
        _claim(q)  # a sweep after the late message's due time: later ones walk from here
    _claims_until(q, b"late")


def test_a_redrive_by_another_queue_object_joins_within_the_sweep_interval(
    make_queue: Callable[..., Queue],
) -> None:
    consumer, operator = make_queue(), make_queue(max_attempts=1)
    operator.put(b"doomed", "t")
    _claim(operator).nack(delay=0)  # its last attempt: dead
    _busy(consumer)  # its floor is now after the dead message
    assert operator.redrive("t") == 1
    assert consumer.stats()["t"].ready == BACKLOG - 1 + 1
    _claims_until(consumer, b"doomed")


def test_a_queue_object_finds_messages_after_its_tables_are_created_afresh(queue: Queue) -> None:
    """Ids start again from 1: below the floor its earlier claims left."""
    ids = queue.put_many([b"x"] * 5, "t")
    assert [m.id for m in queue.get_many("t", 5)] == ids
    queue.destroy()
    queue.create()
    fresh = queue.put(b"fresh", "t")
    assert fresh is not None
    assert fresh <= (ids[0] or 0)
    assert _claim(queue).id == fresh
