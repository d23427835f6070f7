"""T10: hostile and extreme input beyond tests/conformance/test_validation.py, on every database.

Huge batches (20,000 payloads: ids in order; all or nothing when the producer is SIGKILLed in the
middle, or its caller's transaction rolls back), SQL-shaped and look-alike topics and dedup keys
round-trip as data, payloads of exactly the limit and one byte more, every byte value, and Worker
construction mistakes.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa

import squeal
from squeal import Queue, Worker
from tests.reliability.helpers import REPO, stored_ids

HUGE = 20_000

#: Strings that mean something to SQL, to a DB-API paramstyle, or to a LIKE pattern.
SQL_SHAPED = [
    "'; DROP TABLE x; --",
    "%s",
    "%(name)s",
    "?",
    ":name",
    "\\",
    "\\'",
    "%",
    "_",
    '"',
    "`",
    "$1",
    "a\tb",
    "ü€😀",
]
#: Topics that collations tend to merge: they must stay distinct topics.
LOOKALIKES = ["topic", "Topic", "TOPIC", "topic ", " topic", "tópic"]


def _counts(q: Queue, topic: str) -> tuple[int, int, int, int]:
    s = q.stats().get(topic)
    return (0, 0, 0, 0) if s is None else (s.ready, s.delayed, s.leased, s.dead)


def test_a_batch_of_20000_payloads_is_stored_whole_with_ids_in_payload_order(
    queue: Queue,
) -> None:
    payloads = [f"{i:05d}".encode() for i in range(HUGE)]
    ids = [i for i in queue.put_many(payloads, "huge") if i is not None]
    assert len(ids) == HUGE
    assert ids == sorted(ids)
    assert len(set(ids)) == HUGE
    assert _counts(queue, "huge") == (HUGE, 0, 0, 0)
    got = queue.get_many("huge", 10_000, visibility_timeout=60)
    got += queue.get_many("huge", 10_000, visibility_timeout=60)
    assert [m.id for m in got] == ids
    assert [m.payload for m in got] == payloads
    queue.ack_many(got)
    assert queue.stats() == {}


def test_a_batch_of_20000_with_repeated_dedup_keys_stores_each_key_once(queue: Queue) -> None:
    keys: list[str | None] = [f"k{i % 5000}" for i in range(HUGE)]
    ids = queue.put_many([b"x"] * HUGE, "huge", dedup_keys=keys)
    assert all(i is not None for i in ids[:5000])
    assert ids[5000:] == [None] * (HUGE - 5000)
    assert _counts(queue, "huge") == (5000, 0, 0, 0)
    again = queue.put_many([b"y"] * HUGE, "huge", dedup_keys=keys)
    assert again == [None] * HUGE
    assert _counts(queue, "huge") == (5000, 0, 0, 0)


def test_a_batch_of_20000_in_a_rolled_back_caller_transaction_leaves_nothing(
    queue: Queue, engine: sa.Engine
) -> None:
    with engine.connect() as conn:
        trans = conn.begin()
        ids = queue.put_many([b"x"] * HUGE, "huge", connection=conn)
        assert len(ids) == HUGE
        trans.rollback()
    assert queue.stats() == {}
    assert stored_ids(engine, queue.prefix) == []


_PRODUCER = """
import sys, sqlalchemy as sa
from squeal import Queue
q = Queue(sa.create_engine(sys.argv[1]), prefix=sys.argv[2])
q.stats()
print("go", flush=True)
q.put_many([b"p" * 200] * int(sys.argv[3]), "huge")
print("done", flush=True)
"""


def _settled(engine: sa.Engine, timeout: float = 60.0) -> None:
    """Wait until no other session runs a statement on the server (a COMMIT the dead child sent
    just before the kill may still be landing); SQLite's writer died with its process."""
    other = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND datname = current_database() AND state = 'active' "
        "AND backend_type = 'client backend'",
        "mysql": "SELECT count(*) FROM information_schema.processlist "
        "WHERE id <> CONNECTION_ID() AND db = DATABASE() AND command <> 'Sleep'",
    }.get(engine.dialect.name)
    if other is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.exec_driver_sql(other).scalar() == 0:
                return
        time.sleep(0.05)


