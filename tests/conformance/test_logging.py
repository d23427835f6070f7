"""Structured logging: squeal's events reach the ``squeal`` logger with their fields as attributes.

Payload bytes never appear in any record, and normal operation logs nothing at WARNING or above.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from squeal import LeaseLost, Queue

#: A payload that must never show up in a log record, in any form.
SECRET = b"SECRET-PAYLOAD-7f3a9c"


def fields(records: list[logging.LogRecord], *names: str) -> list[tuple[object, ...]]:
    """The named attributes of each record, as tuples."""
    return [tuple(getattr(r, name) for name in names) for r in records]


@pytest.fixture
def events(caplog: pytest.LogCaptureFixture) -> Callable[[str], list[logging.LogRecord]]:
    """Capture squeal's DEBUG records; call the result with an event name to get its records."""
    caplog.set_level(logging.DEBUG, logger="squeal")

    def named(name: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "squeal_event", None) == name]

    return named


def test_put_claim_and_ack_log_their_topic_ids_and_counts(
    queue: Queue, events: Callable[[str], list[logging.LogRecord]]
) -> None:
    first = queue.put(SECRET, "t")
    more = queue.put_many([SECRET, SECRET], "t")
    puts = events("put")
    assert fields(puts, "topic", "message_ids", "count", "deduplicated") == [
        ("t", [first], 1, 0),
        ("t", more, 2, 0),
    ]
    assert all(r.name == "squeal" and r.levelno == logging.DEBUG for r in puts)
    assert fields(puts, "caller_transaction") == [(False,), (False,)]

    msgs = queue.get_many("t", 10)
    assert queue.get("t") is None  # an empty poll logs no claim
    claims = events("claim")
    assert fields(claims, "topic", "count", "message_ids", "attempts") == [
        ("t", 3, [first, *more], [1, 1, 1])
    ]

    msgs[0].ack()
    queue.ack_many(msgs[1:])
    assert fields(events("ack"), "topic", "message_ids", "count") == [
        ("t", [first], 1),
        ("t", more, 2),
    ]


def test_a_put_in_the_callers_transaction_says_so(
    queue: Queue, engine: sa.Engine, events: Callable[[str], list[logging.LogRecord]]
) -> None:
    with engine.begin() as conn:
        queue.put(SECRET, "t", connection=conn)
    assert fields(events("put"), "caller_transaction") == [(True,)]


def test_nack_logs_delay_and_attempts_and_the_last_one_logs_dead(
    make_queue: Callable[..., Queue], events: Callable[[str], list[logging.LogRecord]]
) -> None:
    q = make_queue(max_attempts=2)
    msg_id = q.put(SECRET, "t")
    first = q.get("t")
    assert first is not None
    first.nack(delay=0)
    second = q.get("t")
    assert second is not None
    second.nack()
    assert fields(events("nack"), "topic", "message_id", "attempts", "delay", "dead") == [
        ("t", msg_id, 1, 0.0, False),
        ("t", msg_id, 2, None, True),
    ]
    dead = events("dead")
    assert fields(dead, "topic", "message_id", "attempts", "reason", "levelno") == [
        ("t", msg_id, 2, "nack", logging.INFO)
    ]
    assert [d.id for d in q.dead("t")] == [msg_id]


def test_a_message_going_dead_is_logged_at_info_without_debug(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="squeal")
    q = make_queue(max_attempts=1)
    msg_id = q.put(SECRET, "t")
    msg = q.get("t")
    assert msg is not None
    msg.nack()
    dead = [r for r in caplog.records if getattr(r, "squeal_event", None) == "dead"]
    assert fields(dead, "message_id", "reason", "levelno") == [(msg_id, "nack", logging.INFO)]
    assert not [r for r in caplog.records if getattr(r, "squeal_event", None) == "nack"]


def test_release_is_logged(queue: Queue, events: Callable[[str], list[logging.LogRecord]]) -> None:
    msg_id = queue.put(SECRET, "t")
    msg = queue.get("t")
    assert msg is not None
    msg.release()
    assert fields(events("release"), "topic", "message_ids", "count") == [("t", [msg_id], 1)]


def test_lease_lost_is_logged_where_it_is_raised(
    queue: Queue, events: Callable[[str], list[logging.LogRecord]]
) -> None:
    msg_id = queue.put(SECRET, "t")
    stale = queue.get("t", visibility_timeout=0.1)
    assert stale is not None
    time.sleep(0.2)
    fresh = queue.get("t")
    assert fresh is not None
    with pytest.raises(LeaseLost):
        stale.ack()
    with pytest.raises(LeaseLost):
        stale.nack()
    with pytest.raises(LeaseLost):
        queue.touch_many([stale])
    assert fields(events("lease_lost"), "operation", "topic", "message_id", "count", "levelno") == [
        ("ack", "t", msg_id, 1, logging.INFO),
        ("nack", "t", msg_id, 1, logging.INFO),
        ("touch", "t", msg_id, 1, logging.INFO),
    ]
    assert events("ack") == []
    fresh.ack()
    assert len(events("ack")) == 1


def test_deduplicated_puts_log_dedup_blocked_with_their_keys(
    make_queue: Callable[..., Queue], events: Callable[[str], list[logging.LogRecord]]
) -> None:
    q = make_queue(dedup_window=60)
    q.put(SECRET, "t", dedup_key="k")
    q.ack_many(q.get_many("t", 10))
    assert q.put(SECRET, "t", dedup_key="k") is None
    q.put_many([SECRET] * 3, "t", dedup_keys=["k", "new", "new"])
    assert fields(events("dedup_blocked"), "topic", "dedup_keys", "count") == [
        ("t", ["k"], 1),
        ("t", ["k", "new"], 2),
    ]
    assert fields(events("put"), "count", "deduplicated") == [(1, 0), (0, 1), (1, 2)]


def test_no_record_holds_payload_bytes_and_nothing_reaches_warning(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="squeal")
    q = make_queue(max_attempts=2, dedup_window=60)
    q.put(SECRET, "t", dedup_key="k")
    q.put(SECRET, "t", dedup_key="k")
    q.put_many([SECRET, SECRET + b"2"], "t", dedup_keys=[None, "j"])
    for msg in q.get_many("t", 10):
        msg.nack(delay=0)
    q.get_many("t", 10)[0].release()
    for msg in q.get_many("t", 10):
        msg.touch()
        msg.nack(delay=0)
    q.dedup_override(["k"], "t", window=None)
    q.redrive("t")
    q.ack_many(q.get_many("t", 10))
    q.purge("t")

    assert caplog.records, "expected squeal's events at DEBUG"
    texts = {SECRET.decode(), repr(SECRET), SECRET.hex()}
    for record in caplog.records:
        rendered = [record.getMessage(), *(repr(v) for v in vars(record).values())]
        for text in texts:
            assert not any(text in r for r in rendered), f"payload leaked in {record.getMessage()}"
        assert record.levelno < logging.WARNING, record.getMessage()
