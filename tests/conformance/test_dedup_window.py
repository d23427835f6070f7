"""Dedup windows: with ``dedup_window=W`` an accepted key blocks puts of it for W seconds.

The window outlives the message (ack does not free the key), the live-message rule still holds
as well, ``dedup_override`` sets or clears windows explicitly, and expired rows are swept
without a background process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import pytest
import sqlalchemy as sa

from squeal import InvalidType, Queue, ValidationError
from squeal.dialects.dedup import CHUNK, SWEEP_EVERY
from squeal.schema import build_tables
from tests.children import Children
from tests.race import race

WINDOW = 60.0


@pytest.fixture
def windowed(make_queue: Callable[..., Queue]) -> Queue:
    """A queue whose dedup keys block for a minute."""
    return make_queue(dedup_window=WINDOW)


def _drain(q: Queue, topic: str) -> list[bytes]:
    """Ack every ready message of ``topic``; return their payloads in delivery order."""
    payloads = []
    while msgs := q.get_many(topic, 100):
        q.ack_many(msgs)
        payloads += [m.payload for m in msgs]
    return payloads


def _dedup_rows(q: Queue, topic: str | None = None) -> dict[tuple[str, str], int]:
    """The rows of the dedup table: (topic, key) -> expires_at."""
    d = build_tables(q.prefix).dedup
    query = sa.select(d.c.topic, d.c.dedup_key, d.c.expires_at)
    if topic is not None:
        query = query.where(d.c.topic == topic)
    with q.engine.connect() as conn:
        return {(t, k): e for t, k, e in conn.execute(query)}


def test_a_window_blocks_the_key_while_its_message_lives_and_after_its_ack(
    windowed: Queue,
) -> None:
    first = windowed.put(b"first", "t", dedup_key="k")
    assert isinstance(first, int)
    assert windowed.put(b"live", "t", dedup_key="k") is None
    assert _drain(windowed, "t") == [b"first"]
    assert windowed.put(b"after ack", "t", dedup_key="k") is None
    assert windowed.put_many([b"batch"], "t", dedup_keys=["k"]) == [None]
    assert windowed.get("t") is None


def test_without_a_window_an_acked_message_frees_its_key_and_no_window_is_recorded(
    queue: Queue, make_queue: Callable[..., Queue]
) -> None:
    zero = make_queue(dedup_window=0)
    assert zero.dedup_window is None
    for q in (queue, zero):
        q.put(b"first", "t", dedup_key="k")
        assert q.put(b"live", "t", dedup_key="k") is None
        assert _drain(q, "t") == [b"first"]
        assert isinstance(q.put(b"second", "t", dedup_key="k"), int)
        assert _drain(q, "t") == [b"second"]
    assert _dedup_rows(queue) == {}


def test_keys_and_topics_are_independent_and_puts_without_a_key_are_never_blocked(
    windowed: Queue,
) -> None:
    assert isinstance(windowed.put(b"a", "t1", dedup_key="k"), int)
    assert isinstance(windowed.put(b"b", "t2", dedup_key="k"), int)
    assert isinstance(windowed.put(b"c", "t1", dedup_key="K"), int)
    assert isinstance(windowed.put(b"d", "t1"), int)
    assert isinstance(windowed.put(b"e", "t1"), int)
    assert set(_dedup_rows(windowed)) == {("t1", "k"), ("t2", "k"), ("t1", "K")}


def test_a_key_is_accepted_again_once_its_window_runs_out(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(dedup_window=0.5)
    held = make_queue(dedup_window=60)  # a window no stall of this machine outlasts
    q.put(b"first", "t", dedup_key="k")
    held.put(b"kept", "t", dedup_key="long")
    _drain(q, "t")
    assert held.put(b"too soon", "t", dedup_key="long") is None  # acked, but in its window
    first_window = _dedup_rows(q)[("t", "k")]
    time.sleep(0.6)
    second = q.put(b"second", "t", dedup_key="k")  # its window ran out
    assert isinstance(second, int)
    assert _dedup_rows(q)[("t", "k")] > first_window  # a window of its own again
    assert held.put(b"blocked again", "t", dedup_key="long") is None
    assert _drain(q, "t") == [b"second"]


def test_a_live_message_still_blocks_its_key_after_the_window_and_records_no_window(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue(dedup_window=0.3)
    q.put(b"first", "t", dedup_key="k")
    time.sleep(0.4)
    expiry = _dedup_rows(q)[("t", "k")]
    assert q.put(b"while live", "t", dedup_key="k") is None
    assert q.put_many([b"batch while live"], "t", dedup_keys=["k"]) == [None]
    # The blocked puts were not accepted, so they started no window of their own.
    assert _dedup_rows(q).get(("t", "k"), expiry) == expiry
    assert _drain(q, "t") == [b"first"]
    assert isinstance(q.put(b"second", "t", dedup_key="k"), int)


def test_put_many_mixes_window_blocked_new_and_in_batch_duplicate_keys(windowed: Queue) -> None:
    windowed.put(b"old", "t", dedup_key="old")
    _drain(windowed, "t")
    ids = windowed.put_many(
        [b"a", b"b", b"c", b"d", b"e", b"f"],
        "t",
        dedup_keys=["old", "new", "new", None, "other", None],
    )
    assert ids[0] is None
    assert ids[2] is None
    accepted = [ids[1], ids[3], ids[4], ids[5]]
    assert all(isinstance(i, int) for i in accepted)
    assert accepted == sorted(accepted)
    assert _drain(windowed, "t") == [b"b", b"d", b"e", b"f"]
    again = windowed.put_many([b"x", b"y", b"z"], "t", dedup_keys=["new", "other", "fresh"])
    assert again[:2] == [None, None]
    assert isinstance(again[2], int)


def test_put_many_with_only_blocked_keys_writes_nothing(windowed: Queue) -> None:
    windowed.put_many([b"a", b"b"], "t", dedup_keys=["a", "b"])
    _drain(windowed, "t")
    assert windowed.put_many([b"a", b"b", b"a"], "t", dedup_keys=["a", "b", "a"]) == [None] * 3
    assert windowed.stats().get("t") is None


def test_put_many_of_more_keys_than_one_statement_holds(windowed: Queue) -> None:
    n = CHUNK + 7
    keys = [f"k{i}" for i in range(n)]
    ids = windowed.put_many([b"x"] * n, "t", dedup_keys=keys)
    assert all(isinstance(i, int) for i in ids)
    assert len(_drain(windowed, "t")) == n
    assert windowed.put_many([b"y"] * n, "t", dedup_keys=keys[::-1]) == [None] * n
    assert len(_dedup_rows(windowed, "t")) == n


@pytest.mark.dialects("postgresql")
def test_windowed_puts_still_send_the_wake_up_notification(windowed: Queue) -> None:
    listener = windowed._waiting()
    try:
        mark = listener.mark()
        windowed.put(b"x", "t", dedup_key="k")
        listener.wait(mark, 10.0)  # returns once the notification is read
        assert listener.mark() != mark, "no notification for a windowed put"
        mark = listener.mark()
        windowed.put_many([b"y", b"z"], "t", dedup_keys=["j", "k"])
        listener.wait(mark, 10.0)
        assert listener.mark() != mark, "no notification for a windowed put_many"
    finally:
        windowed.close()


def test_a_window_recorded_in_a_rolled_back_transaction_does_not_exist(
    windowed: Queue, engine: sa.Engine
) -> None:
    with engine.connect() as conn:
        assert isinstance(windowed.put(b"rolled back", "t", dedup_key="k", connection=conn), int)
        conn.rollback()
    with engine.connect() as conn:
        kept = windowed.put(b"committed", "t", dedup_key="k", connection=conn)
        conn.commit()
    assert isinstance(kept, int)
    assert _drain(windowed, "t") == [b"committed"]
    assert windowed.put(b"blocked", "t", dedup_key="k") is None


def test_dedup_override_sets_replaces_and_clears_windows(windowed: Queue) -> None:
    windowed.dedup_override(["a", "b"], "t", window=60)
    assert windowed.put(b"a", "t", dedup_key="a") is None
    assert windowed.put_many([b"b", b"c"], "t", dedup_keys=["b", "c"])[0] is None
    windowed.dedup_override(["a"], "t", window=None)
    windowed.dedup_override(iter(["b"]), "t", window=0)
    assert isinstance(windowed.put(b"a", "t", dedup_key="a"), int)
    assert isinstance(windowed.put(b"b", "t", dedup_key="b"), int)
    _drain(windowed, "t")
    # Shorten a window a put recorded; clearing keys that have none is harmless.
    windowed.dedup_override(["a"], "t", window=0.2)
    windowed.dedup_override(["never", "seen"], "t", window=None)
    windowed.dedup_override([], "t", window=60)
    time.sleep(0.3)
    assert isinstance(windowed.put(b"a again", "t", dedup_key="a"), int)
    assert windowed.put(b"b again", "t", dedup_key="b") is None


def test_dedup_override_affects_only_its_topic(windowed: Queue) -> None:
    windowed.dedup_override(["k"], "t1", window=60)
    assert windowed.put(b"x", "t1", dedup_key="k") is None
    assert isinstance(windowed.put(b"y", "t2", dedup_key="k"), int)


def test_purge_forgets_the_windows_of_its_topic_only(windowed: Queue) -> None:
    windowed.put_many([b"a", b"b"], "t", dedup_keys=["a", "b"])
    windowed.put(b"other", "u", dedup_key="a")
    _drain(windowed, "t")
    assert windowed.purge("t", dead_only=True) == 0
    assert windowed.put(b"a", "t", dedup_key="a") is None
    assert windowed.purge("t") == 0
    assert isinstance(windowed.put(b"a", "t", dedup_key="a"), int)
    assert windowed.put(b"other", "u", dedup_key="a") is None
    assert set(_dedup_rows(windowed)) == {("t", "a"), ("u", "a")}


def test_expired_rows_are_swept_by_later_windowed_puts(make_queue: Callable[..., Queue]) -> None:
    short = make_queue(dedup_window=0.2)
    old = [f"old{i}" for i in range(SWEEP_EVERY - 1)]  # too few keys to sweep
    short.put_many([b"x"] * len(old), "t", dedup_keys=old)
    _drain(short, "t")
    time.sleep(0.3)
    assert len(_dedup_rows(short)) == len(old)  # expired, not yet swept

    fresh = make_queue(dedup_window=WINDOW)
    new = [f"new{i}" for i in range(SWEEP_EVERY - 1)]
    fresh.put_many([b"y"] * len(new), "t", dedup_keys=new)
    assert len(_dedup_rows(fresh)) == len(old) + len(new)  # no sweep before SWEEP_EVERY keys
    fresh.put(b"z", "t", dedup_key="last")
    assert set(_dedup_rows(fresh)) == {("t", k) for k in [*new, "last"]}


def test_concurrent_duplicate_puts_from_threads_have_one_winner_per_window(
    windowed: Queue,
) -> None:
    threads, rounds = 6, 4
    for round_ in range(rounds):
        key = f"key-{round_}"
        results = race([partial(windowed.put, b"x", "t", dedup_key=key)] * threads, seconds=30)
        assert [r for r in results if isinstance(r, Exception)] == []
        assert len([r for r in results if r is not None]) == 1, results
        _drain(windowed, "t")
    results = race([partial(windowed.put, b"x", "t", dedup_key="key-0")] * threads, seconds=30)
    assert results == [None] * threads


def test_concurrent_duplicate_puts_from_processes_have_one_winner_per_window(
    windowed: Queue, children: Children
) -> None:
    producers = [
        children.start("dedup-put", f"p{i}", "--dedup-window", str(WINDOW), topic="t")
        for i in range(4)
    ]
    children.go(producers)
    rounds = 6
    winners = []
    for round_ in range(rounds):
        key = f"key-{round_}"
        replies = children.ask(producers, key)
        assert [r.get("error") for r in replies] == [None] * len(producers)
        pairs = zip(replies, producers, strict=True)
        won = [f"{p.name}:{key}".encode() for r, p in pairs if r["id"]]
        assert len(won) == 1, replies
        winners += won
        # Ack the winner before the next round: only the window can block these keys now.
        assert _drain(windowed, "t") == won
    for round_ in range(rounds):
        replies = children.ask(producers, f"key-{round_}")
        assert [r.get("id", "error") for r in replies] == [None] * len(producers), replies
    for p in producers:
        p.send("")
    children.results(producers)
    assert windowed.stats().get("t") is None
    assert len(winners) == rounds


def test_bad_window_arguments_are_refused_before_any_sql(
    make_queue: Callable[..., Queue], windowed: Queue
) -> None:
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValidationError):
            make_queue(dedup_window=bad)
    with pytest.raises(InvalidType):
        make_queue(dedup_window="60")
    with pytest.raises(InvalidType):
        windowed.dedup_override("key", "t", window=60)
    with pytest.raises(InvalidType):
        windowed.dedup_override([b"key"], "t", window=60)  # type: ignore[list-item]
    with pytest.raises(InvalidType):
        windowed.dedup_override(5, "t", window=60)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        windowed.dedup_override(["ok", ""], "t", window=60)
    with pytest.raises(ValidationError):
        windowed.dedup_override(["ok"], "", window=60)
    with pytest.raises(ValidationError):
        windowed.dedup_override(["ok"], "t", window=-1)
    with pytest.raises(InvalidType):
        windowed.dedup_override(["ok"], "t", window="1")  # type: ignore[arg-type]
    assert _dedup_rows(windowed) == {}
