"""Pause and resume: claims skip a paused topic inside the claim statement, for every consumer
of every queue object; puts still land and the counts stay as they were."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from squeal import Buffer, Queue
from squeal.message import TopicStats
from tests.race import joined


def test_a_paused_topic_delivers_nothing_until_resumed(queue: Queue) -> None:
    queue.put_many([b"1", b"2", b"3"], "jobs")
    queue.put(b"other", "mail")
    queue.pause("jobs")
    assert queue.get("jobs") is None
    assert queue.get_many("jobs", 10) == []
    assert queue.put(b"4", "jobs") is not None  # puts still land
    assert queue.size("jobs") == 4
    assert queue.topics() == {"jobs": 4, "mail": 1}
    mail = queue.get("mail")  # other topics are not affected
    assert mail is not None
    mail.ack()

    queue.resume("jobs")
    got = queue.get_many("jobs", 10)
    assert [m.payload for m in got] == [b"1", b"2", b"3", b"4"]
    queue.ack_many(got)


def test_a_pause_holds_for_every_queue_object(make_queue: Callable[..., Queue]) -> None:
    """The state is in the database, not in the object that paused."""
    one, two = make_queue(), make_queue()
    one.put(b"x", "t")
    one.pause("t")
    assert two.get("t") is None
    assert two.paused() == ["t"]
    two.resume("t")
    msg = one.get("t")
    assert msg is not None
    msg.ack()


def test_expired_leases_and_ended_delays_wait_for_the_resume(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(visibility_timeout=0.2)
    q.put(b"leased", "t")
    q.put(b"delayed", "t", delay=0.2)
    assert q.get("t") is not None  # its lease runs out unacked
    q.pause("t")
    time.sleep(0.4)
    assert q.get_many("t", 10) == []  # due again, but the topic is paused
    assert q.size("t") == 2
    q.resume("t")
    got = q.get_many("t", 10)
    assert sorted(m.payload for m in got) == [b"delayed", b"leased"]
    q.ack_many(got)


def test_a_waiting_get_keeps_waiting_through_a_pause(queue: Queue) -> None:
    queue.put(b"x", "t")
    queue.pause("t")
    resumer = threading.Timer(0.3, queue.resume, args=("t",))
    began = time.monotonic()  # before the timer starts: a stall in between only adds
    resumer.start()
    try:
        msg = queue.get("t", wait=10)
    finally:
        joined([resumer])
    assert msg is not None
    assert time.monotonic() - began >= 0.25
    msg.ack()


def test_topic_locks_and_buffers_pass_over_paused_topics(queue: Queue) -> None:
    queue.put_many([b"a"] * 5, "big")
    queue.put(b"b", "small")
    queue.pause("big")
    lock = queue.acquire_topic()  # the first topic by name is paused: the other one
    assert lock is not None
    assert lock.topic == "small"
    lock.release()
    with Buffer(queue) as buffer:
        msg = buffer.get()
        assert msg is not None
        assert msg.topic == "small"
        msg.ack()
        assert buffer.get() is None
    queue.pause("small")
    assert queue.acquire_topic() is None


def test_paused_lists_and_stats_show_the_state(queue: Queue) -> None:
    queue.put(b"x", "b")
    assert queue.paused() == []
    queue.pause("b")
    queue.pause("b")  # twice: still paused once
    queue.pause("a")  # a topic without messages
    queue.resume("never paused")
    assert queue.paused() == ["a", "b"]
    stats = queue.stats()
    assert stats["a"] == TopicStats(0, 0, 0, 0, None, paused=True)
    assert stats["b"].paused
    assert stats["b"].ready == 1
    assert list(stats) == ["a", "b"]
    queue.resume("a")
    queue.resume("b")
    assert queue.paused() == []
    assert "a" not in queue.stats()
    assert not queue.stats()["b"].paused


@pytest.mark.parametrize("topic", ["", "x" * 256, 7])
def test_a_bad_topic_is_refused(queue: Queue, topic: object) -> None:
    for operation in (queue.pause, queue.resume):
        with pytest.raises((ValueError, TypeError)):
            operation(topic)  # type: ignore[arg-type]
