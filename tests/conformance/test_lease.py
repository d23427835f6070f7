"""Leases: visibility timeout, touch, release, fencing with lease tokens, settling once."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import squeal
from squeal import Message, Queue


def _claim(q: Queue, topic: str = "default", **kwargs: Any) -> Message:
    msg = q.get(topic, **kwargs)
    assert msg is not None, f"expected a message in topic {topic!r}"
    return msg


def _counts(q: Queue, topic: str) -> tuple[int, int, int, int] | None:
    """(ready, delayed, leased, dead) of ``topic``, or None when it has no messages."""
    s = q.stats().get(topic)
    return None if s is None else (s.ready, s.delayed, s.leased, s.dead)


def _operations(q: Queue) -> dict[str, Callable[[Message], None]]:
    """Every way to settle or extend one message, single and batched."""
    return {
        "ack": lambda m: m.ack(),
        "nack": lambda m: m.nack(),
        "nack(delay=0)": lambda m: m.nack(delay=0),
        "release": lambda m: m.release(),
        "touch": lambda m: m.touch(),
        "ack_many": lambda m: q.ack_many([m]),
        "nack_many": lambda m: q.nack_many([m]),
        "touch_many": lambda m: q.touch_many([m]),
    }


# -- visibility timeout -----------------------------------------------------------------------


def test_leased_message_is_invisible_to_other_gets(queue: Queue) -> None:
    queue.put(b"x", "t")
    _claim(queue, "t")
    assert queue.get("t") is None
    assert queue.get_many("t", 10) == []
    assert queue.size("t") == 0
    assert _counts(queue, "t") == (0, 0, 1, 0)


def test_expired_lease_is_delivered_again_with_one_more_attempt_and_a_new_token(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(visibility_timeout=0.3)
    msg_id = q.put(b"x", "t")
    first = _claim(q, "t")
    assert first.attempts == 1
    time.sleep(0.4)
    assert q.size("t") == 1
    second = _claim(q, "t", visibility_timeout=60)
    assert (second.id, second.payload, second.attempts) == (msg_id, b"x", 2)
    assert second.lease_token != first.lease_token
    assert q.get("t") is None


def test_get_and_get_many_visibility_timeout_override_the_queues(queue: Queue) -> None:
    queue.put_many([b"a", b"b", b"c"], "t")
    one = _claim(queue, "t", visibility_timeout=0.3)
    two = queue.get_many("t", 5, visibility_timeout=0.3)
    assert len(two) == 2
    time.sleep(0.4)  # the queue's lease is a minute: only the override brings them back
    again = queue.get_many("t", 5)
    assert [(m.id, m.attempts) for m in again] == [(one.id, 2), (two[0].id, 2), (two[1].id, 2)]


# -- touch ------------------------------------------------------------------------------------


def test_touch_extends_the_lease_by_the_queue_visibility_timeout_from_now(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(visibility_timeout=60)
    q.put(b"x", "t")
    msg = _claim(q, "t", visibility_timeout=0.5)
    msg.touch()  # from now on the queue's lease (60 s), not the claim's
    assert msg.settled is False
    time.sleep(0.6)  # past the claim's lease, inside the extended one
    assert q.get("t") is None
    assert _counts(q, "t") == (0, 0, 1, 0)
    msg.ack()
    assert q.stats() == {}


def test_touch_with_a_visibility_timeout_sets_the_lease_to_that_from_now(queue: Queue) -> None:
    queue.put_many([b"one", b"many1", b"many2"], "t")
    msg = _claim(queue, "t", visibility_timeout=0.3)
    msgs = queue.get_many("t", 5, visibility_timeout=0.3)
    msg.touch(visibility_timeout=5.0)
    queue.touch_many(msgs, visibility_timeout=5.0)
    time.sleep(0.4)
    assert queue.get("t") is None
    msg.touch(visibility_timeout=0.2)  # shortening works too
    time.sleep(0.3)
    again = _claim(queue, "t")
    assert (again.id, again.attempts) == (msg.id, 2)
    queue.ack_many(msgs)
    assert _counts(queue, "t") == (0, 0, 1, 0)


# -- release ----------------------------------------------------------------------------------


def test_release_makes_the_message_ready_now_without_counting_the_attempt(
    queue: Queue,
) -> None:
    msg_id = queue.put(b"x", "t")
    msg = _claim(queue, "t")
    msg.release()
    assert msg.settled is True
    assert queue.size("t") == 1
    again = _claim(queue, "t")
    assert (again.id, again.attempts) == (msg_id, 1)


def test_release_keeps_the_attempts_of_earlier_failed_deliveries(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(failure_base_delay=0.0)
    q.put(b"x", "t")
    _claim(q, "t").nack()
    second = _claim(q, "t")
    assert second.attempts == 2
    second.release()
    assert _claim(q, "t").attempts == 2


def test_released_message_keeps_its_place_by_priority_and_id(queue: Queue) -> None:
    queue.put(b"first", "t")
    queue.put(b"second", "t")
    first = _claim(queue, "t")
    first.release()
    assert _claim(queue, "t").payload == b"first"


# -- fencing ----------------------------------------------------------------------------------


def test_expired_lease_nobody_reclaimed_can_still_be_acked(queue: Queue) -> None:
    queue.put(b"x", "t")
    msg = _claim(queue, "t", visibility_timeout=0.2)
    time.sleep(0.3)
    msg.ack()
    assert queue.get("t") is None
    assert queue.stats() == {}


def test_stale_handle_after_reclaim_raises_lease_lost_and_changes_nothing(
    queue: Queue,
) -> None:
    operations = _operations(queue)
    queue.put_many([name.encode() for name in operations], "t")
    stale = queue.get_many("t", 20, visibility_timeout=0.2)
    time.sleep(0.3)
    holders = queue.get_many("t", 20, visibility_timeout=30)
    assert [h.id for h in holders] == [m.id for m in stale]
    for msg, (name, operation) in zip(stale, operations.items(), strict=True):
        with pytest.raises(squeal.LeaseLost) as raised:
            operation(msg)
        assert raised.value.message_id == msg.id, name
        assert msg.settled is False, name
    # The new holders keep their leases: nobody else gets the messages, and their acks work.
    assert queue.get("t") is None
    assert _counts(queue, "t") == (0, 0, len(operations), 0)
    queue.ack_many(holders)
    assert queue.stats() == {}


def test_stale_handle_after_reclaim_cannot_ack_even_after_the_new_lease_expired(
    queue: Queue,
) -> None:
    queue.put(b"x", "t")
    stale = _claim(queue, "t", visibility_timeout=0.2)
    time.sleep(0.3)
    _claim(queue, "t", visibility_timeout=0.2)
    time.sleep(0.3)
    with pytest.raises(squeal.LeaseLost):
        stale.ack()
    assert queue.size("t") == 1


def test_settling_a_message_that_is_gone_raises_lease_lost(queue: Queue) -> None:
    operations = _operations(queue)
    queue.put_many([name.encode() for name in operations], "t")
    msgs = queue.get_many("t", 20)
    assert queue.purge("t") == len(operations)
    for msg, (name, operation) in zip(msgs, operations.items(), strict=True):
        with pytest.raises(squeal.LeaseLost):
            operation(msg)
        assert msg.settled is False, name
    assert queue.stats() == {}


# -- settling ---------------------------------------------------------------------------------


def test_ack_deletes_the_message_and_marks_it_settled(queue: Queue) -> None:
    queue.put(b"x", "t")
    msg = _claim(queue, "t")
    assert msg.settled is False
    msg.ack()
    assert msg.settled is True
    assert queue.stats() == {}
    assert queue.get("t") is None


def test_ack_many_deletes_every_message_from_any_claims(queue: Queue) -> None:
    queue.put_many([b"a", b"b", b"c", b"d"], "t")
    msgs = [*queue.get_many("t", 2), _claim(queue, "t")]
    queue.ack_many(msgs)
    assert all(m.settled for m in msgs)
    assert _counts(queue, "t") == (1, 0, 0, 0)


def test_batch_operations_on_an_empty_list_do_nothing(queue: Queue) -> None:
    queue.put(b"x", "t")
    queue.ack_many([])
    queue.nack_many([])
    queue.touch_many([])
    assert queue.size("t") == 1


_SETTLE: dict[str, Callable[[Message], None]] = {
    "ack": lambda m: m.ack(),
    "nack": lambda m: m.nack(),
    "release": lambda m: m.release(),
}


def test_second_settle_or_touch_of_the_same_handle_raises_already_settled(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(failure_base_delay=60.0)
    for first, settle in _SETTLE.items():
        for second, again in _operations(q).items():
            q.put(b"x", "t")
            msg = _claim(q, "t")
            settle(msg)
            before = _counts(q, "t")
            with pytest.raises(squeal.AlreadySettled) as raised:
                again(msg)
            assert isinstance(raised.value, RuntimeError)
            assert _counts(q, "t") == before, f"{second} after {first} changed the queue"
            q.purge("t")


def test_batch_with_one_settled_message_raises_already_settled_and_changes_nothing(
    queue: Queue,
) -> None:
    batches: dict[str, Callable[[list[Message]], None]] = {
        "ack_many": queue.ack_many,
        "nack_many": queue.nack_many,
        "touch_many": queue.touch_many,
    }
    for name, batch in batches.items():
        queue.put_many([b"a", b"b"], "t")
        msgs = queue.get_many("t", 5)
        msgs[0].ack()
        with pytest.raises(squeal.AlreadySettled):
            batch(msgs)
        assert msgs[1].settled is False, name
        assert _counts(queue, "t") == (0, 0, 1, 0), name
        queue.purge("t")


# -- context manager --------------------------------------------------------------------------


def test_leaving_the_with_block_without_settling_nacks_the_message(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(failure_base_delay=0.0)
    msg_id = q.put(b"x", "t")
    with _claim(q, "t") as msg:
        assert msg.payload == b"x"
    assert msg.settled is True
    again = _claim(q, "t")
    assert (again.id, again.attempts) == (msg_id, 2)
    # The nack is a real one: with a backoff, the message waits.
    slow = make_queue(failure_base_delay=60.0)
    slow.put(b"y", "slow")
    with _claim(slow, "slow"):
        pass
    assert slow.get("slow") is None
    assert _counts(slow, "slow") == (0, 1, 0, 0)


def test_exception_escaping_the_with_block_nacks_and_propagates(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(failure_base_delay=0.0)
    msg_id = q.put(b"x", "t")
    with pytest.raises(ZeroDivisionError), _claim(q, "t") as msg:
        _ = 1 / 0
    assert msg.settled is True
    again = _claim(q, "t")
    assert (again.id, again.attempts) == (msg_id, 2)


def test_settling_inside_the_with_block_is_final(queue: Queue) -> None:
    queue.put_many([b"acked", b"released"], "t")
    with _claim(queue, "t") as msg:
        msg.ack()
    with _claim(queue, "t") as msg:
        msg.release()
    again = _claim(queue, "t")
    assert (again.payload, again.attempts) == (b"released", 1)
    again.ack()
    assert queue.stats() == {}
