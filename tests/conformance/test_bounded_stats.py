"""stats(limit=N): exact while no topic holds more than N messages in one stored state; above,
lower bounds marked ``estimated``. What dashboards and scrapers read, whatever the queue's size."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from squeal import InvalidType, Queue, TopicStats, ValidationError


def _counts(stats: TopicStats) -> tuple[int, int, int, int]:
    return (stats.ready, stats.delayed, stats.leased, stats.dead)


def _every_kind_of_row(q: Queue) -> None:
    """Each way a row can count (q must have max_attempts=1): stored READY, READY past its
    ttl, WAITING delayed, leased, due, and due after a lease ran out, and DEAD."""
    q.put(b"dead", "mixed", priority=2)
    dying = q.get("mixed")
    assert dying is not None
    dying.nack()
    q.put(b"leased", "mixed", priority=1)
    assert q.get("mixed") is not None
    q.put(b"lease runs out", "mixed", priority=1)
    assert q.get("mixed", visibility_timeout=0.2) is not None
    q.put(b"delayed", "mixed", delay=60)
    q.put(b"due soon", "mixed", delay=0.1)
    q.put(b"ttl runs out", "mixed", ttl=0.1)
    q.put_many([b"ready1", b"ready2"], "mixed")
    q.put_many([b"a", b"b", b"c"], "plain")
    q.put(b"later", "only-delayed", delay=60)
    q.pause("paused-empty")
    time.sleep(0.3)


def test_within_the_limit_the_count_is_exact(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(max_attempts=1)
    _every_kind_of_row(q)
    exact = q.stats()
    assert _counts(exact["mixed"]) == (3, 1, 1, 3), "ready: 2 + due; dead: nacked, lease, ttl"
    for limit in (4, 1000):  # the largest state, WAITING, holds 4
        bounded = q.stats(limit=limit)
        assert set(bounded) == set(exact) == {"mixed", "plain", "only-delayed", "paused-empty"}
        for topic, stats in exact.items():
            got = bounded[topic]
            assert (_counts(got), got.paused, got.estimated) == (
                _counts(stats),
                stats.paused,
                False,
            ), topic
            if stats.oldest_ready_age is None:
                assert got.oldest_ready_age is None
            else:
                assert got.oldest_ready_age is not None
                assert abs(got.oldest_ready_age - stats.oldest_ready_age) < 5


def test_a_state_over_the_limit_counts_as_the_limit(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(max_attempts=1)
    q.put_many([b"r"] * 5, "big")
    q.put_many([b"d"] * 3, "big", delay=60)
    for _ in range(3):
        q.put(b"x", "big", priority=9)
        msg = q.get("big")
        assert msg is not None
        msg.nack()
    q.put(b"r", "small")
    stats = q.stats(limit=2)
    assert _counts(stats["big"]) == (2, 2, 0, 2)
    assert stats["big"].estimated
    assert _counts(stats["small"]) == (1, 0, 0, 0)
    assert not stats["small"].estimated
    stats = q.stats(limit=4)
    assert _counts(stats["big"]) == (4, 3, 0, 3), "only the ready state is over 4"
    assert stats["big"].estimated
    stats = q.stats(limit=5)
    assert _counts(stats["big"]) == (5, 3, 0, 3)
    assert not stats["big"].estimated


def test_an_estimated_oldest_age_is_the_next_messages(queue: Queue) -> None:
    queue.put(b"old", "t")
    time.sleep(0.3)
    queue.put_many([b"new"] * 2, "t")
    stats = queue.stats(limit=1)["t"]
    assert stats.estimated
    assert stats.oldest_ready_age is not None
    assert 0.3 <= stats.oldest_ready_age < 30


def test_leased_messages_are_not_counted_once_the_waiting_state_is_over(queue: Queue) -> None:
    queue.put_many([b"x"] * 3, "t")
    for _ in range(3):
        assert queue.get("t") is not None
    stats = queue.stats(limit=2)["t"]
    assert stats.estimated
    assert _counts(stats) == (0, 2, 0, 0), "a long waiting state is a lower bound, as delayed"


@pytest.mark.parametrize(
    ("limit", "error"), [(0, ValidationError), (-1, ValidationError), (1.5, InvalidType)]
)
def test_the_limit_is_a_positive_whole_number(
    queue: Queue, limit: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="limit"):
        queue.stats(limit=limit)  # type: ignore[arg-type]
