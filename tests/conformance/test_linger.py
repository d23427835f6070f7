"""Linger: puts that return at once and are stored together, in order, by a thread."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import pytest

from squeal import PayloadTooLarge, Queue, ValidationError
from squeal.linger import Linger, close_all, flush_all

pytestmark = pytest.mark.sync_only(
    "Linger is a sync producer's helper with a thread of its own; AsyncQueue has none"
)

#: A linger no stall outlasts: nothing is stored before a flush, a full batch or a close.
LONG = 3600.0


def _ready(queue: Queue, topic: str) -> list[bytes]:
    got = queue.get_many(topic, 100)
    queue.ack_many(got)
    return [m.payload for m in got]


def test_lingering_puts_are_stored_by_a_flush_in_their_order(queue: Queue) -> None:
    linger = Linger(queue, linger=LONG)
    try:
        for n in range(3):
            linger.put(b"a%d" % n, "a")
        linger.put(b"urgent", "a", priority=5)
        linger.put(b"b0", "b")
        linger.put(b"a3", "a")
        assert queue.size("a") == 0  # returned, not stored
        assert queue.size("b") == 0
        assert linger.flush(timeout=60)
        assert queue.size("a") == 5
        assert _ready(queue, "a") == [b"urgent", b"a0", b"a1", b"a2", b"a3"]
        assert _ready(queue, "b") == [b"b0"]
        assert linger.flush(timeout=0)  # nothing waits
    finally:
        linger.close()


def test_a_full_batch_is_stored_without_lingering(queue: Queue) -> None:
    linger = Linger(queue, linger=LONG, batch=4)
    try:
        for n in range(4):
            linger.put(b"%d" % n, "t")
        deadline = time.monotonic() + 60
        while queue.size("t") < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _ready(queue, "t") == [b"0", b"1", b"2", b"3"]
    finally:
        linger.close()


def test_invalid_puts_raise_at_once_and_nothing_waits(queue: Queue) -> None:
    linger = Linger(queue, linger=LONG)
    try:
        with pytest.raises(PayloadTooLarge):
            linger.put(b"x" * (queue.max_payload_size + 1), "t")
        with pytest.raises(ValidationError):
            linger.put(b"x", "")
        with pytest.raises(TypeError):
            linger.put("not bytes", "t")  # type: ignore[arg-type]
        assert linger.flush(timeout=0)
        assert queue.size("t") == 0
    finally:
        linger.close()


def test_close_stores_what_waits_and_later_puts_are_stored_at_once(queue: Queue) -> None:
    linger = Linger(queue, linger=LONG)
    linger.put(b"waiting", "t")
    linger.close()
    assert queue.size("t") == 1
    linger.put(b"after", "t")  # stored before it returns
    assert _ready(queue, "t") == [b"waiting", b"after"]


def test_a_forked_child_leaves_its_parents_puts_to_the_parent(queue: Queue) -> None:
    linger = Linger(queue, linger=LONG)
    try:
        linger.put(b"parent", "t")
        pid = os.fork()
        if pid == 0:  # the child: stores its own put only
            code = 1
            try:
                linger.put(b"child", "t")
                code = 0 if linger.flush(timeout=60) else 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert linger.flush(timeout=60)
        assert sorted(_ready(queue, "t")) == [b"child", b"parent"]  # each once
    finally:
        linger.close()


def test_flush_all_and_close_all_reach_every_open_linger(queue: Queue) -> None:
    first, second = Linger(queue, linger=LONG), Linger(queue, linger=LONG)
    try:
        first.put(b"1", "a")
        second.put(b"2", "b")
        assert flush_all(timeout=60)
        assert queue.size("a") == 1
        assert queue.size("b") == 1
        first.put(b"3", "a")
        second.put(b"4", "b")
    finally:
        close_all()
    assert queue.size("a") == 2
    assert queue.size("b") == 2


def test_puts_that_keep_failing_are_given_up_and_logged(
    make_queue: Callable[..., Queue], caplog: pytest.LogCaptureFixture
) -> None:
    doomed = make_queue()
    doomed.destroy()  # every store fails: the tables are gone
    linger = Linger(doomed, linger=LONG, give_up=0.3)
    try:
        with caplog.at_level(logging.WARNING, logger="squeal.linger"):
            linger.put(b"never stored", "t")
            assert linger.flush(timeout=60)  # given up, not hanging
        assert "1 put(s) to 't'" in caplog.text
        assert "failing for" in caplog.text, caplog.text
    finally:
        linger.close()