def test_a_producer_sigkilled_during_a_20000_batch_stores_all_or_nothing(
    queue: Queue, engine: sa.Engine, db_url: str
) -> None:
    """The batch spans 20 INSERTs; a SIGKILL at a random moment leaves 0 or 20,000 rows."""
    rnd = random.Random(6)
    outcomes: list[int] = []
    for _ in range(4):
        before = len(stored_ids(engine, queue.prefix))
        child = subprocess.Popen(
            [sys.executable, "-c", _PRODUCER, db_url, queue.prefix, str(HUGE)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "go"
            time.sleep(rnd.uniform(0.0, 2.0))
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()
        _settled(engine)  # what the server still ran for the dead child ended
        added = len(stored_ids(engine, queue.prefix)) - before
        assert added in (0, HUGE), f"a killed put_many left {added} of {HUGE} rows"
        outcomes.append(added)
    print(f"rows added per killed batch: {outcomes}")


@pytest.mark.parametrize("text", SQL_SHAPED)
def test_sql_shaped_topics_and_dedup_keys_round_trip_as_data(queue: Queue, text: str) -> None:
    mid = queue.put(text.encode(), text, dedup_key=text, priority=1)
    assert mid is not None
    assert queue.put(b"again", text, dedup_key=text) is None
    other = queue.put(b"other", text, dedup_key=text + "x")
    assert other is not None
    assert queue.topics() == {text: 2}
    assert queue.size(text) == 2
    msg = queue.get(text, visibility_timeout=30)
    assert msg is not None
    assert (msg.id, msg.topic, msg.payload) == (mid, text, text.encode())
    msg.ack()
    assert queue.put(b"after ack", text, dedup_key=text) is not None  # the key is free again
    assert queue.stats()[text].ready == 2


def test_lookalike_topics_and_keys_stay_distinct(queue: Queue) -> None:
    for t in LOOKALIKES:
        assert queue.put(t.encode(), t, dedup_key="k") is not None
    for k in LOOKALIKES:
        assert queue.put(k.encode(), "keys", dedup_key=k) is not None
    assert queue.topics() == {**{t: 1 for t in LOOKALIKES}, "keys": len(LOOKALIKES)}
    for t in LOOKALIKES:
        msg = queue.get(t, visibility_timeout=30)
        assert msg is not None
        assert (msg.topic, msg.payload) == (t, t.encode())
        msg.ack()


def test_payload_of_exactly_the_limit_round_trips_and_one_byte_more_is_rejected(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(max_payload_size=4096)
    exact = bytes(random.Random(1).randrange(256) for _ in range(4096))
    assert q.put(exact, "t") is not None
    with pytest.raises(squeal.ValidationError):
        q.put(exact + b"x", "t")
    with pytest.raises(squeal.ValidationError):
        q.put_many([exact, exact + b"x"], "t")
    msg = q.get("t", visibility_timeout=30)
    assert msg is not None
    assert msg.payload == exact
    msg.ack()
    assert q.stats() == {}


def test_a_payload_of_exactly_the_default_1_mib_limit_round_trips(queue: Queue) -> None:
    exact = bytes(range(256)) * (1_048_576 // 256)
    assert len(exact) == queue.max_payload_size
    assert queue.put(exact, "big") is not None
    msg = queue.get("big", visibility_timeout=30)
    assert msg is not None
    assert msg.payload == exact
    msg.ack()


def test_every_byte_value_and_the_empty_payload_round_trip(queue: Queue) -> None:
    payloads = [b"", bytes(range(256)), b"\x00" * 10, b"\xff\xfe", "ü".encode()]
    ids = queue.put_many(payloads, "bytes")
    got = queue.get_many("bytes", 10, visibility_timeout=30)
    assert [m.id for m in got] == ids
    assert [m.payload for m in got] == payloads
    queue.ack_many(got)


def test_empty_batches_of_every_batch_operation_do_nothing(queue: Queue) -> None:
    assert queue.put_many([], "t", dedup_keys=[]) == []
    queue.ack_many([])
    queue.nack_many([])
    queue.touch_many([])
    queue.put(b"x", "t")
    assert _counts(queue, "t") == (1, 0, 0, 0)


def _noop(message: squeal.Message) -> None:
    """A handler that does nothing."""


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"topics": []}, squeal.ValidationError),
        ({"topics": ""}, squeal.ValidationError),
        ({"topics": ["ok", ""]}, squeal.ValidationError),
        ({"topics": ["ok", 3]}, TypeError),
        ({"concurrency": 0}, squeal.ValidationError),
        ({"concurrency": 1001}, squeal.ValidationError),
        ({"concurrency": 1.5}, TypeError),
        ({"wait": -1}, squeal.ValidationError),
        ({"wait": float("nan")}, squeal.ValidationError),
        ({"grace_period": float("inf")}, squeal.ValidationError),
        ({"heartbeat": 0}, squeal.ValidationError),
    ],
)
def test_worker_rejects_bad_construction_arguments(
    queue: Queue, options: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        Worker(queue, _noop, **options)  # type: ignore[arg-type]
    assert queue.stats() == {}
