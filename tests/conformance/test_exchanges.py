"""Exchanges: a publish puts a copy into every topic bound to the exchange (fanout), or into
those bound with its key (direct); bindings are shared by every queue object and may expire."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from squeal import Message, Queue, ValidationError
from tests.race import race


def _one(q: Queue, topic: str) -> Message:
    msg = q.get(topic)
    assert msg is not None, f"expected a copy in {topic!r}"
    return msg


def test_a_publish_puts_a_copy_into_every_bound_topic(queue: Queue) -> None:
    queue.bind("events", "billing")
    queue.bind("events", "audit")
    ids = queue.publish(b"order 7", "events", priority=3, headers={"kind": "order"})
    assert sorted(ids) == ["audit", "billing"]
    assert ids["audit"] != ids["billing"]
    for topic in ("audit", "billing"):
        msg = _one(queue, topic)
        assert (msg.id, msg.payload, msg.priority) == (ids[topic], b"order 7", 3)
        assert msg.headers == {"kind": "order"}
        msg.ack()  # each copy is its own message
    assert queue.stats() == {}


def test_a_publish_with_a_key_reaches_the_topics_bound_with_that_key(queue: Queue) -> None:
    queue.bind("logs", "errors", key="error")
    queue.bind("logs", "everything", key="error")
    queue.bind("logs", "everything", key="info")  # bound twice: still one copy
    queue.bind("logs", "infos", key="info")
    assert sorted(queue.publish(b"disk full", "logs", key="error")) == ["errors", "everything"]
    assert sorted(queue.publish(b"started", "logs", key="info")) == ["everything", "infos"]
    assert queue.publish(b"nobody", "logs", key="debug") == {}
    assert sorted(queue.publish(b"all", "logs")) == ["errors", "everything", "infos"]
    assert queue.topics() == {"errors": 2, "everything": 3, "infos": 2}


def test_a_publish_to_an_exchange_without_bindings_stores_nothing(queue: Queue) -> None:
    assert queue.publish(b"x", "nowhere") == {}
    queue.bind("other", "t")
    assert queue.publish(b"x", "nowhere") == {}
    assert queue.stats() == {}


def test_bindings_are_shared_listed_and_removed(make_queue: Callable[..., Queue]) -> None:
    one, two = make_queue(), make_queue()
    one.bind("e", "a", key="k1")
    one.bind("e", "a", key="k2", ttl=5)
    one.bind("e", "b")
    one.bind("f", "a")
    listed = [(b.exchange, b.key, b.topic, b.ttl, b.expires_at) for b in two.bindings("e")]
    assert listed == [
        ("e", "", "b", None, None),
        ("e", "k1", "a", None, None),
        ("e", "k2", "a", 5.0, None),
    ]
    assert [b.exchange for b in two.bindings()] == ["e", "e", "e", "f"]
    assert sorted(two.publish(b"x", "e")) == ["a", "b"]  # published by another object
    assert two.unbind("e", "a", key="k1") == 1
    assert two.unbind("e", "a", key="k1") == 0
    assert [b.key for b in one.bindings("e")] == ["", "k2"]
    assert one.unbind("e", "a") == 1  # every key
    assert [b.topic for b in one.bindings("e")] == ["b"]
    assert one.publish(b"y", "e", key="k2") == {}
    assert one.topics() == {"a": 1, "b": 1}  # what was published before stays


def test_binding_again_changes_the_ttl_and_renews_the_lifetime(queue: Queue) -> None:
    queue.bind("e", "t", ttl=60, expires=60)
    (first,) = queue.bindings("e")
    assert first.ttl == 60.0
    assert first.expires_at is not None
    queue.bind("e", "t")  # no ttl, no lifetime now
    (again,) = queue.bindings("e")
    assert (again.ttl, again.expires_at) == (None, None)


def test_an_expired_binding_receives_nothing_and_is_deleted(
    queue: Queue, engine: sa.Engine, prefix: str
) -> None:
    queue.bind("control", "worker-1", expires=0.3)
    queue.bind("control", "worker-2", expires=60)
    queue.bind("control", "worker-1-renewed", expires=0.3)
    queue.bind("control", "worker-1-renewed", expires=60)  # a live consumer renews
    time.sleep(0.4)
    assert [b.topic for b in queue.bindings("control")] == ["worker-1-renewed", "worker-2"]
    assert sorted(queue.publish(b"ping", "control")) == ["worker-1-renewed", "worker-2"]
    with engine.connect() as conn:  # the publish deleted the expired row
        rows = conn.execute(sa.text(f"SELECT count(*) FROM {prefix}_binding")).scalar()
    assert rows == 2


def test_a_binding_s_ttl_limits_each_copy(queue: Queue) -> None:
    queue.bind("e", "short", ttl=0.2)
    queue.bind("e", "long")
    queue.publish(b"x", "e")
    queue.publish(b"y", "e", ttl=0.2)  # the publish's own ttl reaches every copy
    time.sleep(0.5)
    assert queue.get("short") is None  # both copies died unclaimed
    assert [d.payload for d in queue.dead("short")] == [b"x", b"y"]
    assert {d.reason for d in queue.dead("short")} == {"expired"}
    msg = _one(queue, "long")
    assert msg.payload == b"x"
    msg.ack()
    assert queue.get("long") is None  # y's copy died too
    assert [d.payload for d in queue.dead("long")] == [b"y"]


def test_a_publish_in_the_caller_s_transaction_is_every_copy_or_none(
    queue: Queue, engine: sa.Engine
) -> None:
    queue.bind("e", "a")
    queue.bind("e", "b")
    with engine.connect() as conn:
        assert len(queue.publish(b"x", "e", connection=conn)) == 2
        conn.rollback()
    assert queue.stats() == {}
    with engine.begin() as conn:
        ids = queue.publish(b"y", "e", connection=conn)
        assert queue.size("a") == 0
    assert {t: _one(queue, t).id for t in ("a", "b")} == ids


def test_a_delayed_publish_delays_every_copy(queue: Queue) -> None:
    queue.bind("e", "a")
    queue.bind("e", "b")
    queue.publish(b"x", "e", delay=60)
    assert queue.get("a") is None
    assert {t: (s.ready, s.delayed) for t, s in queue.stats().items()} == {
        "a": (0, 1),
        "b": (0, 1),
    }


@pytest.mark.sync_only(
    "threads binding in transactions of their own engine connections: a property of the "
    "database's locking, the same under squeal.aio"
)
def test_concurrent_binds_publishes_and_unbinds_of_one_exchange_all_succeed(
    make_queue: Callable[..., Queue], engine: sa.Engine
) -> None:
    """Consumers starting together bind the same rows. Each bind runs in a transaction of
    the test's own, which squeal never retries, so a deadlock between binds (an insert that
    met the row and then updated it did, on MariaDB) fails the test instead of being hidden
    by a retry."""
    queues = [make_queue() for _ in range(6)]

    def binds(q: Queue, n: int) -> int:
        for _ in range(10):
            with engine.begin() as conn:
                q.bind("e", "shared", expires=60, connection=conn)
                q.bind("e", f"own-{n}", ttl=60, connection=conn)
            q.publish(b"x", "e")
        return q.unbind("e", f"own-{n}")

    outcomes = race([lambda q=q, n=n: binds(q, n) for n, q in enumerate(queues)])
    assert outcomes == [1] * len(queues)
    assert [(b.topic, b.ttl) for b in queues[0].bindings("e")] == [("shared", None)]
    assert queues[0].size("shared") == 60


def test_a_bind_deletes_the_exchange_s_expired_bindings(
    queue: Queue, engine: sa.Engine, prefix: str
) -> None:
    """An exchange nobody publishes to (a reply exchange) keeps no dead rows."""
    queue.bind("replies", "client-1", expires=0.1)
    queue.bind("replies", "client-2", expires=0.1)
    queue.bind("other", "kept", expires=0.1)
    time.sleep(0.2)
    queue.bind("replies", "client-3", expires=60)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT exchange FROM {prefix}_binding")).scalars()
        left = sorted(r.decode() if isinstance(r, bytes) else r for r in rows)
    assert left == ["other", "replies"]  # another exchange's rows wait for its own binds


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda q: q.bind("", "t"), "exchange"),
        (lambda q: q.bind("e", ""), "topic"),
        (lambda q: q.bind("e", "t", key="k" * 256), "key"),
        (lambda q: q.bind("e", "t", ttl=0), "ttl"),
        (lambda q: q.bind("e", "t", expires=-1), "expires"),
        (lambda q: q.publish("text", "e"), "payload"),
        (lambda q: q.publish(b"x", "e", priority=2**40), "priority"),
        (lambda q: q.unbind("e", "t", key=7), "key"),
    ],
)
def test_invalid_exchange_calls_raise_before_anything_is_sent(
    queue: Queue, call: Callable[[Queue], object], message: str
) -> None:
    queue.bind("e", "t")
    with pytest.raises((ValidationError, TypeError), match=message):
        call(queue)
    assert [b.topic for b in queue.bindings()] == ["t"]
    assert queue.stats() == {}
