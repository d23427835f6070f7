"""size, topics and stats: what each counts, per topic, at the database's clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from squeal import Message, Queue, TopicStats


def _claim(q: Queue, topic: str = "default", **kwargs: Any) -> Message:
    msg = q.get(topic, **kwargs)
    assert msg is not None, f"expected a message in topic {topic!r}"
    return msg


def _counts(stats: TopicStats) -> tuple[int, int, int, int]:
    return (stats.ready, stats.delayed, stats.leased, stats.dead)


def _one_of_each_state(q: Queue, topic: str) -> None:
    """Two ready, one delayed, one leased and one dead message (q must have max_attempts=1)."""
    q.put(b"dead", topic, priority=2)
    _claim(q, topic).nack()
    q.put(b"leased", topic, priority=1)
    _claim(q, topic)
    q.put(b"delayed", topic, delay=60)
    q.put_many([b"ready1", b"ready2"], topic)


def test_empty_queue_has_no_topics_and_no_stats(queue: Queue) -> None:
    assert queue.topics() == {}
    assert queue.stats() == {}
    assert queue.size("anything") == 0
    assert queue.size() == 0


def test_size_counts_only_messages_ready_now(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(max_attempts=1)
    _one_of_each_state(q, "t")
    assert q.size("t") == 2
    assert q.size("other") == 0


def test_stats_counts_every_state_per_topic(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(max_attempts=1)
    _one_of_each_state(q, "t")
    q.put(b"u", "u", delay=60)
    stats = q.stats()
    assert set(stats) == {"t", "u"}
    assert isinstance(stats["t"], TopicStats)
    assert _counts(stats["t"]) == (2, 1, 1, 1)
    assert stats["t"].total == 5
    assert _counts(stats["u"]) == (0, 1, 0, 0)
    assert stats["u"].oldest_ready_age is None


def test_topics_maps_each_topic_with_ready_messages_to_its_ready_count(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(max_attempts=1)
    _one_of_each_state(q, "mixed")
    q.put_many([b"1", b"2", b"3"], "three")
    q.put(b"later", "only-delayed", delay=60)
    q.put(b"busy", "only-leased")
    _claim(q, "only-leased")
    q.put(b"dead", "only-dead")
    _claim(q, "only-dead").nack()
    assert q.topics() == {"mixed": 2, "three": 3}


def test_topic_disappears_once_its_last_message_is_acked(queue: Queue) -> None:
    queue.put(b"x", "t")
    assert queue.topics() == {"t": 1}
    msg = _claim(queue, "t")
    assert queue.topics() == {}
    assert set(queue.stats()) == {"t"}
    msg.ack()
    assert queue.stats() == {}


def test_oldest_ready_age_is_the_age_of_the_oldest_ready_message(queue: Queue) -> None:
    queue.put(b"old", "t")
    queue.put(b"old-leased", "leased")
    _claim(queue, "leased")
    time.sleep(0.3)
    queue.put(b"new", "t")
    queue.put(b"new", "leased")
    stats = queue.stats()
    age = stats["t"].oldest_ready_age
    assert age is not None
    assert 0.3 <= age < 30
    # A leased message is not ready, however old it is: the age is the one put after the sleep
    # (compared within one read, so no stall of this machine between put and read matters).
    newer = stats["leased"].oldest_ready_age
    assert newer is not None
    assert 0 <= newer <= age - 0.29


def test_oldest_ready_age_is_none_when_nothing_is_ready(queue: Queue) -> None:
    queue.put(b"x", "t")
    _claim(queue, "t")
    queue.put(b"y", "t", delay=60)
    assert queue.stats()["t"].oldest_ready_age is None


def test_expired_lease_and_passed_delay_count_as_ready_before_any_claim(queue: Queue) -> None:
    queue.put(b"x", "leased")
    _claim(queue, "leased", visibility_timeout=0.2)
    queue.put(b"y", "delayed", delay=0.2)
    queue.put(b"x", "held")  # the same, with times no stall of this machine outlasts
    _claim(queue, "held", visibility_timeout=60)
    queue.put(b"y", "later", delay=60)
    time.sleep(0.3)
    stats = queue.stats()
    assert _counts(stats["held"]) == (0, 0, 1, 0)
    assert _counts(stats["later"]) == (0, 1, 0, 0)
    assert _counts(stats["leased"]) == (1, 0, 0, 0)
    assert _counts(stats["delayed"]) == (1, 0, 0, 0)
    assert queue.size("leased") == 1
    assert queue.size("delayed") == 1
    assert queue.topics() == {"leased": 1, "delayed": 1}  # held and later are not ready


def test_backing_off_message_counts_as_delayed(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(failure_base_delay=60.0)
    q.put(b"x", "t")
    _claim(q, "t").nack()
    assert _counts(q.stats()["t"]) == (0, 1, 0, 0)


def test_inspection_runs_no_claim(queue: Queue) -> None:
    queue.put(b"x", "t")
    for _ in range(2):
        queue.size("t")
        queue.topics()
        queue.stats()
        queue.dead("t")
    assert _claim(queue, "t").attempts == 1


def test_delete_removes_one_message_unless_it_is_leased(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(max_attempts=1)
    ready = q.put(b"ready", "t")
    delayed = q.put(b"delayed", "t", delay=60)
    q.put(b"dies", "t", priority=9)
    doomed = q.get("t")
    assert doomed is not None
    doomed.nack()  # its only attempt: dead
    leased_msg = q.get("t")
    assert leased_msg is not None
    assert leased_msg.id == ready
    assert q.delete(leased_msg.id) is False  # leased now: its consumer settles it
    assert q.delete(delayed) is True  # type: ignore[arg-type]
    assert q.delete(delayed) is False  # type: ignore[arg-type]
    assert q.delete(doomed.id) is True
    leased_msg.touch(visibility_timeout=0.2)
    time.sleep(0.3)  # the lease ran out: nobody holds it
    assert q.delete(leased_msg.id) is True
    assert q.stats() == {}
    assert q.delete(2**62) is False
    with pytest.raises((ValueError, TypeError)):
        q.delete(-1)
    with pytest.raises((ValueError, TypeError)):
        q.delete("1")  # type: ignore[arg-type]
