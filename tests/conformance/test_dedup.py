"""Dedup keys: a put whose key matches a live message of its topic writes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from squeal import Message, Queue


def _claim(q: Queue, topic: str = "default", **kwargs: Any) -> Message:
    msg = q.get(topic, **kwargs)
    assert msg is not None, f"expected a message in topic {topic!r}"
    return msg


def _total(q: Queue, topic: str) -> int:
    stats = q.stats().get(topic)
    return 0 if stats is None else stats.total


def test_put_with_a_key_of_a_ready_message_returns_none_and_writes_nothing(
    queue: Queue,
) -> None:
    first = queue.put(b"first", "t", dedup_key="k")
    assert isinstance(first, int)
    assert queue.put(b"second", "t", dedup_key="k") is None
    assert _total(queue, "t") == 1
    msg = _claim(queue, "t")
    assert (msg.id, msg.payload) == (first, b"first")
    assert queue.get("t") is None


def test_leased_and_redelivered_messages_still_hold_their_key(queue: Queue) -> None:
    queue.put(b"first", "t", dedup_key="k")
    _claim(queue, "t", visibility_timeout=0.2)
    assert queue.put(b"second", "t", dedup_key="k") is None
    assert _total(queue, "t") == 1
    time.sleep(0.3)
    assert queue.put(b"third", "t", dedup_key="k") is None
    assert _claim(queue, "t").payload == b"first"
    assert _total(queue, "t") == 1


def test_delayed_and_backing_off_messages_hold_their_keys(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(failure_base_delay=60.0)
    q.put(b"delayed", "t", dedup_key="d", delay=60)
    q.put(b"failing", "t", dedup_key="f")
    _claim(q, "t").nack()
    assert q.put(b"again", "t", dedup_key="d") is None
    assert q.put(b"again", "t", dedup_key="f") is None
    assert q.stats()["t"].delayed == 2
    assert _total(q, "t") == 2


def test_acked_message_frees_its_key(queue: Queue) -> None:
    queue.put(b"first", "t", dedup_key="k")
    _claim(queue, "t").ack()
    second = queue.put(b"second", "t", dedup_key="k")
    assert isinstance(second, int)
    assert _claim(queue, "t").payload == b"second"


def test_dead_message_still_holds_its_key(make_queue: Callable[..., Queue]) -> None:
    q = make_queue(max_attempts=1)
    q.put(b"first", "t", dedup_key="k")
    _claim(q, "t").nack()
    assert q.put(b"second", "t", dedup_key="k") is None
    assert q.size("t") == 0
    assert [d.payload for d in q.dead("t")] == [b"first"]


def test_same_key_in_another_topic_is_not_a_duplicate(queue: Queue) -> None:
    a = queue.put(b"a", "t1", dedup_key="k")
    b = queue.put(b"b", "t2", dedup_key="k")
    assert isinstance(a, int)
    assert isinstance(b, int)
    assert queue.topics() == {"t1": 1, "t2": 1}


def test_messages_without_a_key_are_never_deduplicated(queue: Queue) -> None:
    queue.put(b"x", "t")
    queue.put(b"x", "t")
    assert isinstance(queue.put(b"x", "t", dedup_key=None), int)
    assert queue.size("t") == 3


def test_keys_are_compared_exactly(queue: Queue) -> None:
    keys = ["K", "k", "k ", " k", "\uff4b", "k\t"]
    ids = [queue.put(key.encode(), "t", dedup_key=key) for key in keys]
    assert all(isinstance(i, int) for i in ids)
    assert queue.size("t") == len(keys)
    assert [queue.put(b"dup", "t", dedup_key=key) for key in keys] == [None] * len(keys)
    assert queue.size("t") == len(keys)


def test_unicode_and_maximal_length_keys_deduplicate(queue: Queue) -> None:
    keys = ["📨✉️", "重复数据删除", "é" * 255, "\U0001d518" * 255]
    for key in keys:
        assert isinstance(queue.put(b"a", "t", dedup_key=key), int)
        assert queue.put(b"b", "t", dedup_key=key) is None
        assert isinstance(queue.put(b"c", "t", dedup_key=key[:-1] + "x"), int)
    assert queue.size("t") == 2 * len(keys)


def test_put_many_gives_none_to_a_later_duplicate_in_the_same_batch(queue: Queue) -> None:
    ids = queue.put_many(
        [b"a", b"b", b"dup-of-a", b"c", b"dup-of-b"],
        "t",
        dedup_keys=["ka", "kb", "ka", None, "kb"],
    )
    assert ids[2] is None
    assert ids[4] is None
    kept = [ids[0], ids[1], ids[3]]
    assert all(isinstance(i, int) for i in kept)
    got = queue.get_many("t", 10)
    assert [(m.id, m.payload) for m in got] == list(zip(kept, [b"a", b"b", b"c"], strict=True))


def test_put_many_gives_none_to_keys_of_live_messages(queue: Queue) -> None:
    existing = queue.put(b"old", "t", dedup_key="k1")
    ids = queue.put_many([b"new1", b"new2", b"new3"], "t", dedup_keys=["k1", "k2", None])
    assert ids[0] is None
    assert isinstance(ids[1], int)
    assert isinstance(ids[2], int)
    got = queue.get_many("t", 10)
    assert [(m.id, m.payload) for m in got] == [
        (existing, b"old"),
        (ids[1], b"new2"),
        (ids[2], b"new3"),
    ]


def test_put_many_where_every_key_is_taken_writes_nothing(queue: Queue) -> None:
    queue.put_many([b"a", b"b"], "t", dedup_keys=["ka", "kb"])
    assert queue.put_many([b"c", b"d"], "t", dedup_keys=["kb", "ka"]) == [None, None]
    assert _total(queue, "t") == 2


def test_put_many_ids_follow_the_payloads_when_keys_and_no_keys_mix(queue: Queue) -> None:
    payloads = [b"p0", b"p1", b"p2", b"p3", b"p4", b"p5"]
    keys = [None, "z", None, "a", "m", None]
    ids = queue.put_many(payloads, "t", dedup_keys=keys)
    assert all(isinstance(i, int) for i in ids)
    got = queue.get_many("t", 10)
    assert {m.id: m.payload for m in got} == dict(zip(ids, payloads, strict=True))
    assert [m.payload for m in got] == payloads


def test_key_is_free_again_after_purge(queue: Queue) -> None:
    queue.put(b"a", "t", dedup_key="k")
    queue.purge("t")
    assert isinstance(queue.put(b"b", "t", dedup_key="k"), int)
