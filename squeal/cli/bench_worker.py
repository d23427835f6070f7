"""``squeal bench``'s worker row: a Worker with a one-message handler against a plain loop.

Both drain the same backlog of the same queue, round by round in turns: the loop is what an
application writes without a worker (``get()``, handle, ``ack()``: two commits a message), the
worker is :class:`squeal.Worker` at its defaults with one handler thread (it claims ahead and
commits its acks in batches). The handler does nothing, so the row measures what squeal costs
per message; ``ratio`` is the worker's rate over the loop's.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from squeal.message import Message
from squeal.queue import Queue
from squeal.worker import Worker

#: How long one side may take to drain its backlog before the row gives up.
TIMEOUT = 300.0


@dataclass(frozen=True)
class WorkerRow:
    """Messages per second of each side (medians over the rounds) and their ratio."""

    loop: float
    worker: float

    @property
    def ratio(self) -> float:
        return self.worker / self.loop if self.loop else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"loop": self.loop, "worker": self.worker, "ratio": round(self.ratio, 2)}


def measure(queue: Queue, count: int, rounds: int, topic: str = "bench_worker") -> WorkerRow:
    """Drain ``count`` messages with each side ``rounds`` times; the medians."""
    loops: list[float] = []
    workers: list[float] = []
    payloads = [b"x" * 64] * count
    for _ in range(rounds):
        queue.put_many(payloads, topic)
        loops.append(count / _loop(queue, topic, count))
        queue.put_many(payloads, topic)
        workers.append(count / _worker(queue, topic, count))
    return WorkerRow(statistics.median(loops), statistics.median(workers))


def _loop(queue: Queue, topic: str, count: int) -> float:
    started = time.perf_counter()
    done = 0
    while done < count:
        msg = queue.get(topic)
        if msg is None:
            raise RuntimeError(f"the loop found {done} of {count} messages")
        msg.ack()
        done += 1
    return time.perf_counter() - started


def _worker(queue: Queue, topic: str, count: int) -> float:
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


def main() -> None:
    """``python -m squeal.cli.bench_worker URL [COUNT] [ROUNDS]``: the row alone."""
    import secrets
    import sys

    from squeal import migrate

    url = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    engine = sa.create_engine(url)
    prefix = f"benchw_{secrets.token_hex(3)}"
    migrate.upgrade(engine, prefix=prefix)
    try:
        queue = Queue(engine, prefix=prefix)
        row = measure(queue, count, rounds)
        queue.close()
        print(f"{url}: loop {row.loop:,.0f}/s, worker {row.worker:,.0f}/s, ratio {row.ratio:.2f}")
    finally:
        migrate.downgrade(engine, prefix=prefix, revision="base", drop_version_table=True)
        engine.dispose()


if __name__ == "__main__":
    main()
