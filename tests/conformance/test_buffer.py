"""Buffer: topic-fair consumption under topic locks, per-topic quotas, prefetch and drops.

The last test drains a queue with Buffers in separate processes: this module is also the child
(``python -m tests.conformance.test_buffer --url ... --prefix ... --out ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from squeal import Buffer as SyncBuffer
from squeal import LeaseLost, Message, Queue
from tests.aio_facade import QueueFacade
from tests.race import joined, race

REPO = Path(__file__).resolve().parents[2]


def Buffer(queue: Queue, **options: Any) -> SyncBuffer:
    """squeal.Buffer, or under an ``aio:`` variant an AsyncBuffer behind its sync facade."""
    if isinstance(queue, QueueFacade):
        return queue.buffer(**options)  # type: ignore[return-value]
    return SyncBuffer(queue, **options)


def _get(buffer: SyncBuffer) -> Message:
    msg = buffer.get()
    assert msg is not None, "expected the Buffer to hand out a message"
    return msg


def _outstanding(messages: list[Message]) -> Counter[str]:
    return Counter(m.topic for m in messages if not m.settled)


# -- the seed's scenario ------------------------------------------------------------------------


def test_quota_one_per_topic_and_an_ack_frees_the_next_message_of_the_same_topic(
    queue: Queue,
) -> None:
    queue.put_many([f"a{i}".encode() for i in range(100)], "a")
    queue.put_many([f"b{i}".encode() for i in range(100)], "b")
    buffer = Buffer(queue)

    first, second = _get(buffer), _get(buffer)
    assert {first.topic, second.topic} == {"a", "b"}
    assert buffer.get() is None  # both topics at their quota of one
    assert sorted(buffer.held_topics()) == ["a", "b"]

    first.ack()
    third = _get(buffer)
    assert third.topic == first.topic
    assert buffer.get() is None
    second.ack()
    assert _get(buffer).topic == second.topic
    buffer.close()


def test_an_ack_in_the_callers_transaction_frees_the_quota_once_it_committed(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put_many([b"a1", b"a2"], "a")
    with Buffer(queue) as buffer:
        first = _get(buffer)
        with engine.connect() as conn:
            first.ack(connection=conn)
            assert buffer.get() is None  # not committed: the slot stays taken
            conn.rollback()
        assert buffer.get() is None  # rolled back: still leased to this handle
        with engine.begin() as conn:
            first.ack(connection=conn)
        second = _get(buffer)  # committed: the Buffer learned it from the database
        assert second.payload == b"a2"
        assert first.settled
        second.ack()


# SQLite has one writer: the open transaction would hold the Buffer's own lock release too.
@pytest.mark.dialects("postgresql", "mysql")
def test_closing_does_not_nack_a_message_acked_in_an_open_transaction(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.put(b"a", "a")
    buffer = Buffer(queue)
    msg = _get(buffer)
    with engine.connect() as conn:
        msg.ack(connection=conn)
        buffer.close()  # a nack here would wait for this transaction's own row lock
        conn.commit()
    assert queue.stats() == {}


def test_buffer_delivers_every_message_once_in_priority_then_fifo_order_per_topic(
    queue: Queue,
) -> None:
    for topic in ("a", "b"):
        queue.put_many([f"{topic}{i}".encode() for i in range(30)], topic)
    queue.put(b"a-urgent", "a", priority=5)
    seen: dict[str, list[bytes]] = defaultdict(list)
    with Buffer(queue, extra_buffer_multiplier=4) as buffer:
        for msg in buffer:
            seen[msg.topic].append(msg.payload)
            msg.ack()
        assert buffer.held_topics() == []
    assert seen["a"] == [b"a-urgent", *(f"a{i}".encode() for i in range(30))]
    assert seen["b"] == [f"b{i}".encode() for i in range(30)]
    assert queue.stats() == {}


def test_iteration_stops_when_every_held_topic_is_at_its_quota(queue: Queue) -> None:
    for topic in ("a", "b", "c"):
        queue.put_many([b"x"] * 5, topic)
    buffer = Buffer(queue, topic_quotas={"b": 2})
    taken = list(buffer)
    assert _outstanding(taken) == {"a": 1, "b": 2, "c": 1}
    queue.ack_many(taken)  # settling in a batch frees the slots too
    assert len(list(buffer)) == 4
    buffer.close()


def test_get_with_wait_returns_a_message_put_meanwhile(queue: Queue) -> None:
    buffer = Buffer(queue)
    assert buffer.get() is None
    timer = threading.Timer(0.2, lambda: queue.put(b"late", "a"))
    timer.start()
    msg = buffer.get(wait=10.0)
    joined([timer])
    assert msg is not None
    assert msg.payload == b"late"
    msg.ack()
    buffer.close()


def test_bad_options_are_refused(queue: Queue) -> None:
    with pytest.raises(TypeError):
        Buffer("not a queue")  # type: ignore[arg-type]
    options: dict[str, Any]
    for options in (
        {"default_topic_quota": 0},
        {"extra_buffer_multiplier": 0},
        {"max_topic_idle": -1},
        {"topic_quotas": {"a": 0}},
        {"topic_quotas": {"": 1}},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 (the options' own messages differ)
            Buffer(queue, **options)


# -- quotas -------------------------------------------------------------------------------------


def test_never_more_than_the_quota_of_a_topic_is_outstanding(queue: Queue) -> None:
    quotas = {"a": 3, "b": 1}
    for topic in ("a", "b", "c"):
        queue.put_many([b"x"] * 40, topic)
    rnd = random.Random(7)
    held: list[Message] = []
    delivered = 0
    with Buffer(queue, default_topic_quota=2, topic_quotas=quotas) as buffer:
        for _ in range(2000):
            if delivered == 120:
                break
            msg = buffer.get()
            if msg is not None:
                delivered += 1
                held.append(msg)
            for topic, n in _outstanding(held).items():
                assert n <= quotas.get(topic, 2), (topic, n)
            if held and (msg is None or rnd.random() < 0.4):
                done = held.pop(rnd.randrange(len(held)))
                settle = rnd.choice(["ack", "release", "nack"])
                if settle == "nack":
                    done.nack(delay=0)
                else:
                    getattr(done, settle)()
    assert delivered == 120


def test_half_ack_frees_the_slot_but_keeps_the_message_leased(queue: Queue) -> None:
    queue.put_many([b"1", b"2", b"3"], "a")
    buffer = Buffer(queue, extra_buffer_multiplier=3)
    first = _get(buffer)
    assert buffer.get() is None
    buffer.half_ack(first)
    buffer.half_ack(first)  # a second half_ack changes nothing
    second = _get(buffer)
    assert second.topic == "a"
    assert buffer.get() is None  # the second one counts; the half-acked one does not
    assert queue.stats()["a"].leased == 3
    assert queue.get("a") is None  # the buffer leases the rest (prefetch), nobody else gets it
    first.ack()  # still ours to settle
    assert buffer.get() is None
    second.ack()
    assert _get(buffer).payload == b"3"
    buffer.close()


# -- dropping topics ----------------------------------------------------------------------------


def test_idle_topic_is_dropped_and_its_prefetch_released_without_counting_an_attempt(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue()
    ids = q.put_many([b"1", b"2", b"3", b"4"], "a")
    buffer = Buffer(q, extra_buffer_multiplier=3, max_topic_idle=0.2)
    first = _get(buffer)
    assert first.attempts == 1
    first.ack()
    assert q.stats()["a"].leased == 2  # the prefetch of three, one delivered
    time.sleep(0.3)
    buffer.touch()
    assert buffer.held_topics() == []
    assert q.held_topics() == []

    other = make_queue()
    lock = other.acquire_topic()
    assert lock is not None
    assert lock.topic == "a"
    lock.release()
    again = q.get_many("a", 10)
    assert [m.id for m in again] == ids[1:]
    assert [m.attempts for m in again] == [1, 1, 1]  # the Buffer's claims were undone
    buffer.close()


def test_topic_left_idle_between_gets_is_dropped_before_serving_again(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue()
    q.put_many([b"1", b"2"], "a")
    buffer = Buffer(q, max_topic_idle=0.2)
    _get(buffer).ack()
    time.sleep(0.3)
    second = _get(buffer)  # dropped (prefetch released), then locked and claimed again
    assert second.payload == b"2"
    assert second.attempts == 1
    buffer.close()


def test_a_long_job_does_not_make_its_topic_idle(make_queue: Callable[..., Queue]) -> None:
    q = make_queue()
    q.put_many([b"1", b"2"], "a")
    buffer = Buffer(q, max_topic_idle=2.0)  # the next get comes well within it
    first = _get(buffer)
    [lock] = q.held_topics()
    time.sleep(2.2)  # the job outlasts max_topic_idle; its settle counts as activity
    first.ack()
    assert _get(buffer).payload == b"2"
    assert q.held_topics() == [lock]  # never dropped and locked again
    buffer.close()


def test_empty_topic_is_dropped_and_its_lock_released(make_queue: Callable[..., Queue]) -> None:
    q = make_queue()
    q.put_many([b"1", b"2"], "a")
    buffer = Buffer(q)
    _get(buffer).ack()
    _get(buffer).ack()
    assert buffer.get() is None
    assert buffer.held_topics() == []
    assert q.held_topics() == []
    q.put(b"3", "a")
    lock = make_queue().acquire_topic()
    assert lock is not None
    assert lock.topic == "a"
    lock.release()
    buffer.close()


def test_topic_with_messages_in_processing_is_kept_while_empty(queue: Queue) -> None:
    queue.put(b"1", "a")
    buffer = Buffer(queue)
    msg = _get(buffer)
    assert buffer.get() is None
    assert buffer.held_topics() == ["a"]
    msg.release()  # back to ready, not counted: the same Buffer serves it again
    again = _get(buffer)
    assert (again.id, again.attempts) == (msg.id, 1)
    again.ack()
    buffer.close()


# -- close and locks ----------------------------------------------------------------------------


def test_close_releases_prefetch_nacks_what_was_handed_out_and_frees_the_locks(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(failure_base_delay=0.0)
    a_ids = q.put_many([f"a{i}".encode() for i in range(10)], "a")
    b_ids = q.put_many([f"b{i}".encode() for i in range(9)], "b")
    buffer = Buffer(q, default_topic_quota=2)
    a1, a2, b1 = _get(buffer), _get(buffer), _get(buffer)
    assert [a1.id, a2.id, b1.id] == [a_ids[0], a_ids[1], b_ids[0]]
    a1.ack()
    buffer.close()
    buffer.close()  # closing twice does nothing
    assert a2.settled
    assert b1.settled
    with pytest.raises(ValueError, match="closed"):
        buffer.get()
    assert q.held_topics() == []

    other = make_queue()
    locks = [other.acquire_topic(), other.acquire_topic()]
    assert sorted(lock.topic for lock in locks if lock is not None) == ["a", "b"]
    other.release_topics()
    attempts = {m.id: m.attempts for t in ("a", "b") for m in q.get_many(t, 20)}
    assert set(attempts) == set(a_ids[1:]) | set(b_ids)
    assert attempts[a2.id] == attempts[b1.id] == 2  # nacked: the attempt counted
    assert {attempts[i] for i in attempts if i not in (a2.id, b1.id)} == {1}  # released


def test_two_buffers_never_hold_the_same_topic(make_queue: Callable[..., Queue]) -> None:
    q1, q2 = make_queue(), make_queue()
    q1.put_many([b"x"] * 5, "a")
    q1.put_many([b"x"] * 4, "b")
    one, two = Buffer(q1), Buffer(q2)
    assert _get(one).topic == "a"
    assert _get(two).topic == "b"
    assert one.get() is None
    assert two.get() is None  # the other topic is locked
    one.close()
    assert _get(two).topic == "a"
    two.close()


def test_touch_keeps_the_locks_and_every_lease_alive(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(visibility_timeout=2.5, topic_lock_timeout=2.5)
    ids = q.put_many([b"x"] * 5, "a")
    buffer = Buffer(q)
    first = _get(buffer)  # the prefetch holds the second message too
    for _ in range(3):
        time.sleep(1.0)  # past both timeouts in all, touched in time with 1.5 s to spare
        buffer.touch()
    other = make_queue()
    assert other.acquire_topic() is None
    assert [m.id for m in other.get_many("a", 10)] == ids[2:]
    first.ack()  # the lease held
    assert _get(buffer).id == ids[1]
    buffer.close()


def test_prefetched_message_past_half_its_lease_is_renewed_when_handed_out(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(visibility_timeout=4.0)
    ids = q.put_many([b"1", b"2", b"3"], "a")
    buffer = Buffer(q, extra_buffer_multiplier=3)
    _get(buffer).ack()
    time.sleep(2.2)
    second = _get(buffer)  # claimed 2.2 s ago: touched before it is handed out
    time.sleep(2.1)  # its new lease has 1.9 s left, for a slow machine's stalls
    other = make_queue()
    stolen = other.get_many("a", 10)  # the third one's lease ran out; the second one's did not
    assert [m.id for m in stolen] == [ids[2]]
    second.ack()
    assert buffer.get() is None  # its prefetched copy of the third one is stale: skipped
    stolen[0].ack()
    buffer.close()


def test_a_lost_lock_stops_the_buffer_serving_that_topic(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(topic_lock_timeout=0.3)
    q.put_many([b"x"] * 5, "a")
    buffer = Buffer(q, extra_buffer_multiplier=3)
    first = _get(buffer)
    time.sleep(0.4)
    other = make_queue()
    lock = other.acquire_topic()  # the lock ran out: taken over
    assert lock is not None
    assert lock.topic == "a"
    assert buffer.get() is None
    assert buffer.held_topics() == []
    assert len(other.get_many("a", 10)) == 4  # the prefetch was given back
    first.ack()
    lock.release()
    buffer.close()


def test_settling_on_other_threads_frees_the_slots(queue: Queue) -> None:
    queue.put_many([b"x"] * 20, "a")
    buffer = Buffer(queue, default_topic_quota=4)
    done = 0
    while done < 20:
        batch = list(buffer)
        assert 0 < len(batch) <= 4
        assert race([m.ack for m in batch]) == [None] * len(batch)
        done += len(batch)
    assert buffer.get() is None
    buffer.close()


def test_lease_lost_on_touch_frees_the_slot(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(visibility_timeout=0.3, topic_lock_timeout=30)
    q.put_many([b"1", b"2"], "a")
    buffer = Buffer(q, extra_buffer_multiplier=1)
    first = _get(buffer)
    time.sleep(0.4)
    taken = make_queue().get("a")  # the lease ran out and someone else took it
    assert taken is not None
    assert taken.id == first.id
    buffer.touch()
    with pytest.raises(LeaseLost):
        first.ack()
    assert _get(buffer).payload == b"2"
    taken.ack()
    buffer.close()


def test_topics_taken_and_dropped_are_logged_without_payloads(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    queue.put_many([b"secret-1", b"secret-2"], "a")
    with caplog.at_level(logging.DEBUG, logger="squeal"), Buffer(queue) as buffer:
        for msg in buffer:
            msg.ack()
    events = [
        (getattr(r, "squeal_event", None), getattr(r, "topic", None), getattr(r, "reason", None))
        for r in caplog.records
        if str(getattr(r, "squeal_event", "")).startswith("buffer_")
    ]
    assert events == [("buffer_topic_taken", "a", None), ("buffer_topic_dropped", "a", "empty")]
    assert "secret" not in caplog.text


# -- separate processes -------------------------------------------------------------------------

TOPICS = 20
INITIAL_PER_TOPIC = 40
ROUNDS, PER_ROUND = 6, 10
CHILDREN = 3
DEADLINE = 150.0


@pytest.mark.sync_only(
    "its Buffers are sync child processes: on asyncio only the puts would differ"
)
def test_buffers_in_separate_processes_drain_the_queue_exactly_once_topic_by_topic(
    queue: Queue, db_url: str, prefix: str, tmp_path: Path
) -> None:
    topics = [f"t{i:02d}" for i in range(TOPICS)]
    expected: list[int | None] = []
    done_file = tmp_path / "producer.done"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    children = []
    for n in range(CHILDREN):
        out = tmp_path / f"child{n}.json"
        command = [sys.executable, "-m", "tests.conformance.test_buffer", "--url", db_url]
        command += ["--prefix", prefix, "--out", str(out), "--until", str(done_file)]
        errors = (tmp_path / f"child{n}.stderr").open("wb")
        proc = subprocess.Popen(command, cwd=REPO, env=env, stderr=errors)
        children.append((proc, out, errors))
    try:
        # Every child runs its Buffer before the first put, however slowly it started: one
        # that came first cannot drain the first batch alone.
        started = time.monotonic()
        while not all(out.with_suffix(".ready").exists() for _, out, _ in children):
            assert all(proc.poll() is None for proc, _, _ in children), "a child failed"
            assert time.monotonic() - started < DEADLINE, "the children did not start"
            time.sleep(0.05)
        for topic in topics:
            expected += queue.put_many([topic.encode()] * INITIAL_PER_TOPIC, topic)
        # Each round waits for the queue to drain: every topic is then dropped by its process
        # and locked again by whichever process asks first.
        for _ in range(ROUNDS):
            _wait_until_drained(queue, time.monotonic() + DEADLINE)
            for topic in topics:
                expected += queue.put_many([topic.encode()] * PER_ROUND, topic)
        done_file.touch()
        for proc, _, _ in children:
            assert proc.wait(timeout=DEADLINE + 30) == 0, "a child failed"
    finally:
        for proc, _, errors in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            errors.close()

    runs = [json.loads(out.read_text()) for _, out, _ in children]
    for n, run in enumerate(runs):
        assert run["errors"] == [], (n, (tmp_path / f"child{n}.stderr").read_text()[-3000:])
    acked = Counter(row[0] for run in runs for row in run["work"])
    assert len(expected) == TOPICS * (INITIAL_PER_TOPIC + ROUNDS * PER_ROUND) == 2000
    assert None not in expected
    assert sorted(acked) == sorted(i for i in expected if i is not None)
    assert set(acked.values()) == {1}, "a message was acked twice"
    assert queue.stats() == {}
    assert sum(1 for run in runs if run["work"]) >= 2

    # Per topic, the spans (handed out .. acked) of different processes never overlap.
    handovers = 0
    for topic in topics:
        spans = sorted(
            (start, end, n)
            for n, run in enumerate(runs)
            for _, t, start, end in run["work"]
            if t == topic
        )
        latest_end: dict[int, float] = {}
        for start, end, n in spans:
            for other, other_end in latest_end.items():
                assert other == n or other_end < start, f"{topic}: processes {other} and {n}"
            latest_end[n] = max(end, latest_end.get(n, end))
        handovers += len(latest_end) - 1
    assert handovers > 0, "no topic ever moved between processes: the check above proved nothing"


def _wait_until_drained(queue: Queue, deadline: float) -> None:
    while queue.stats():
        assert time.monotonic() < deadline, "the children did not drain the queue in time"
        time.sleep(0.05)


def _child(args: argparse.Namespace) -> None:
    """Drain with a Buffer, a few messages at a time; record (id, topic, start, end) per ack."""
    q = Queue(sa.create_engine(args.url), prefix=args.prefix)
    work: list[list[Any]] = []
    errors: list[str] = []
    deadline = time.monotonic() + DEADLINE
    try:
        with Buffer(q, default_topic_quota=2) as buffer:
            Path(args.out).with_suffix(".ready").touch()
            while time.monotonic() < deadline:
                batch: list[tuple[Message, float]] = []
                for _ in range(3):
                    msg = buffer.get()
                    if msg is None:
                        break
                    batch.append((msg, time.monotonic()))
                for msg, start in batch:
                    if msg.payload != msg.topic.encode():
                        errors.append(f"message {msg.id} of {msg.topic} has a wrong payload")
                    msg.ack()
                    work.append([msg.id, msg.topic, start, time.monotonic()])
                if batch:
                    continue
                if os.path.exists(args.until) and not q.stats():
                    break
                time.sleep(0.02)
            else:
                errors.append("deadline exceeded")
    except Exception as exc:
        errors.append(repr(exc))
    finally:
        q.close()
    Path(args.out).write_text(json.dumps({"work": work, "errors": errors}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for option in ("--url", "--prefix", "--out", "--until"):
        parser.add_argument(option, required=True)
    _child(parser.parse_args())
