"""T13: producer and consumer roles with the GRANTs of docs/security.md, and nothing more."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from squeal import DatabaseError, Queue, Worker

SETUP = {
    "postgresql": [
        "CREATE ROLE {role} LOGIN",
        "GRANT USAGE ON SCHEMA public TO {role}",
        "GRANT SELECT ON {prefix}_alembic_version TO {role}",
    ],
    "mysql": [
        "CREATE USER '{role}'@'127.0.0.1'",
        "GRANT SELECT ON {prefix}_alembic_version TO '{role}'@'127.0.0.1'",
    ],
}
GRANTS = {
    ("postgresql", "producer"): [
        "GRANT SELECT, INSERT ON {prefix}_message TO {role}",
        "GRANT USAGE ON SEQUENCE {prefix}_message_id_seq TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {prefix}_dedup TO {role}",
        "GRANT SELECT, DELETE ON {prefix}_binding TO {role}",
    ],
    ("postgresql", "consumer"): [
        "GRANT SELECT, UPDATE, DELETE ON {prefix}_message TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {prefix}_topic_lock TO {role}",
        "GRANT SELECT, UPDATE ON {prefix}_topic TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {prefix}_worker TO {role}",
        "GRANT USAGE ON SEQUENCE {prefix}_worker_id_seq TO {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {prefix}_binding TO {role}",
    ],
    ("mysql", "producer"): [
        "GRANT SELECT, INSERT ON {prefix}_message TO '{role}'@'127.0.0.1'",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {prefix}_dedup TO '{role}'@'127.0.0.1'",
        "GRANT SELECT, DELETE ON {prefix}_binding TO '{role}'@'127.0.0.1'",
    ],
    ("mysql", "consumer"): [
        "GRANT SELECT, UPDATE, DELETE ON {prefix}_message TO '{role}'@'127.0.0.1'",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {prefix}_topic_lock TO '{role}'@'127.0.0.1'",
        "GRANT SELECT, UPDATE ON {prefix}_topic TO '{role}'@'127.0.0.1'",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {prefix}_worker TO '{role}'@'127.0.0.1'",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {prefix}_binding TO '{role}'@'127.0.0.1'",
    ],
}
DROP = {
    "postgresql": ["DROP OWNED BY {role}", "DROP ROLE {role}"],
    "mysql": ["DROP USER '{role}'@'127.0.0.1'"],
}


def do_their_part(producer: Queue, consumer: Queue) -> None:
    """The producer puts (once with a dedup key); the consumer claims, acks and nacks."""
    producer.put(b"one")
    producer.put(b"two", dedup_key="k")
    m = consumer.get()
    assert m is not None
    assert m.payload == b"one"
    m.ack()
    n = consumer.get()
    assert n is not None
    n.nack(delay=0)


@pytest.fixture
def role_queue(
    db: str, db_url: str, engine: sa.Engine, make_queue: Callable[..., Queue]
) -> Iterator[Callable[..., Queue]]:
    """Queues that connect as a fresh producer or consumer role; the roles are dropped after."""
    prefix = make_queue().prefix
    made: list[tuple[str, sa.Engine]] = []

    def make(kind: str, **options: Any) -> Queue:
        role = f"sq_{kind}_{secrets.token_hex(3)}"
        with engine.begin() as conn:
            for sql in SETUP[db] + GRANTS[(db, kind)]:
                conn.exec_driver_sql(sql.format(role=role, prefix=prefix))
        eng = sa.create_engine(sa.make_url(db_url).set(username=role, password=None))
        made.append((role, eng))
        return Queue(eng, prefix=prefix, **options)

    yield make
    for role, eng in made:
        eng.dispose()
        with engine.begin() as conn:
            for sql in DROP[db]:
                conn.exec_driver_sql(sql.format(role=role))


@pytest.mark.dialects("postgresql", "mysql")
def test_producer_and_consumer_roles_can_do_their_part_and_are_refused_the_rest(
    role_queue: Callable[..., Queue],
) -> None:
    """T13: the producer puts but cannot claim; the consumer claims and acks but cannot put."""
    producer = role_queue("producer")
    consumer = role_queue("consumer")
    do_their_part(producer, consumer)
    with pytest.raises(DatabaseError):
        producer.get()
    with pytest.raises(DatabaseError):
        consumer.put(b"three")


@pytest.mark.dialects("postgresql", "mysql")
def test_dedup_windows_and_topic_locks_need_only_their_own_tables(
    role_queue: Callable[..., Queue],
) -> None:
    """T13: a windowed producer and a topic-locking consumer work with the documented GRANTs."""
    producer = role_queue("producer", dedup_window=60.0)
    consumer = role_queue("consumer")
    ids = producer.put_many([b"a", b"b"], topic="t", dedup_keys=["k1", "k2"])
    assert all(i is not None for i in ids)
    lock = consumer.acquire_topic()
    assert lock is not None
    assert lock.topic == "t"
    lock.touch()
    m = consumer.get("t")
    assert m is not None
    assert m.payload == b"a"
    m.ack()
    lock.release()
    assert producer.put(b"again", topic="t", dedup_key="k1") is None  # the window holds
    producer.dedup_override(["k1"], topic="t", window=None)
    assert producer.put(b"again", topic="t", dedup_key="k1") is not None
    with pytest.raises(DatabaseError):
        consumer.put(b"three", topic="t", dedup_key="k9")


@pytest.mark.dialects("postgresql", "mysql")
def test_a_consumer_role_claims_a_limited_topic(
    role_queue: Callable[..., Queue], make_queue: Callable[..., Queue]
) -> None:
    """T13: claiming under a limit locks the topic's row and spends its tokens: the consumer's
    documented GRANTs cover it."""
    producer = role_queue("producer")
    consumer = role_queue("consumer")
    producer.put_many([b"a", b"b", b"c"], topic="t")
    make_queue().set_limit("t", concurrency=2, rate=10)  # an operator's, as its owner
    got = consumer.get_many("t", 3)
    assert len(got) == 2
    consumer.ack_many(got)
    with pytest.raises(DatabaseError):
        consumer.set_limit("t", concurrency=None)  # not the consumer's to change


@pytest.mark.dialects("postgresql", "mysql")
def test_a_consumer_role_s_worker_registers_and_leaves(
    role_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    """T13: the worker registry needs only the consumer's documented GRANTs."""
    producer = role_queue("producer")
    consumer = role_queue("consumer")
    producer.put(b"job", topic="t")
    done: list[bytes] = []
    worker = Worker(consumer, lambda m: done.append(m.payload), "t", wait=0.1, registry_beat=0.2)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    with caplog.at_level("WARNING", logger="squeal.worker"):
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not (done and [w.acked for w in consumer.workers()] == [1]):
                assert time.monotonic() < deadline, (done, consumer.workers())
                time.sleep(0.05)
        finally:
            worker.stop()
            thread.join(timeout=30)
    assert consumer.workers() == []
    assert "registry" not in caplog.text


