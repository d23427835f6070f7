"""put / put_many: what goes in comes out exactly, with its topic, priority and delay."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from squeal import Message, Queue


def _claim(q: Queue, topic: str = "default", **kwargs: Any) -> Message:
    msg = q.get(topic, **kwargs)
    assert msg is not None, f"expected a message in topic {topic!r}"
    return msg


def test_put_returns_increasing_integer_ids(queue: Queue) -> None:
    ids = [queue.put(b"x", "t") for _ in range(3)]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 3


def test_put_uses_the_default_topic_when_none_is_given(queue: Queue) -> None:
    msg_id = queue.put(b"x")
    msg = _claim(queue)
    assert (msg.id, msg.topic) == (msg_id, "default")
    assert queue.size("default") == 0


def test_payload_bytes_round_trip_exactly(queue: Queue) -> None:
    payloads = [
        bytes(range(256)) + b"\x00\x00" + bytes(range(255, -1, -1)) + b"\x00",
        b"\x00" * 100,
        b"",
        b"trailing spaces   ",
    ]
    ids = [queue.put(p, "bytes") for p in payloads]
    got = queue.get_many("bytes", 10)
    assert [(m.id, m.payload) for m in got] == list(zip(ids, payloads, strict=True))


def test_bytes_like_payloads_are_delivered_as_bytes(queue: Queue) -> None:
    queue.put(bytearray(b"\x01array\x00"), "t")
    queue.put(memoryview(b"\x01view\x00"), "t")
    queue.put_many((b"a", bytearray(b"b"), memoryview(b"c")), "t")
    got = queue.get_many("t", 10)
    assert {type(m.payload) for m in got} == {bytes}
    assert [m.payload for m in got] == [b"\x01array\x00", b"\x01view\x00", b"a", b"b", b"c"]


def test_payload_exactly_at_max_payload_size_is_accepted(
    make_queue: Callable[..., Queue],
) -> None:
    small = make_queue(max_payload_size=1000)
    payload = bytes(i % 256 for i in range(1000))
    small.put(payload, "small")
    assert _claim(small, "small").payload == payload
    default = make_queue()
    mebibyte = bytes(i * 7 % 256 for i in range(1_048_576))
    default.put(mebibyte, "big")
    assert _claim(default, "big").payload == mebibyte


def test_unicode_and_maximal_length_topics_round_trip(queue: Queue) -> None:
    topics = ["📨", "消息队列", "emails/🇺🇦/ümlaut", "\U0001d518" * 255, "x" * 255]
    ids = {topic: queue.put(topic.encode(), topic) for topic in topics}
    assert queue.topics() == dict.fromkeys(topics, 1)
    for topic in topics:
        assert queue.size(topic) == 1
        msg = _claim(queue, topic)
        assert (msg.id, msg.topic, msg.payload) == (ids[topic], topic, topic.encode())


def test_topics_differing_in_case_or_trailing_space_are_distinct(queue: Queue) -> None:
    for topic in ("A", "a", "a "):
        queue.put(topic.encode(), topic)
    assert queue.topics() == {"A": 1, "a": 1, "a ": 1}
    assert queue.get("b") is None
    assert queue.size("A ") == 0
    for topic in ("A", "a", "a "):
        assert queue.size(topic) == 1
        msg = _claim(queue, topic)
        assert (msg.topic, msg.payload) == (topic, topic.encode())
        assert queue.get(topic) is None


def test_message_carries_the_priority_it_was_put_with(queue: Queue) -> None:
    for priority in (-7, 0, -(2**31), 2**31 - 1):
        queue.put(b"x", "t", priority=priority)
        assert _claim(queue, "t").priority == priority


def test_delayed_message_is_invisible_until_its_delay_passes(queue: Queue) -> None:
    """Invisible (a delay no stall of this machine outlasts), then visible once it passed (a
    short one, waited out)."""
    queue.put(b"later", "t", delay=60)
    assert queue.get("t") is None
    assert queue.size("t") == 0
    assert queue.stats()["t"].delayed == 1
    queue.put(b"soon", "t", delay=0.3)  # (nothing asserted while it waits: a stall could end it)
    time.sleep(0.4)
    assert queue.size("t") == 1
    assert _claim(queue, "t").payload == b"soon"
    assert queue.get("t") is None  # "later" is still delayed


def test_new_message_delay_is_the_default_delay(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(new_message_delay=60)
    q.put(b"later", "t")
    q.put_many([b"a", b"b"], "t")
    assert q.get("t") is None
    assert q.stats()["t"].delayed == 3
    soon = make_queue(new_message_delay=0.3)
    soon.put(b"soon", "t")
    time.sleep(0.4)
    assert q.size("t") == 1


def test_explicit_delay_overrides_new_message_delay(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(new_message_delay=60.0)
    q.put(b"now", "t", delay=0)
    q.put_many([b"many", b"now"], "t", delay=0.0)
    assert q.size("t") == 3
    assert _claim(q, "t").payload == b"now"


def test_put_many_returns_one_id_per_payload_in_delivery_order(queue: Queue) -> None:
    payloads = [b"a", b"b", b"c", b"d"]
    ids = queue.put_many(payloads, "t")
    assert len(ids) == 4
    assert all(isinstance(i, int) for i in ids)
    got = queue.get_many("t", 10)
    assert [(m.id, m.payload) for m in got] == list(zip(ids, payloads, strict=True))


def test_put_many_applies_priority_and_delay_to_every_message(queue: Queue) -> None:
    queue.put(b"first", "t")
    queue.put_many([b"hi1", b"hi2"], "t", priority=5)
    queue.put_many([b"late1", b"late2"], "t", delay=60)
    got = queue.get_many("t", 10)
    assert [(m.payload, m.priority) for m in got] == [(b"hi1", 5), (b"hi2", 5), (b"first", 0)]
    assert queue.stats()["t"].delayed == 2


def test_put_many_larger_than_one_insert_statement_keeps_every_message_in_order(
    queue: Queue,
) -> None:
    payloads = [i.to_bytes(2, "big") for i in range(1500)]
    ids = queue.put_many(payloads, "bulk")
    assert len(ids) == 1500
    assert len(set(ids)) == 1500
    assert queue.size("bulk") == 1500
    got = queue.get_many("bulk", 2000)
    assert [(m.id, m.payload) for m in got] == list(zip(ids, payloads, strict=True))
