"""Concurrency: real processes, threads and connections racing on one queue.

Children are fresh interpreters (``python -m tests.procs``, see that module) pointed at this
test's tables through ``db_url`` and ``prefix``; they start their race together on a ``go`` line
and report what they received, acked and put as JSON. Every child is bounded by a deadline and
killed at teardown if it is still running.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from squeal import LeaseLost, Message, Queue
from tests.children import STARTUP_TIMEOUT, TOPIC, Children
from tests.race import race


@pytest.fixture
def rival(queue: Queue, db_url: str, prefix: str) -> Iterator[Queue]:
    """A second consumer on the same tables, through an engine of its own."""
    engine = sa.create_engine(db_url)
    try:
        yield Queue(engine, prefix=prefix)
    finally:
        engine.dispose()


def _fill(queue: Queue, count: int, topic: str = TOPIC) -> dict[int, bytes]:
    """Put ``count`` messages in chunks of varying priority; return payload by id."""
    sent: dict[int, bytes] = {}
    for start in range(0, count, 50):
        payloads = [f"m{i}".encode() for i in range(start, min(count, start + 50))]
        ids = queue.put_many(payloads, topic, priority=(start // 50) % 7 - 3)
        for msg_id, payload in zip(ids, payloads, strict=True):
            assert msg_id is not None
            sent[msg_id] = payload
    return sent


def _received(reports: list[dict[str, Any]]) -> list[list[Any]]:
    return [row for report in reports for row in report["received"]]


def _acked(reports: list[dict[str, Any]]) -> list[int]:
    return [msg_id for report in reports for msg_id in report["acked"]]


def _assert_empty(queue: Queue, topic: str = TOPIC) -> None:
    assert queue.stats().get(topic) is None, queue.stats()


def _drain_competing(queue: Queue, children: Children, batch: int) -> None:
    sent = _fill(queue, 400)
    consumers = [
        children.start("consume", f"c{i}", "--batch", str(batch), "--vt", "60") for i in range(4)
    ]
    children.go(consumers)
    reports = children.results(consumers)

    received = _received(reports)
    counts = Counter(row[0] for row in received)
    assert [i for i, n in counts.items() if n > 1] == [], "a message was delivered twice"
    assert set(counts) == set(sent)
    assert {row[0]: row[2].encode() for row in received} == sent
    assert {row[1] for row in received} == {1}
    assert sorted(_acked(reports)) == sorted(sent)
    assert all(1 <= n <= batch for report in reports for n in report["batches"])
    _assert_empty(queue)


def test_competing_consumer_processes_never_receive_the_same_message(
    queue: Queue, children: Children
) -> None:
    _drain_competing(queue, children, batch=1)


def test_competing_batch_claims_never_overlap(queue: Queue, children: Children) -> None:
    _drain_competing(queue, children, batch=10)


@pytest.mark.parametrize("batch", [1, 3], ids=["get", "get_many"])
def test_messages_of_a_killed_consumer_come_back_after_the_visibility_timeout(
    queue: Queue, children: Children, batch: int
) -> None:
    vt = 3.0  # the checks below run within it: a loaded machine's stalls are borne
    sent = _fill(queue, 5)
    victim = children.start("claim-hang", "victim", "--batch", str(batch), "--vt", str(vt))
    children.ready([victim])
    started = time.monotonic()  # before the claim, so never later than the lease's start
    victim.send("go")
    claimed = json.loads(victim.read_line(STARTUP_TIMEOUT))
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.proc.wait(10) == -signal.SIGKILL
    claimed_ids = {row[0] for row in claimed}
    assert len(claimed_ids) == batch
    assert {row[1] for row in claimed} == {1}

    # Before the timeout: the dead consumer's leases hold; only the others are delivered.
    early = queue.get_many(TOPIC, 10, visibility_timeout=30)
    elapsed = time.monotonic() - started
    assert {m.id for m in early} == set(sent) - claimed_ids, f"checked {elapsed:.2f}s after claim"
    assert queue.stats()[TOPIC].leased == 5
    queue.ack_many(early)

    again: list[Message] = []
    deadline = time.monotonic() + vt + 10
    while len(again) < batch and time.monotonic() < deadline:
        again += queue.get_many(TOPIC, 10, visibility_timeout=30, wait=0.5)
    came_back = time.monotonic()
    assert {m.id for m in again} == claimed_ids
    assert came_back - started >= vt - 0.05, "redelivered before the lease ran out"
    assert all(m.attempts == 2 for m in again)
    assert all(m.payload == sent[m.id] for m in again)
    old_tokens = {row[0]: row[2] for row in claimed}
    assert all(m.lease_token != old_tokens[m.id] for m in again)
    queue.ack_many(again)
    _assert_empty(queue)


@pytest.mark.parametrize("late", ["ack", "nack", "release", "touch"])
def test_a_stale_consumer_after_a_reclaim_gets_lease_lost_and_changes_nothing(
    queue: Queue, rival: Queue, late: str
) -> None:
    msg_id = queue.put(b"job", TOPIC)
    stale = queue.get(TOPIC, visibility_timeout=0.3)
    assert stale is not None
    current = rival.get(TOPIC, visibility_timeout=30, wait=10)  # as soon as the lease expires
    assert current is not None
    assert (current.id, current.attempts) == (msg_id, 2)
    assert current.lease_token != stale.lease_token

    with pytest.raises(LeaseLost) as lost:
        getattr(stale, late)()
    assert lost.value.message_id == msg_id

    stats = queue.stats()[TOPIC]
    assert (stats.ready, stats.delayed, stats.leased, stats.dead) == (0, 0, 1, 0)
    assert queue.get(TOPIC) is None
    assert rival.get(TOPIC) is None
    current.touch()
    current.ack()
    _assert_empty(queue)


def test_a_late_ack_racing_a_reclaim_has_exactly_one_winner(queue: Queue, rival: Queue) -> None:
    for round_ in range(5):
        msg_id = queue.put(f"r{round_}".encode(), TOPIC)
        stale = queue.get(TOPIC, visibility_timeout=0.1)
        assert stale is not None
        time.sleep(0.15)  # the lease has expired; nobody re-claimed it yet
        acked, claimed = race(
            [stale.ack, lambda: rival.get(TOPIC, visibility_timeout=30)], seconds=30
        )
        if acked is None:  # the expired lease was still the current one: ack won
            assert claimed is None, f"round {round_}: acked and also delivered again"
        else:
            assert isinstance(acked, LeaseLost), repr(acked)
            assert isinstance(claimed, Message), repr(claimed)
            assert (claimed.id, claimed.attempts) == (msg_id, 2)
            claimed.ack()
        _assert_empty(queue)


def test_concurrent_duplicate_puts_from_threads_have_exactly_one_winner(queue: Queue) -> None:
    threads, rounds = 8, 5
    winners: dict[int, bytes] = {}
    for round_ in range(rounds):
        key = f"key-{round_}"
        puts = [partial(queue.put, f"t{i}".encode(), TOPIC, dedup_key=key) for i in range(threads)]
        results = race(list(puts), seconds=30)
        assert [r for r in results if isinstance(r, Exception)] == []
        ids = [r for r in results if r is not None]
        assert len(ids) == 1, results
        assert isinstance(ids[0], int)
        winners[ids[0]] = f"t{results.index(ids[0])}".encode()

    assert queue.stats()[TOPIC].total == rounds
    stored = {m.id: m.payload for m in queue.get_many(TOPIC, 100)}
    assert stored == winners


def test_concurrent_duplicate_puts_from_processes_have_exactly_one_winner(
    queue: Queue, children: Children
) -> None:
    producers = [children.start("dedup-put", f"p{i}") for i in range(4)]
    children.go(producers)
    winners: dict[int, bytes] = {}
    rounds = 10
    for round_ in range(rounds):
        key = f"key-{round_}"
        replies = children.ask(producers, key)
        assert [r.get("error") for r in replies] == [None] * len(producers)
        won = [(r["id"], p.name) for r, p in zip(replies, producers, strict=True) if r["id"]]
        assert len(won) == 1, replies
        assert all(r["id"] is None for r in replies if r["id"] != won[0][0])
        winners[won[0][0]] = f"{won[0][1]}:{key}".encode()
    for p in producers:
        p.send("")
    children.results(producers)

    assert queue.stats()[TOPIC].total == rounds
    stored = {m.id: m.payload for m in queue.get_many(TOPIC, 100)}
    assert stored == winners


def test_producers_and_consumers_at_once_deliver_every_message_once(
    queue: Queue, children: Children, tmp_path: Path
) -> None:
    done = tmp_path / "producers-done"
    producers = [
        children.start("produce", f"p{i}", "--count", "300", "--seed", str(i)) for i in range(2)
    ]
    consumers = [
        children.start("consume", f"c{i}", "--until", str(done), "--wait", "0.05") for i in range(3)
    ]
    children.go(producers + consumers)
    produced = children.results(producers)
    done.touch()
    consumed = children.results(consumers)

    sent: dict[int, bytes] = {}
    for report, p in zip(produced, producers, strict=True):
        assert None not in report["put"]
        for seq, msg_id in enumerate(report["put"]):
            sent[msg_id] = f"{p.name}:{seq}".encode()
    assert len(sent) == 600

    received = _received(consumed)
    counts = Counter(row[0] for row in received)
    assert [i for i, n in counts.items() if n > 1] == [], "a message was delivered twice"
    assert {row[0]: row[2].encode() for row in received} == sent
    assert {row[1] for row in received} == {1}
    assert sorted(_acked(consumed)) == sorted(sent)
    _assert_empty(queue)


def test_many_processes_writing_and_claiming_never_see_an_error(
    queue: Queue, children: Children, tmp_path: Path
) -> None:
    done = tmp_path / "producers-done"
    producers = [
        children.start("chaos", f"p{i}", "--count", "80", "--seed", str(i)) for i in range(3)
    ]
    consumers = [
        children.start("chaos", f"c{i}", "--until", str(done), "--seed", str(10 + i), "--vt", "30")
        for i in range(3)
    ]
    children.go(producers + consumers)
    produced = children.results(producers)  # each asserts: no exception at all
    done.touch()
    consumed = children.results(consumers)

    put_ids = [i for report in produced for i in report["put"] if i is not None]
    assert len(put_ids) == len(set(put_ids))
    acked = Counter(_acked(consumed))
    assert [i for i, n in acked.items() if n > 1] == [], "a message was acked twice"
    assert set(acked) == set(put_ids)
    _assert_empty(queue)
