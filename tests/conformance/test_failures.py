"""nack and its backoff, dead letters, redrive and purge."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from squeal import DeadMessage, Message, Queue
from squeal.clock import now_ms
from squeal.schema import build_tables


def _claim(q: Queue, topic: str = "default", **kwargs: Any) -> Message:
    msg = q.get(topic, **kwargs)
    assert msg is not None, f"expected a message in topic {topic!r}"
    return msg


def _sleep_until(start: float, seconds: float) -> None:
    time.sleep(max(0.0, start + seconds - time.monotonic()))


def _hidden_for(engine: sa.Engine, prefix: str, topic: str) -> list[float]:
    """Seconds until each message of ``topic`` is visible again, by the database's clock:
    a backoff read where it is stored, so no stall of this machine can change it."""
    m = build_tables(prefix).message
    query = sa.select(m.c.visible_at - now_ms()).where(m.c.topic == topic)
    with engine.connect() as conn:
        return sorted(int(ms) / 1000 for (ms,) in conn.execute(query))


def _kill_by_nack(q: Queue, topic: str, attempts: int) -> Message:
    """Claim and nack (no delay) the next message ``attempts`` times; return the last claim."""
    msg = _claim(q, topic)
    for _ in range(attempts - 1):
        msg.nack(delay=0)
        msg = _claim(q, topic)
    msg.nack(delay=0)
    return msg


# -- nack and backoff -------------------------------------------------------------------------


def test_nack_with_delay_zero_redelivers_at_once_counting_the_attempt(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(failure_base_delay=3600.0)  # the explicit delay overrides the backoff
    msg_id = q.put(b"x", "t")
    _claim(q, "t").nack(delay=0)
    again = _claim(q, "t")
    assert (again.id, again.payload, again.attempts) == (msg_id, b"x", 2)


def test_nack_with_a_delay_hides_the_message_for_that_long(queue: Queue) -> None:
    queue.put_many([b"a", b"b"], "t")
    first, second = queue.get_many("t", 2)
    first.nack(delay=60)
    assert first.settled is True
    assert queue.get("t") is None  # hidden (second is still leased)
    assert queue.stats()["t"].delayed == 1
    second.nack(delay=0.3)
    time.sleep(0.4)
    again = _claim(queue, "t")
    assert (again.payload, again.attempts) == (b"b", 2)
    assert queue.get("t") is None  # first is still hidden


def test_first_nack_backs_off_between_75_and_100_percent_of_the_base_delay_with_jitter(
    make_queue: Callable[..., Queue], engine: sa.Engine, prefix: str
) -> None:
    q = make_queue(failure_base_delay=3600.0)
    q.put_many([bytes([i]) for i in range(20)], "t")
    msgs = q.get_many("t", 20)
    assert [m.attempts for m in msgs] == [1] * 20
    q.nack_many(msgs)
    assert all(m.settled for m in msgs)
    assert q.stats()["t"].delayed == 20
    hidden = _hidden_for(engine, prefix, "t")
    slack = 60  # seconds this test may take between the nack and the read
    assert 0.75 * 3600 - slack <= hidden[0], hidden
    assert hidden[-1] <= 3600, hidden
    assert hidden[-1] - hidden[0] > 60, f"backoff is not jittered over 75-100%: {hidden}"


def test_backoff_doubles_with_each_attempt_up_to_max_failure_delay(
    make_queue: Callable[..., Queue], engine: sa.Engine, prefix: str
) -> None:
    doubling = make_queue(failure_base_delay=60.0)
    capped = make_queue(failure_base_delay=60.0, max_failure_delay=90.0)
    slack = 30  # seconds this test may take between a nack and the read
    for q, topic in ((doubling, "doubling"), (capped, "capped")):
        q.put(b"x", topic)
        _claim(q, topic).nack(delay=0)
        _claim(q, topic).nack(delay=0)
        third = _claim(q, topic)
        assert third.attempts == 3
        third.nack()
    # Third failure: 60 * 2**2 = 240 s, jittered to 180-240 s; capped: 90 s (67.5-90 s).
    (doubled,) = _hidden_for(engine, prefix, "doubling")
    (limited,) = _hidden_for(engine, prefix, "capped")
    assert 180 - slack <= doubled <= 240, doubled
    assert 67.5 - slack <= limited <= 90, limited


def test_nack_many_backs_off_every_message_unless_given_a_delay(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(failure_base_delay=60.0)
    q.put_many([b"a", b"b"], "backoff")
    q.put_many([b"c", b"d"], "now")
    q.nack_many(q.get_many("backoff", 5))
    q.nack_many(q.get_many("now", 5), delay=0)
    assert q.get("backoff") is None
    assert q.stats()["backoff"].delayed == 2
    assert [m.attempts for m in q.get_many("now", 5)] == [2, 2]


def test_unlimited_attempts_never_kill_a_message(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(failure_base_delay=0.0, max_attempts=None)
    q.put(b"x", "t")
    for attempt in range(1, 8):
        msg = _claim(q, "t")
        assert msg.attempts == attempt
        msg.nack()
    assert q.dead("t") == []
    assert q.size("t") == 1


def test_by_default_the_25th_failed_delivery_makes_a_message_dead(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(failure_base_delay=0.0)
    assert q.max_attempts == 25
    q.put(b"x", "t")
    for attempt in range(1, 26):
        msg = _claim(q, "t")
        assert msg.attempts == attempt
        msg.nack()
    assert q.get("t") is None
    assert [d.attempts for d in q.dead("t")] == [25]


# -- dead letters -----------------------------------------------------------------------------


def test_nack_of_the_last_allowed_delivery_makes_the_message_dead(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(max_attempts=3, failure_base_delay=0.0)
    msg_id = q.put(b"x", "t", priority=4)
    for attempt in (1, 2):
        msg = _claim(q, "t")
        assert msg.attempts == attempt
        msg.nack()
    last = _claim(q, "t")
    assert last.attempts == 3
    last.nack()
    assert q.get("t") is None
    assert q.size("t") == 0
    assert q.stats()["t"].dead == 1
    [dead] = q.dead("t")
    assert isinstance(dead, DeadMessage)
    assert (dead.id, dead.topic, dead.payload, dead.priority, dead.attempts) == (
        msg_id,
        "t",
        b"x",
        4,
        3,
    )
    assert isinstance(dead.enqueued_at, datetime)
    assert dead.enqueued_at.tzinfo is not None
    # An explicit delay does not save the last delivery either.
    once = make_queue(max_attempts=1)
    once.put(b"y", "once")
    _claim(once, "once").nack(delay=0)
    assert once.get("once") is None
    assert [d.attempts for d in once.dead("once")] == [1]


def test_lease_expiry_of_the_last_allowed_delivery_makes_the_message_dead(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(visibility_timeout=0.2, max_attempts=2)
    msg_id = q.put(b"x", "t")
    assert _claim(q, "t").attempts == 1
    time.sleep(0.3)
    # An expired lease before the last attempt is only a redelivery.
    assert q.dead("t") == []
    assert q.stats()["t"].dead == 0
    assert _claim(q, "t").attempts == 2
    time.sleep(0.3)
    for _ in range(3):
        assert q.get("t") is None
        assert q.get_many("t", 10) == []
    assert q.size("t") == 0
    assert q.stats()["t"].dead == 1
    assert [(d.id, d.attempts) for d in q.dead("t")] == [(msg_id, 2)]
    # Redriven, it starts again from its first attempt.
    assert q.redrive("t") == 1
    again = _claim(q, "t", visibility_timeout=30)
    assert (again.id, again.attempts) == (msg_id, 1)


def test_dead_lists_oldest_first_up_to_limit_and_only_its_topic(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(max_attempts=1)
    ids = q.put_many([b"a", b"b", b"c"], "t")
    q.put(b"other", "u")
    q.nack_many(q.get_many("t", 10))
    _claim(q, "u").nack()
    assert [d.id for d in q.dead("t")] == ids
    assert [d.payload for d in q.dead("t", limit=2)] == [b"a", b"b"]
    assert [d.payload for d in q.dead("u")] == [b"other"]
    assert q.dead("empty") == []
    # Ready, delayed and leased messages are not dead.
    q.put(b"ready", "live")
    q.put(b"delayed", "live", delay=60)
    q.put(b"leased", "live", priority=1)
    _claim(q, "live")
    assert q.dead("live") == []


def test_redrive_makes_dead_messages_ready_with_attempts_reset(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(max_attempts=2)
    ids = q.put_many([b"a", b"b"], "t")
    _kill_by_nack(q, "t", 2)
    _kill_by_nack(q, "t", 2)
    assert len(q.dead("t")) == 2
    assert q.redrive("t") == 2
    assert q.dead("t") == []
    assert q.size("t") == 2
    got = q.get_many("t", 10)
    assert [(m.id, m.attempts) for m in got] == [(ids[0], 1), (ids[1], 1)]
    # A redriven message gets max_attempts deliveries again.
    q.nack_many(got, delay=0)
    assert [m.attempts for m in q.get_many("t", 10)] == [2, 2]


def test_redrive_with_limit_moves_at_most_that_many_oldest_first(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(max_attempts=1)
    ids = q.put_many([b"a", b"b", b"c"], "t")
    q.nack_many(q.get_many("t", 10))
    assert q.redrive("t", limit=2) == 2
    assert [d.id for d in q.dead("t")] == [ids[2]]
    assert [m.id for m in q.get_many("t", 10)] == ids[:2]


def test_redrive_touches_only_dead_messages_of_its_topic(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(max_attempts=1)
    q.put(b"dead-t", "t")
    q.put(b"dead-u", "u")
    _claim(q, "t").nack()
    _claim(q, "u").nack()
    q.put(b"leased", "t")
    leased = _claim(q, "t")
    q.put(b"delayed", "t", delay=60)
    assert q.redrive("t") == 1
    stats = q.stats()
    assert (stats["t"].ready, stats["t"].leased, stats["t"].delayed, stats["t"].dead) == (
        1,
        1,
        1,
        0,
    )
    assert stats["u"].dead == 1
    assert leased.attempts == 1
    assert q.redrive("t") == 0


def test_purge_dead_only_removes_only_dead_messages(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(max_attempts=1)
    q.put_many([b"d1", b"d2"], "t")
    q.nack_many(q.get_many("t", 10))
    q.put(b"ready", "t")
    q.put(b"delayed", "t", delay=60)
    q.put(b"other-dead", "u")
    _claim(q, "u").nack()
    assert q.purge("t", dead_only=True) == 2
    assert q.dead("t") == []
    stats = q.stats()
    assert (stats["t"].ready, stats["t"].delayed, stats["t"].dead) == (1, 1, 0)
    assert stats["u"].dead == 1


def test_purge_removes_every_message_of_the_topic_only(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(max_attempts=1)
    q.put(b"dead", "t")
    _claim(q, "t").nack()
    q.put(b"ready", "t")
    q.put(b"delayed", "t", delay=60)
    q.put(b"leased", "t", priority=1)
    leased = _claim(q, "t")
    q.put(b"keep", "u")
    assert q.purge("t") == 4
    assert set(q.stats()) == {"u"}
    assert q.get("t") is None
    assert _claim(q, "u").payload == b"keep"
    assert leased.settled is False
    assert q.purge("t") == 0
    assert q.purge("nothing", dead_only=True) == 0
