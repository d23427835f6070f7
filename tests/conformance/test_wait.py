"""get(wait=...) returns as soon as a message is ready, else at the deadline (all databases)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from squeal import Queue

#: A child process that puts one message after a pause: argv = url prefix topic pause notify.
_PUT_LATER = """
import sys, time
import sqlalchemy as sa
from squeal import Queue
url, prefix, topic, pause, notify = sys.argv[1:]
q = Queue(sa.create_engine(url), prefix=prefix, notify=notify == "1")
q.size(topic)  # connect before the pause, so the put itself is quick
print("ready", flush=True)
time.sleep(float(pause))
q.put(b"wake up", topic)
q.close()
"""


def _put_later(
    url: str, prefix: str, topic: str, pause: float, notify: bool
) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _PUT_LATER, url, prefix, topic, str(pause), "1" if notify else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def test_wait_returns_early_when_another_process_puts(
    make_queue: Callable[..., Queue], db_url: str, prefix: str
) -> None:
    q = make_queue()
    child = _put_later(db_url, prefix, "jobs", 0.5, notify=True)
    try:
        start = time.monotonic()
        msg = q.get("jobs", wait=30)
        waited = time.monotonic() - start
    finally:
        child.communicate(timeout=30)
        assert child.returncode == 0
        q.close()
    assert msg is not None
    assert msg.payload == b"wake up"
    assert waited < 15, f"waited {waited:.1f}s of 30s for a message put after 0.5s"
    msg.ack()


def test_wait_returns_nothing_at_the_deadline(make_queue: Callable[..., Queue]) -> None:
    q = make_queue()
    q.put(b"other topic", "elsewhere")
    start = time.monotonic()
    assert q.get_many("jobs", 5, wait=0.7) == []
    waited = time.monotonic() - start
    q.close()
    assert 0.7 <= waited < 5


def test_wait_ignores_a_delayed_message_until_it_is_due(make_queue: Callable[..., Queue]) -> None:
    q = make_queue()
    q.put(b"much later", "jobs", delay=60)
    assert q.get("jobs", wait=0.2) is None  # a delayed message wakes no waiting claim
    q.put(b"later", "jobs", delay=0.6)
    msg = q.get("jobs", wait=10)  # but the wait takes it once it is due
    q.close()
    assert msg is not None
    assert msg.payload == b"later"
    msg.ack()


@pytest.mark.dialects("postgresql")
def test_missed_notification_is_still_delivered_by_polling(
    make_queue: Callable[..., Queue], db_url: str, prefix: str
) -> None:
    """The producer sends no NOTIFY; the listening consumer finds the message by re-checking."""
    q = make_queue()
    q.get("jobs", wait=0.1)  # the listener is open before the put
    child = _put_later(db_url, prefix, "jobs", 0.3, notify=False)
    try:
        msg = q.get("jobs", wait=20)
    finally:
        child.communicate(timeout=30)
        assert child.returncode == 0
        q.close()
    assert msg is not None
    assert msg.payload == b"wake up"
    msg.ack()


def test_close_ends_the_listener_and_waiting_works_again(make_queue: Callable[..., Queue]) -> None:
    q = make_queue()
    assert q.get("jobs", wait=0.1) is None
    q.close()
    q.put(b"after close", "jobs")
    msg = q.get("jobs", wait=5)
    q.close()
    assert msg is not None
    assert msg.payload == b"after close"
    msg.ack()
