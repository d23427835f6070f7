"""Topic locks: one holder per topic at a time, taken round robin by name, fenced by a token.

The exclusivity test runs this file as a script in child processes (see ``_child``): each one
acquires, holds and releases locks in a loop and reports the interval it held each one for.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import select
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import squeal
from squeal import AlreadySettled, LeaseLost, Queue, TopicLock
from tests.race import race

#: A lock that runs out quickly, for the expiry and fencing tests.
SHORT = 0.3
NAN, INF = float("nan"), float("inf")


def _fill(queue: Queue, counts: dict[str, int]) -> None:
    for topic, n in counts.items():
        queue.put_many([f"{topic}:{i}".encode() for i in range(n)], topic)


def _acquired(queue: Queue, **kwargs: Any) -> TopicLock:
    lock = queue.acquire_topic(**kwargs)
    assert lock is not None
    return lock


def _lock_rows(queue: Queue) -> dict[str, int]:
    table = sa.table(
        f"{queue.prefix}_topic_lock",
        sa.column("topic", squeal.schema.ExactText()),
        sa.column("token"),
    )
    with queue.engine.connect() as conn:
        return {
            topic: token for topic, token in conn.execute(sa.select(table.c.topic, table.c.token))
        }


@pytest.fixture
def rival(make_queue: Callable[..., Queue], db_url: str, prefix: str) -> Iterator[Queue]:
    """Another consumer of the same tables, through an engine of its own."""
    make_queue()  # the tables
    engine = sa.create_engine(db_url)
    try:
        yield Queue(engine, prefix=prefix)
    finally:
        engine.dispose()


# -- granting ------------------------------------------------------------------------------------


def test_acquire_locks_the_first_free_topic_by_name(queue: Queue) -> None:
    _fill(queue, {"most": 3, "few": 1, "some": 2})
    lock = _acquired(queue)
    assert (lock.topic, lock.queue) == ("few", queue)
    assert isinstance(lock.token, int)
    assert _lock_rows(queue) == {"few": lock.token}


def test_each_acquire_takes_the_next_free_topic_then_none(queue: Queue) -> None:
    _fill(queue, {"most": 3, "few": 1, "some": 2})
    topics = [_acquired(queue).topic for _ in range(3)]
    assert topics == ["few", "most", "some"]
    assert queue.acquire_topic() is None


def test_acquire_goes_round_from_the_topic_acquired_last(queue: Queue) -> None:
    _fill(queue, {"b": 1, "a": 5, "c": 2})
    taken = []
    for _ in range(5):
        lock = _acquired(queue)
        taken.append(lock.topic)
        lock.release()
    assert taken == ["a", "b", "c", "a", "b"], "round robin, whatever each topic holds"


def test_each_queue_object_goes_round_on_its_own(queue: Queue, rival: Queue) -> None:
    _fill(queue, {"a": 1, "b": 1})
    first = _acquired(queue)
    first.release()
    assert _acquired(rival).topic == "a", "the rival has acquired nothing yet"
    assert _acquired(queue).topic == "b"


def test_locks_held_by_another_consumer_are_skipped(queue: Queue, rival: Queue) -> None:
    _fill(queue, {"x": 2, "y": 1})
    assert _acquired(rival).topic == "x"
    assert _acquired(queue).topic == "y"
    assert queue.acquire_topic() is None
    assert rival.acquire_topic() is None


def test_acquire_returns_none_without_ready_messages(queue: Queue) -> None:
    assert queue.acquire_topic() is None
    queue.put(b"later", "delayed", delay=60)
    queue.put(b"taken", "leased")
    assert queue.get("leased") is not None
    assert queue.acquire_topic() is None, "delayed and leased messages are not ready"


def test_only_topics_with_a_ready_message_are_candidates(queue: Queue) -> None:
    queue.put_many([b"d"] * 5, "a-delayed", delay=60)
    queue.put(b"r", "b-delayed-and-ready", delay=60)
    queue.put(b"r", "b-delayed-and-ready")
    queue.put(b"r", "c-ready")
    assert [_acquired(queue).topic for _ in range(2)] == ["b-delayed-and-ready", "c-ready"]
    assert queue.acquire_topic() is None


def test_due_waiting_messages_are_ready(queue: Queue) -> None:
    queue.put(b"soon", "soon", delay=0.05)
    time.sleep(0.1)
    assert _acquired(queue).topic == "soon"


def test_exclude_skips_topics(queue: Queue) -> None:
    _fill(queue, {"a": 3, "b": 2, "c": 1})
    assert _acquired(queue, exclude=["a"]).topic == "b"
    assert _acquired(queue, exclude={"a", "zzz"}).topic == "c"
    assert queue.acquire_topic(exclude=("a",)) is None
    assert _acquired(queue, exclude=iter([])).topic == "a"


def test_topics_compare_exactly(queue: Queue) -> None:
    _fill(queue, {"A": 2, "a": 1, "a ": 1})
    assert {_acquired(queue).topic for _ in range(3)} == {"A", "a", "a "}
    assert queue.acquire_topic() is None


def test_acquire_logs_an_event(queue: Queue, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="squeal")
    _fill(queue, {"logged": 1})
    lock = _acquired(queue)
    records = [r for r in caplog.records if getattr(r, "squeal_event", None) == "lock_acquired"]
    assert len(records) == 1
    assert (records[0].topic, records[0].token) == ("logged", lock.token)  # type: ignore[attr-defined]


# -- releasing and touching ----------------------------------------------------------------------


def test_a_released_topic_can_be_acquired_again(queue: Queue, rival: Queue) -> None:
    _fill(queue, {"t": 1})
    lock = _acquired(queue)
    assert rival.acquire_topic() is None
    lock.release()
    assert lock.released
    assert _lock_rows(queue) == {}
    again = _acquired(rival)
    assert again.topic == "t"
    assert again.token != lock.token


def test_releasing_twice_raises(queue: Queue) -> None:
    _fill(queue, {"t": 1})
    lock = _acquired(queue)
    lock.release()
    with pytest.raises(squeal.AlreadyReleased):
        lock.release()
    with pytest.raises(AlreadySettled):
        lock.release()
    with pytest.raises(AlreadySettled):
        lock.touch()


def test_the_context_manager_releases_the_lock(queue: Queue) -> None:
    _fill(queue, {"t": 1})
    with _acquired(queue) as lock:
        assert _lock_rows(queue) == {"t": lock.token}
    assert lock.released
    assert _lock_rows(queue) == {}
    with _acquired(queue) as early:
        early.release()  # released inside the block: leaving it does not release again
    with pytest.raises(RuntimeError), _acquired(queue) as failing:
        raise RuntimeError("handler failed")
    assert failing.released
    assert _acquired(queue).topic == "t"


def test_touch_extends_the_lock(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(topic_lock_timeout=60.0)
    _fill(queue, {"t": 1})
    lock = _acquired(queue)  # 60 s
    first = lock.expires_at
    lock.touch(600)
    assert 530 < (lock.expires_at - first).total_seconds() < 550
    lock.touch(1)  # shorter is allowed too: now + 1 s
    assert -60 < (lock.expires_at - first).total_seconds() < -55
    lock.touch()  # topic_lock_timeout again: about where it started
    assert 0 <= (lock.expires_at - first).total_seconds() < 5


def test_a_touched_lock_outlives_its_first_timeout(
    make_queue: Callable[..., Queue], rival: Queue
) -> None:
    queue = make_queue(topic_lock_timeout=SHORT)
    _fill(queue, {"t": 1})
    lock = _acquired(queue)
    lock.touch(30)
    time.sleep(SHORT + 0.1)
    assert rival.acquire_topic() is None
    lock.release()


# -- expiry and fencing --------------------------------------------------------------------------


def test_an_expired_lock_is_taken_over_and_the_old_holder_is_fenced(
    make_queue: Callable[..., Queue], rival: Queue
) -> None:
    queue = make_queue()
    _fill(queue, {"t": 1})
    stale = _acquired(queue)
    assert rival.acquire_topic() is None  # held (for the default 15 minutes)
    stale.touch(SHORT)  # now for SHORT seconds only
    time.sleep(SHORT + 0.1)
    current = _acquired(rival)
    assert current.topic == "t"
    assert current.token != stale.token
    assert (current.expires_at - stale.expires_at).total_seconds() > 30
    with pytest.raises(LeaseLost):
        stale.touch()
    with pytest.raises(LeaseLost):
        stale.release()
    assert not stale.released
    assert _lock_rows(queue) == {"t": current.token}, "the stale holder changed nothing"
    assert queue.held_topics() == []
    current.touch()
    current.release()


def test_an_expired_lock_nobody_took_may_still_be_touched(
    make_queue: Callable[..., Queue], rival: Queue
) -> None:
    queue = make_queue(topic_lock_timeout=SHORT)
    _fill(queue, {"t": 1})
    lock = _acquired(queue)
    time.sleep(SHORT + 0.1)
    lock.touch(30)
    assert rival.acquire_topic() is None
    lock.release()


def test_the_lock_lost_event_is_logged(
    make_queue: Callable[..., Queue], rival: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="squeal")
    queue = make_queue(topic_lock_timeout=SHORT)
    _fill(queue, {"t": 1})
    stale = _acquired(queue)
    time.sleep(SHORT + 0.1)
    _acquired(rival)
    with pytest.raises(LeaseLost):
        stale.release()
    lost = [r for r in caplog.records if getattr(r, "squeal_event", None) == "lock_lost"]
    assert [(r.operation, r.topic, r.token) for r in lost] == [("release", "t", stale.token)]  # type: ignore[attr-defined]
    assert lost[0].levelno == logging.INFO


def test_takers_racing_for_an_expired_lock_have_exactly_one_winner(
    make_queue: Callable[..., Queue], db_url: str, prefix: str
) -> None:
    queue = make_queue(topic_lock_timeout=SHORT)
    _fill(queue, {"t": 1})
    engines = [sa.create_engine(db_url) for _ in range(6)]
    try:
        takers = [Queue(e, prefix=prefix) for e in engines]
        for taker in takers:
            assert taker.size("t") == 1  # connected before the race
        for round_ in range(3):
            stale = _acquired(queue)
            time.sleep(SHORT + 0.1)
            outcomes = race([t.acquire_topic for t in takers])
            winners = [o for o in outcomes if isinstance(o, TopicLock)]
            assert len(winners) == 1, f"round {round_}: {outcomes}"
            assert all(o is None for o in outcomes if o is not winners[0]), outcomes
            with pytest.raises(LeaseLost):
                stale.touch()
            assert _lock_rows(queue) == {"t": winners[0].token}
            winners[0].release()
    finally:
        for e in engines:
            e.dispose()


def test_a_late_touch_racing_a_takeover_has_exactly_one_winner(
    make_queue: Callable[..., Queue], rival: Queue
) -> None:
    queue = make_queue(topic_lock_timeout=SHORT)
    _fill(queue, {"t": 1})
    for round_ in range(5):
        stale = _acquired(queue)
        time.sleep(SHORT + 0.1)  # expired; nobody took it over yet
        touched, taken = race([partial(stale.touch, 30), rival.acquire_topic])
        if touched is None:  # the expired lock was still the holder's: touch won
            assert taken is None, f"round {round_}: touched and also taken over"
            stale.release()
        else:
            assert isinstance(touched, LeaseLost), repr(touched)
            assert isinstance(taken, TopicLock), repr(taken)
            assert taken.token != stale.token
            taken.release()
        assert _lock_rows(queue) == {}


# -- bookkeeping ---------------------------------------------------------------------------------


def test_held_topics_lists_the_unreleased_locks_of_this_queue(queue: Queue, rival: Queue) -> None:
    _fill(queue, {"a": 3, "b": 2, "c": 1})
    assert queue.held_topics() == []
    a, b = _acquired(queue), _acquired(queue)
    theirs = _acquired(rival)
    assert queue.held_topics() == [a, b]
    assert rival.held_topics() == [theirs]
    a.release()
    assert queue.held_topics() == [b]


def test_release_topics_releases_every_held_lock(queue: Queue, rival: Queue) -> None:
    _fill(queue, {"a": 3, "b": 2, "c": 1})
    mine = [_acquired(queue), _acquired(queue)]
    _acquired(rival)
    assert queue.release_topics() == 2
    assert all(lock.released for lock in mine)
    assert queue.held_topics() == []
    assert queue.release_topics() == 0
    assert sorted(_lock_rows(queue)) == ["c"]


def test_release_topics_skips_lost_locks(make_queue: Callable[..., Queue], rival: Queue) -> None:
    queue = make_queue(topic_lock_timeout=SHORT)
    _fill(queue, {"a": 2, "b": 1})
    a, b = _acquired(queue), _acquired(queue)
    time.sleep(SHORT + 0.1)
    b.touch(30)
    taken = _acquired(rival)
    assert taken.topic == "a"
    assert queue.release_topics() == 1
    assert b.released
    assert not a.released
    assert queue.held_topics() == []
    assert _lock_rows(queue) == {"a": taken.token}


def test_held_topics_is_thread_safe(queue: Queue) -> None:
    topics = {f"t{i:02}": 1 for i in range(24)}
    _fill(queue, topics)
    outcomes = race([queue.acquire_topic for _ in range(24)])
    locks = [o for o in outcomes if isinstance(o, TopicLock)]
    assert len(locks) == 24, outcomes
    assert {lock.topic for lock in locks} == set(topics)
    assert sorted(id(lock) for lock in queue.held_topics()) == sorted(id(lock) for lock in locks)
    assert queue.release_topics() == 24


def test_close_keeps_the_locks(queue: Queue, rival: Queue) -> None:
    _fill(queue, {"t": 1})
    lock = _acquired(queue)
    queue.close()
    assert rival.acquire_topic() is None
    lock.release()
    assert _acquired(rival).topic == "t"


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (NAN, ValueError),
        (INF, ValueError),
        ("1", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_topic_lock_timeout_is_validated(engine: sa.Engine, value: object, error: type) -> None:
    with pytest.raises(error):
        Queue(engine, topic_lock_timeout=value)  # type: ignore[arg-type]


def test_topic_lock_timeout_defaults_to_a_quarter_hour(engine: sa.Engine) -> None:
    assert Queue(engine).topic_lock_timeout == 900.0
    assert Queue(engine, topic_lock_timeout=2).topic_lock_timeout == 2.0


@pytest.mark.parametrize(
    ("exclude", "error"),
    [
        ("topic", TypeError),
        (b"topic", TypeError),
        (7, TypeError),
        ([7], TypeError),
        ([None], TypeError),
        ([""], ValueError),
        (["x" * 256], ValueError),
        (["a\x00"], ValueError),
    ],
)
def test_exclude_is_validated(queue: Queue, exclude: object, error: type) -> None:
    _fill(queue, {"t": 1})
    with pytest.raises(error):
        queue.acquire_topic(exclude=exclude)  # type: ignore[arg-type]
    assert queue.held_topics() == []
    assert _lock_rows(queue) == {}


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (NAN, ValueError), ("1", TypeError)])
def test_touch_timeout_is_validated(queue: Queue, value: object, error: type) -> None:
    _fill(queue, {"t": 1})
    lock = _acquired(queue)
    before = lock.expires_at
    with pytest.raises(error):
        lock.touch(value)  # type: ignore[arg-type]
    assert lock.expires_at == before


def test_acquire_on_missing_tables_raises_schema_missing(engine: sa.Engine, prefix: str) -> None:
    with pytest.raises(squeal.SchemaMissing):
        Queue(engine, prefix=prefix).acquire_topic()


@pytest.mark.dialects("sqlite")
def test_topic_locks_on_an_in_memory_sqlite_database(db: str) -> None:
    # One shared connection: statements go through SQLAlchemy instead of squeal's own cursor.
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
    queue = Queue(engine)
    queue.create()
    _fill(queue, {"a": 2, "b": 1})
    with _acquired(queue, exclude=["b"]) as lock:
        assert lock.topic == "a"
        lock.touch(120)
        assert _acquired(queue).topic == "b"
        assert queue.acquire_topic() is None
    assert queue.release_topics() == 1
    queue.close()
    engine.dispose()


# -- exclusivity across processes ----------------------------------------------------------------

#: How long each child keeps acquiring, and the bound on anything waiting for a child.
HOLD_SECONDS = 2.5
CHILD_TIMEOUT = 60.0


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while not buffer.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(0.0, remaining))
        if not readable:
            pytest.fail(f"child {proc.pid}: no output within {timeout}s")
        chunk = os.read(fd, 1)
        if not chunk:
            pytest.fail(f"child {proc.pid} exited ({proc.wait(5)}) early")
        buffer += chunk
    return buffer.decode()


def test_processes_never_hold_the_same_topic_at_once(
    queue: Queue, db_url: str, prefix: str, tmp_path: Path
) -> None:
    topics = {f"t{i:02}": 1 + i % 3 for i in range(20)}
    _fill(queue, topics)
    procs: list[subprocess.Popen[bytes]] = []
    errors = [(tmp_path / f"child{i}.stderr").open("wb") for i in range(4)]
    try:
        for i in range(4):
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, db_url, prefix, str(i)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=errors[i],
                )
            )
        for proc in procs:
            assert _read_line(proc, CHILD_TIMEOUT) == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        reports = [json.loads(_read_line(proc, CHILD_TIMEOUT)) for proc in procs]
        for proc in procs:
            assert proc.wait(CHILD_TIMEOUT) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):  # a killed child's stdin: broken pipe
                        pipe.close()
        for err in errors:
            err.close()

    assert all(report["errors"] == [] for report in reports), reports
    assert all(report["held"] for report in reports), "every process got locks"
    held: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for child, report in enumerate(reports):
        for topic, _token, start, end in report["held"]:
            held[topic].append((start, end, child))
    tokens = [row[1] for report in reports for row in report["held"]]
    assert len(set(tokens)) == len(tokens), "a token was granted twice"
    assert set(held) <= set(topics)
    shared = [t for t, spans in held.items() if len({child for *_, child in spans}) > 1]
    assert shared, "no topic was contended: the test proves nothing"
    for topic, spans in held.items():
        spans.sort()
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            # The recorded spans lie inside the real holds; 0.5 ms is room for clock reads.
            assert start >= end - 0.0005, f"{topic}: held by {a} and {b} at once"
    assert queue.stats()[next(iter(topics))].ready >= 1, "locks never consume messages"


def _child(url: str, prefix: str, name: str) -> int:
    """One competing process: acquire, hold briefly, release, until HOLD_SECONDS pass."""
    rnd = random.Random(name)
    engine = sa.create_engine(url)
    queue = Queue(engine, prefix=prefix, topic_lock_timeout=30)
    queue.size()  # connect and check the schema before the race
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 3
    held: list[list[Any]] = []
    errors: list[str] = []
    end = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < end and len(errors) < 5:
        try:
            lock = queue.acquire_topic()
            if lock is None:
                time.sleep(0.001)
                continue
            start = time.time()
            time.sleep(rnd.uniform(0, 0.003))
            stop = time.time()
            lock.release()
            held.append([lock.topic, lock.token, start, stop])
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"held": held, "errors": errors}), flush=True)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:4]))
