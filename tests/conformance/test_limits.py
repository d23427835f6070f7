"""Limits per topic: at most N leased at once, at most R claimed per window, for every consumer
of every process, enforced in the database (squeal/limits.py, docs/flow_control.md)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from squeal import Limit, Queue
from tests.children import Children

TOPIC = "jobs"


def _fill(queue: Queue, count: int) -> set[int]:
    ids = queue.put_many([f"m{i}".encode() for i in range(count)], TOPIC)
    return {i for i in ids if i is not None}


def test_a_concurrency_limit_caps_what_is_leased_at_once(make_queue: Callable[..., Queue]) -> None:
    one, two = make_queue(), make_queue()
    _fill(one, 10)
    one.set_limit(TOPIC, concurrency=3)
    held = one.get_many(TOPIC, 10)
    assert len(held) == 3
    assert two.get(TOPIC) is None  # another queue object: the same limit
    held.pop().ack()
    more = two.get_many(TOPIC, 10)
    assert len(more) == 1
    held.pop().nack(delay=60)  # backing off: not leased
    assert len(two.get_many(TOPIC, 10)) == 1
    two.set_limit(TOPIC, concurrency=None)
    rest = one.get_many(TOPIC, 10)
    assert len(rest) == 5
    one.ack_many([*held, *more, *rest])


def test_a_limit_set_elsewhere_binds_a_queue_object_that_claimed_before(
    make_queue: Callable[..., Queue],
) -> None:
    consumer, operator = make_queue(), make_queue()
    _fill(consumer, 10)
    first = consumer.get_many(TOPIC, 2)  # claimed the unlimited way
    operator.set_limit(TOPIC, concurrency=3)
    assert len(consumer.get_many(TOPIC, 10)) == 1  # 3 minus the 2 it holds
    assert consumer.get(TOPIC) is None
    operator.set_limit(TOPIC, concurrency=None)
    assert len(consumer.get_many(TOPIC, 10)) == 7  # learned that the limit is gone
    consumer.ack_many(first)


def test_leases_held_when_a_lower_limit_is_set_are_kept(queue: Queue) -> None:
    _fill(queue, 6)
    held = queue.get_many(TOPIC, 5)
    queue.set_limit(TOPIC, concurrency=2)
    assert queue.get(TOPIC) is None
    queue.ack_many(held[:3])  # 2 still leased: at the limit
    assert queue.get(TOPIC) is None
    held[3].ack()
    last = queue.get(TOPIC)
    assert last is not None
    queue.ack_many([held[4], last])


def test_a_lease_that_ran_out_no_longer_counts(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(visibility_timeout=0.3)
    _fill(queue, 4)
    queue.set_limit(TOPIC, concurrency=2)
    assert len(queue.get_many(TOPIC, 4)) == 2  # never settled
    time.sleep(0.5)
    again = queue.get_many(TOPIC, 4)
    assert len(again) == 2
    queue.ack_many(again)


def test_a_rate_limit_gives_what_the_bucket_holds(queue: Queue) -> None:
    _fill(queue, 10)
    queue.set_limit(TOPIC, rate=3, per=3600)  # a full bucket of 3, then one per 20 minutes
    got = queue.get_many(TOPIC, 10)
    assert len(got) == 3
    assert queue.get_many(TOPIC, 10) == []
    queue.ack_many(got)
    assert queue.get(TOPIC) is None  # acking does not give tokens back
    queue.set_limit(TOPIC, rate=4)  # a new rate starts with a full bucket
    assert len(queue.get_many(TOPIC, 10)) == 4


def test_a_rate_refills_with_the_database_clock(queue: Queue) -> None:
    _fill(queue, 30)
    began = time.monotonic()
    queue.set_limit(TOPIC, rate=2, per=0.2)  # 10 per second, a burst of 2
    set_at = time.monotonic()
    claimed = 0
    late = False  # a claim came 0.3 s after the set: 3 tokens refilled by then
    while time.monotonic() - began < 1.0 or not late:
        late = time.monotonic() - set_at >= 0.3
        claimed += len(queue.get_many(TOPIC, 30))
        time.sleep(0.01)
    elapsed = time.monotonic() - began
    assert claimed <= 2 + 10 * elapsed  # the bucket's bound over the time that passed
    assert claimed > 2  # it refilled (a claim came 0.3 s or more after the set)


def test_set_limit_changes_what_it_is_given_and_limits_lists_them(queue: Queue) -> None:
    assert queue.limits() == []
    assert queue.set_limit("b", concurrency=2) == Limit("b", 2, None, None)
    assert queue.set_limit("b", rate=5) == Limit("b", 2, 5, 1.0)  # per defaults to a second
    assert queue.set_limit("b", per=0.5) == Limit("b", 2, 5, 0.5)
    assert queue.set_limit("a", rate=1, per=60) == Limit("a", None, 1, 60.0)
    assert queue.limits() == [Limit("a", None, 1, 60.0), Limit("b", 2, 5, 0.5)]
    assert queue.set_limit("b", concurrency=None) == Limit("b", None, 5, 0.5)
    assert queue.set_limit("b", rate=None) == Limit("b", None, None, None)
    queue.set_limit("a", rate=None)
    assert queue.limits() == []
    queue.pause("a")  # a limit and a pause share the topic's row; neither undoes the other
    queue.set_limit("a", concurrency=1)
    assert queue.paused() == ["a"]
    queue.set_limit("a", concurrency=None)
    assert queue.paused() == ["a"]


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"concurrency": -1},
        {"concurrency": True},
        {"concurrency": 2**31},
        {"rate": 0},
        {"rate": 1.5},
        {"rate": 2, "per": 0},
        {"rate": 2, "per": -1},
        {"rate": 2, "per": None},
        {"rate": 2, "per": 0.0001},
        {"per": 2},  # a window without a rate
        {"rate": None, "per": 2},
    ],
)
def test_bad_limits_are_refused_and_change_nothing(queue: Queue, options: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        queue.set_limit(TOPIC, **options)
    assert queue.limits() == []


def test_a_paused_limited_topic_gives_nothing(queue: Queue) -> None:
    _fill(queue, 3)
    queue.set_limit(TOPIC, concurrency=2)
    queue.pause(TOPIC)
    assert queue.get_many(TOPIC, 3) == []
    queue.resume(TOPIC)
    got = queue.get_many(TOPIC, 3)
    assert len(got) == 2
    queue.ack_many(got)


def test_topic_locks_still_offer_a_limited_topic(queue: Queue) -> None:
    _fill(queue, 3)
    queue.set_limit(TOPIC, concurrency=1)
    lock = queue.acquire_topic()
    assert lock is not None
    assert lock.topic == TOPIC
    got = queue.get_many(lock.topic, 3)
    assert len(got) == 1
    queue.ack_many(got)
    lock.release()


@pytest.mark.sync_only("its consumers are processes of their own, on the synchronous API")
def test_racing_processes_never_lease_more_than_the_limit(
    queue: Queue, children: Children, tmp_path: Path
) -> None:
    sent = _fill(queue, 120)
    queue.set_limit(TOPIC, concurrency=3)
    done = tmp_path / "produced"
    done.touch()  # nothing more to come: consumers drain, then stop
    args = ["--batch", "4", "--hold", "0.01", "--wait", "0.2", "--until", str(done)]
    consumers = [children.start("consume", f"c{i}", *args, topic=TOPIC) for i in range(8)]
    children.go(consumers)
    peak = 0
    while any(c.proc.poll() is None for c in consumers):
        time.sleep(0.002)
        stats = queue.stats().get(TOPIC)  # the database's own count of leases now
        peak = max(peak, 0 if stats is None else stats.leased)
        assert peak <= 3, f"{peak} messages leased at once under a limit of 3"
    reports = children.results(consumers)
    assert [r["errors"] for r in reports] == [[]] * len(reports)
    received = Counter(row[0] for r in reports for row in r["received"])
    assert set(received) == sent
    assert max(received.values()) == 1  # each once (every lease outlasts the run)
    assert peak >= 1  # the sampler saw the leases it bounds


@pytest.mark.sync_only("its consumers are processes of their own, on the synchronous API")
def test_racing_processes_never_claim_more_than_the_rate(
    queue: Queue, children: Children, tmp_path: Path
) -> None:
    sent = _fill(queue, 120)
    done = tmp_path / "produced"
    done.touch()
    args = ["--batch", "10", "--wait", "0.3", "--until", str(done)]
    consumers = [children.start("consume", f"c{i}", *args, topic=TOPIC) for i in range(4)]
    began = time.monotonic()
    queue.set_limit(TOPIC, rate=5, per=1)  # a full bucket of 5, then 5 per second
    children.go(consumers)  # (the bucket holds at most 5 however long they take to start)
    watch = time.monotonic()  # 10 s of sampling once they run, however long they took
    claimed = 0
    while time.monotonic() - watch < 10:
        time.sleep(0.5)
        elapsed = time.monotonic() - began
        stats = queue.stats().get(TOPIC)
        claimed = len(sent) - (0 if stats is None else stats.ready)
        bound = 5 + 5 * (time.monotonic() - began)  # one burst and the rate since the set
        assert claimed <= bound, f"{claimed} claimed in {elapsed:.1f}s at 5 per second"
    assert claimed >= 5  # the burst at least
    queue.set_limit(TOPIC, rate=None)  # let them drain the rest
    reports = children.results(consumers)
    assert [r["errors"] for r in reports] == [[]] * len(reports)
    received = Counter(row[0] for r in reports for row in r["received"])
    assert set(received) == sent
    assert max(received.values()) == 1
