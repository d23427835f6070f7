"""``squeal bench``'s worker row: a Worker with a one-message handler against a plain loop.

Both drain a backlog of the same queue and topic, in turns, each round: the loop is what an
application writes without a worker (``get()``, handle, ``ack()``: two commits a message), the
worker is :class:`squeal.Worker` at its defaults with one handler thread (it claims ahead and
commits its acks in batches). The handler does nothing, so the row measures what squeal costs
per message. The bench prints the worker's rate against the floor's hand-written one-message
loop, and over squeal's own loop.
"""

from __future__ import annotations

import threading
import time

from squeal.message import Message
from squeal.queue import Queue
from squeal.worker import Worker

#: How long one side may take to drain its backlog before the row gives up.
TIMEOUT = 300.0


def loop_seconds(queue: Queue, topic: str, count: int) -> float:
    """Seconds a plain loop takes to get and ack ``count`` messages of ``topic``, one by one."""
    started = time.perf_counter()
    done = 0
    while done < count:
        msg = queue.get(topic)
        if msg is None:
            raise RuntimeError(f"the loop found {done} of {count} messages")
        msg.ack()
        done += 1
    return time.perf_counter() - started


def worker_seconds(queue: Queue, topic: str, count: int) -> float:
    """Seconds a Worker (defaults, one handler doing nothing) takes to ack ``count`` messages of
    ``topic``, from its start."""

    def handle(msg: Message) -> None:
        pass

    worker = Worker(queue, handle, topic, wait=0.1, run_schedules=False, registry_beat=None)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    started = time.perf_counter()
    thread.start()
    try:
        while worker.stats.acked < count:
            if time.perf_counter() - started > TIMEOUT or not thread.is_alive():
                raise RuntimeError(f"the worker acked {worker.stats.acked} of {count} messages")
            time.sleep(0.001)
        return time.perf_counter() - started
    finally:
        worker.stop()
        thread.join(TIMEOUT)
