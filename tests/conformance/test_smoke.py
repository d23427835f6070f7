from __future__ import annotations

from squeal import Queue


def test_put_then_get_returns_the_payload(queue: Queue) -> None:
    msg_id = queue.put(b"hello", "emails")
    msg = queue.get("emails")
    assert msg is not None
    assert (msg.id, msg.payload, msg.topic) == (msg_id, b"hello", "emails")
    msg.ack()
    assert queue.get("emails") is None
