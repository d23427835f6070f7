"""Dead letters that say why: when a message died, after how many attempts, the reason and the
last error a nack gave; redrive and purge of chosen messages."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from squeal import DeadMessage, Queue
from squeal.message import ERROR_LIMIT


def _dead(queue: Queue, topic: str = "t") -> dict[bytes, DeadMessage]:
    return {d.payload: d for d in queue.dead(topic)}


def _recent(when: datetime | None) -> bool:
    now = datetime.now(timezone.utc)
    return when is not None and now - timedelta(minutes=5) < when <= now + timedelta(minutes=5)


def test_a_message_nacked_to_death_keeps_its_last_error(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(failure_base_delay=0.0, max_attempts=2)
    queue.put(b"x", "t")
    first = queue.get("t")
    assert first is not None
    first.nack(error=ValueError("cannot parse line 3"))
    second = queue.get("t")
    assert second is not None
    second.nack(error="timeout talking to the mail server")
    (dead,) = queue.dead("t")
    assert dead.reason == "failed"
    assert dead.attempts == 2
    assert dead.last_error == "timeout talking to the mail server"
    assert _recent(dead.died_at)


def test_a_nack_without_an_error_keeps_the_one_before(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(failure_base_delay=0.0, max_attempts=2)
    queue.put(b"x", "t")
    first = queue.get("t")
    assert first is not None
    first.nack(error=KeyError("user"))
    second = queue.get("t")
    assert second is not None
    second.nack()
    (dead,) = queue.dead("t")
    assert dead.last_error == "KeyError: 'user'"


def test_a_message_whose_last_lease_ran_out_died_of_it(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(visibility_timeout=0.2, max_attempts=1)
    queue.put_many([b"seen", b"unseen"], "t")
    assert len(queue.get_many("t", 2)) == 2  # never settled
    time.sleep(0.4)
    before = _dead(queue)  # no claim has looked since: what the next one will record
    assert {d.reason for d in before.values()} == {"lease expired"}
    assert queue.get("t") is None  # this claim records it
    after = _dead(queue)
    assert {d.reason for d in after.values()} == {"lease expired"}
    assert all(_recent(d.died_at) for d in after.values())
    assert after[b"seen"].last_error is None


def test_a_message_whose_ttl_ran_out_died_of_it(queue: Queue) -> None:
    queue.put(b"late", "t", ttl=0.2)
    time.sleep(0.4)
    assert _dead(queue)[b"late"].reason == "expired"
    assert queue.get("t") is None
    (dead,) = queue.dead("t")
    assert (dead.reason, dead.attempts) == ("expired", 0)
    assert _recent(dead.died_at)


def test_redrive_and_purge_of_chosen_messages(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(failure_base_delay=0.0, max_attempts=1)
    ids = queue.put_many([b"a", b"b", b"c", b"d"], "t")
    other = queue.put(b"o", "other")
    for msg in queue.get_many("t", 4):
        msg.nack(error="boom")
    a, b, c, _ = ids
    assert queue.redrive("t", ids=[a, other, a]) == 1  # another topic's id is not touched
    assert queue.purge("t", ids=[b, other], dead_only=True) == 1
    assert sorted(x.payload for x in queue.dead("t")) == [b"c", b"d"]
    back = queue.get("t")
    assert back is not None
    assert back.id == a
    assert back.attempts == 1  # attempts reset by the redrive
    back.ack()
    assert queue.purge("t", ids=[c]) == 1
    assert queue.redrive("t", ids=[]) == 0
    assert queue.purge("t", ids=[]) == 0
    assert [x.payload for x in queue.dead("t")] == [b"d"]
    assert queue.size("other") == 1


def test_a_redriven_message_that_dies_again_says_so_anew(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(failure_base_delay=0.0, max_attempts=1, visibility_timeout=0.2)
    queue.put(b"x", "t")
    msg = queue.get("t")
    assert msg is not None
    msg.nack(error="first")
    assert queue.redrive("t") == 1
    again = queue.get("t")
    assert again is not None  # this time its lease runs out
    time.sleep(0.4)
    assert queue.get("t") is None
    (dead,) = queue.dead("t")
    assert dead.reason == "lease expired"
    assert dead.last_error == "first"  # the last error a nack gave


def test_a_long_error_is_cut(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(max_attempts=1)
    queue.put_many([b"x", b"y"], "t")
    x, y = queue.get_many("t", 2)
    x.nack(error="é" * (ERROR_LIMIT + 500))
    queue.nack_many([y], error=RuntimeError("r" * ERROR_LIMIT))
    dead = _dead(queue)
    for message in (dead[b"x"], dead[b"y"]):
        assert message.last_error is not None
        assert len(message.last_error) == ERROR_LIMIT
        assert message.last_error.endswith("…")
    assert dead[b"y"].last_error.startswith("RuntimeError: rrr")  # type: ignore[union-attr]


@pytest.mark.parametrize("error", [3, b"bytes", object()])
def test_a_bad_error_is_refused_and_settles_nothing(queue: Queue, error: object) -> None:
    queue.put(b"x", "t")
    msg = queue.get("t")
    assert msg is not None
    with pytest.raises(TypeError):
        msg.nack(error=error)  # type: ignore[arg-type]
    msg.ack()