@pytest.mark.dialects("postgresql", "mysql")
def test_a_consumer_role_binds_and_a_producer_role_publishes(
    role_queue: Callable[..., Queue],
) -> None:
    """T13: exchanges need only the documented GRANTs on the binding table; a producer
    cannot bind."""
    producer = role_queue("producer")
    consumer = role_queue("consumer")
    consumer.bind("events", "mine", expires=0.2)
    consumer.bind("events", "kept")
    time.sleep(0.4)  # "mine" expires: the publish deletes its row
    assert list(producer.publish(b"e", "events")) == ["kept"]
    assert list(producer.publish(b"f", "events")) == ["kept"]
    got = consumer.get_many("kept", 10)
    assert [m.payload for m in got] == [b"e", b"f"]
    consumer.ack_many(got)
    with pytest.raises(DatabaseError):
        producer.bind("events", "other")


@pytest.mark.dialects("postgresql", "mysql")
def test_health_as_a_consumer_role_reports_what_it_cannot_read_instead_of_failing(
    role_queue: Callable[..., Queue], db: str
) -> None:
    """A role without monitoring privileges (MySQL: PROCESS) gets 'unknown' with the advice."""
    findings = role_queue("consumer").health()
    assert findings
    for finding in findings:
        assert finding.status in ("ok", "warning", "action", "unknown"), finding
    unknown = [f for f in findings if f.status == "unknown"]
    if db == "mysql":  # INNODB_METRICS and INNODB_TRX need PROCESS
        assert {f.check for f in unknown} >= {"history list", "oldest transaction"}
        assert all("privilege" in f.advice for f in unknown)
