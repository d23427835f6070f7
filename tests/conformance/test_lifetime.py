"""A message's lifetime set by its put: ``ttl`` (not claimed in time, it dies unclaimed) and
``max_attempts`` (its own limit instead of the queue's); docs/state_machine.md."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from squeal import Message, Queue


def test_a_message_not_claimed_within_its_ttl_is_never_delivered(queue: Queue) -> None:
    short = queue.put(b"short", "t", ttl=0.2)
    kept = queue.put(b"kept", "t", ttl=3600)
    plain = queue.put(b"plain", "t")
    time.sleep(0.4)
    assert queue.size("t") == 2
    stats = queue.stats()["t"]
    assert (stats.ready, stats.dead) == (2, 1)
    got = queue.get_many("t", 10)
    assert sorted(m.id for m in got) == sorted([kept, plain])
    assert [d.id for d in queue.dead("t")] == [short]
    assert queue.peek("t", 10) == []
    queue.ack_many(got)
    assert queue.get("t") is None


def test_expired_messages_ahead_do_not_hide_the_live_ones(queue: Queue) -> None:
    """More expired messages than any claim walks at once lie ahead in claim order."""
    queue.put_many([b"old"] * 60, "t", ttl=0.2, priority=5)
    live = queue.put_many([b"new"] * 3, "t")
    time.sleep(0.4)
    got = queue.get_many("t", 3)
    assert sorted(m.id for m in got) == sorted(live)
    queue.ack_many(got)
    assert queue.stats()["t"].dead == 60


def _claimed_within(queue: Queue, ttl: float) -> Message:
    """Put a message with ``ttl`` and claim it at once. A stall of this machine longer than
    the ttl lets it die first: then again, on a fresh topic (three tries)."""
    for attempt in range(3):
        topic = f"t{attempt}"
        queue.put(b"x", topic, ttl=ttl)
        msg = queue.get(topic)
        if msg is not None:
            return msg
    raise AssertionError(f"no message was claimed within its ttl of {ttl}s, three times")


def test_a_message_claimed_in_time_does_not_expire_afterwards(
    make_queue: Callable[..., Queue],
) -> None:
    queue = make_queue(failure_base_delay=0.0)
    first = _claimed_within(queue, 0.3)
    time.sleep(0.5)  # past the ttl while leased
    first.nack()
    again = queue.get(first.topic)
    assert again is not None
    assert again.attempts == 2
    again.ack()


def test_a_delayed_message_s_ttl_counts_from_when_it_becomes_visible(queue: Queue) -> None:
    queue.put(b"later", "t", delay=60, ttl=0.3)  # its ttl starts in a minute
    queue.put(b"missed", "t", delay=0.2, ttl=0.2)
    time.sleep(0.6)
    assert queue.get("t") is None
    assert [d.payload for d in queue.dead("t")] == [b"missed"]
    assert queue.stats()["t"].delayed == 1  # "later" lives on


def test_a_released_message_waits_again_within_its_ttl(queue: Queue) -> None:
    """A release hands a message back as if it had not been claimed: its ttl applies."""
    msg = _claimed_within(queue, 0.3)
    time.sleep(0.5)
    msg.release()
    assert queue.get(msg.topic) is None
    assert queue.stats()[msg.topic].dead == 1


def test_redrive_gives_an_expired_message_a_life_without_its_ttl(queue: Queue) -> None:
    queue.put_many([b"a", b"b"], "t", ttl=0.2)
    time.sleep(0.4)
    assert queue.get("t") is None
    assert queue.redrive("t") == 2
    time.sleep(0.3)
    got = queue.get_many("t", 10)
    assert sorted(m.payload for m in got) == [b"a", b"b"]
    queue.ack_many(got)


def test_a_put_s_max_attempts_overrides_the_queue_s(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(failure_base_delay=0.0, max_attempts=2)
    queue.put(b"once", "t", max_attempts=1)
    queue.put(b"thrice", "t", max_attempts=3)
    queue.put(b"queue's", "t")
    for attempt in (1, 2, 3):
        got = queue.get_many("t", 10)
        assert {m.payload: m.max_attempts for m in got} == (
            {b"once": 1, b"thrice": 3, b"queue's": None}
            if attempt == 1
            else {b"thrice": 3, b"queue's": None}
            if attempt == 2
            else {b"thrice": 3}
        )
        queue.nack_many(got)
    assert queue.get("t") is None
    dead = {d.payload: d.attempts for d in queue.dead("t")}
    assert dead == {b"once": 1, b"queue's": 2, b"thrice": 3}


def test_a_put_s_max_attempts_holds_when_its_leases_run_out(
    make_queue: Callable[..., Queue],
) -> None:
    queue = make_queue(visibility_timeout=0.2, max_attempts=5)
    queue.put_many([b"x", b"y"], "t", max_attempts=1)
    assert len(queue.get_many("t", 2)) == 2  # never settled
    time.sleep(0.4)
    assert queue.get_many("t", 2) == []
    assert queue.stats()["t"].dead == 2


@pytest.mark.parametrize(
    "options",
    [
        {"ttl": 0},
        {"ttl": -1},
        {"ttl": 0.0001},
        {"ttl": "1"},
        {"ttl": True},
        {"max_attempts": 0},
        {"max_attempts": 2**31},
        {"max_attempts": 1.5},
        {"max_attempts": True},
    ],
)
def test_a_bad_lifetime_is_refused_and_stores_nothing(
    queue: Queue, options: dict[str, Any]
) -> None:
    with pytest.raises((ValueError, TypeError)):
        queue.put(b"x", "t", **options)
    with pytest.raises((ValueError, TypeError)):
        queue.put_many([b"x"], "t", **options)
    assert queue.topics() == {}


def test_topic_locks_pass_over_a_topic_whose_messages_all_expired(queue: Queue) -> None:
    queue.put_many([b"x"] * 3, "gone", ttl=0.2)
    time.sleep(0.4)
    assert queue.acquire_topic() is None
