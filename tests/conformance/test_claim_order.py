"""get / get_many: priority first, then FIFO by id; limits; waiting; message attributes."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from squeal import Message, Queue


def _claim(q: Queue, topic: str = "default", **kwargs: Any) -> Message:
    msg = q.get(topic, **kwargs)
    assert msg is not None, f"expected a message in topic {topic!r}"
    return msg


def test_get_on_an_empty_topic_returns_none(queue: Queue) -> None:
    assert queue.get("nothing") is None
    assert queue.get_many("nothing", 5) == []


def test_same_priority_is_delivered_fifo_by_id(queue: Queue) -> None:
    ids = [queue.put(bytes([i]), "t") for i in range(5)]
    assert [_claim(queue, "t").id for _ in range(5)] == ids
    assert queue.get("t") is None


def test_higher_priority_is_delivered_first(queue: Queue) -> None:
    queue.put(b"low", "t", priority=-1)
    queue.put(b"mid", "t", priority=0)
    queue.put(b"high", "t", priority=10)
    queue.put(b"top", "t", priority=2**31 - 1)
    queue.put(b"bottom", "t", priority=-(2**31))
    got = [_claim(queue, "t").payload for _ in range(5)]
    assert got == [b"top", b"high", b"mid", b"low", b"bottom"]


def test_priority_then_id_order_holds_for_interleaved_puts(queue: Queue) -> None:
    plan = [(b"a", 1), (b"b", 3), (b"c", 1), (b"d", 3), (b"e", 2), (b"f", 1)]
    for payload, priority in plan:
        queue.put(payload, "t", priority=priority)
    got = [_claim(queue, "t").payload for _ in plan]
    assert got == [b"b", b"d", b"e", b"a", b"c", b"f"]


def test_get_many_returns_at_most_limit_in_priority_then_id_order(queue: Queue) -> None:
    queue.put(b"p0-1", "t")
    queue.put(b"p5-1", "t", priority=5)
    queue.put(b"p0-2", "t")
    queue.put(b"p5-2", "t", priority=5)
    queue.put(b"p0-3", "t")
    first = queue.get_many("t", 3)
    assert [m.payload for m in first] == [b"p5-1", b"p5-2", b"p0-1"]
    rest = queue.get_many("t", 10)
    assert [m.payload for m in rest] == [b"p0-2", b"p0-3"]
    assert not {m.id for m in first} & {m.id for m in rest}
    assert queue.get_many("t", 10) == []


def test_get_many_uses_a_default_limit_of_ten(queue: Queue) -> None:
    queue.put_many([bytes([i]) for i in range(12)], "t")
    assert len(queue.get_many("t")) == 10
    assert len(queue.get_many("t")) == 2


def test_messages_whose_delay_passed_take_their_place_by_priority_and_id(queue: Queue) -> None:
    queue.put(b"delayed-first", "t", delay=0.2)
    queue.put(b"ready-second", "t")
    queue.put(b"delayed-high", "t", priority=1, delay=0.2)
    queue.put_many([b"d1", b"d2", b"d3"], "u", delay=0.2)
    queue.put_many([b"r1", b"r2", b"r3"], "u")
    queue.put(b"ready-fourth", "t")
    time.sleep(0.3)  # (that the delayed ones were invisible before: test_put)
    got = [m.payload for m in queue.get_many("t", 10)]
    assert got == [b"delayed-high", b"delayed-first", b"ready-second", b"ready-fourth"]
    # Within a limit, newly due and ready messages compete by priority, then id.
    assert [m.payload for m in queue.get_many("u", 4)] == [b"d1", b"d2", b"d3", b"r1"]
    assert [m.payload for m in queue.get_many("u", 4)] == [b"r2", b"r3"]


def test_claimed_message_has_its_attributes(queue: Queue) -> None:
    before = datetime.now(timezone.utc)
    msg_id = queue.put(b"body", "emails", priority=3)
    msg = _claim(queue, "emails")
    assert msg.id == msg_id
    assert msg.payload == b"body"
    assert msg.topic == "emails"
    assert msg.priority == 3
    assert msg.attempts == 1
    assert isinstance(msg.lease_token, int)
    assert msg.settled is False
    assert msg.enqueued_at.tzinfo is not None
    assert msg.enqueued_at.utcoffset() == timedelta(0)
    # Database and test share a machine: allow for clock granularity, not for skew.
    assert abs(msg.enqueued_at - before) < timedelta(seconds=5)


def test_get_with_wait_returns_none_after_the_wait_when_nothing_arrives(queue: Queue) -> None:
    start = time.monotonic()
    assert queue.get("t", wait=0.3) is None
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    assert queue.get_many("t", 5, wait=0.2) == []
    assert time.monotonic() - start >= 0.2


def test_get_with_wait_returns_a_message_that_becomes_ready_during_the_wait(
    queue: Queue,
) -> None:
    queue.put(b"soon", "t", delay=0.3)
    start = time.monotonic()
    msg = queue.get("t", wait=5.0)
    assert msg is not None
    assert msg.payload == b"soon"
    assert time.monotonic() - start < 5.0


def test_get_many_with_wait_returns_ready_messages_at_once(queue: Queue) -> None:
    queue.put_many([b"a", b"b"], "t")
    start = time.monotonic()
    assert [m.payload for m in queue.get_many("t", 5, wait=5.0)] == [b"a", b"b"]
    assert time.monotonic() - start < 5.0


def test_get_returns_the_best_due_message_not_the_one_that_fell_due_first(queue: Queue) -> None:
    """Found by the T9 model test: with two messages due, the claim must weigh both."""
    low = queue.put(b"low", "t", priority=0)
    high = queue.put(b"high", "t", priority=5)
    first = queue.get("t", visibility_timeout=30)
    second = queue.get("t", visibility_timeout=0.3)
    assert first is not None
    assert second is not None
    assert (first.id, second.id) == (high, low)
    time.sleep(0.5)  # low's lease ran out: it fell due first
    first.nack(delay=0)  # high falls due now, after low
    best = queue.get("t")
    assert best is not None
    assert best.id == high
