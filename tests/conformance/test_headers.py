"""Message headers: a put's small str-to-str map, stored with the message and returned on
every read of it (claimed, peeked, dead), validated before SQL like the payload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from squeal import Queue
from squeal.validation import HEADERS_LIMIT

TRACE = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


def test_headers_come_back_on_every_read(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(max_attempts=1)
    queue.put(b"one", "t", headers={**TRACE, "content-type": "application/json"})
    queue.put_many([b"two", b"three"], "t", headers={"tenant": "ü-42", "empty": ""})
    queue.put(b"none", "t")
    queue.put(b"also none", "t", headers={})
    expected = {
        b"one": {**TRACE, "content-type": "application/json"},
        b"two": {"tenant": "ü-42", "empty": ""},
        b"three": {"tenant": "ü-42", "empty": ""},
        b"none": {},
        b"also none": {},
    }
    assert {p.payload: p.headers for p in queue.peek("t", 10)} == expected
    got = queue.get_many("t", 10)
    assert {m.payload: m.headers for m in got} == expected
    queue.nack_many(got)
    assert {d.payload: d.headers for d in queue.dead("t")} == expected


def test_a_message_s_headers_are_its_own_copy(queue: Queue) -> None:
    queue.put(b"x", "t", headers={"a": "1"})
    msg = queue.get("t")
    assert msg is not None
    msg.headers["a"] = "changed"
    assert msg.headers == {"a": "1"}
    msg.ack()


def test_headers_up_to_the_limit_are_kept(queue: Queue) -> None:
    overhead = len('{"k":""}')
    queue.put(b"x", "t", headers={"k": "v" * (HEADERS_LIMIT - overhead)})
    msg = queue.get("t")
    assert msg is not None
    assert len(msg.headers["k"]) == HEADERS_LIMIT - overhead
    msg.ack()


@pytest.mark.parametrize(
    "headers",
    [
        ["a", "b"],
        "a=b",
        {"a": 1},
        {1: "a"},
        {"a": None},
        {"": "x"},
        {"k" * 256: "x"},
        {"k": "v" * HEADERS_LIMIT},
        {"k": "é" * (HEADERS_LIMIT // 2)},  # two bytes each as stored
    ],
)
def test_bad_headers_are_refused_and_store_nothing(queue: Queue, headers: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        queue.put(b"x", "t", headers=headers)
    with pytest.raises((ValueError, TypeError)):
        queue.put_many([b"x"], "t", headers=headers)
    assert queue.topics() == {}
