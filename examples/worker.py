"""Worker: a handler on several threads, with heartbeats, retries and a graceful stop.

Run:  python examples/worker.py [--url URL]

It works on tables of its own prefix, ``example_worker``, and drops them at the end only if this
run created them. Images 7 and 17 fail their first attempt on purpose: the worker logs each
failure at WARNING with its traceback, and the retries succeed.

The same handler runs from the command line with:
    squeal worker --url URL examples.worker:resize --topic images --concurrency 4
(stop it with Ctrl-C or SIGTERM: in-flight messages finish, or are released, never lost).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from squeal import Message, Queue, migrate
from squeal.worker import Worker

PREFIX = "example_worker"
done: list[int] = []


def resize(message: Message) -> None:
    """The handler: return to ack; raise to nack (retried with backoff)."""
    if message.payload.endswith(b"7") and message.attempts == 1:
        raise OSError("image server busy")  # logged with its traceback; retried
    time.sleep(0.01)
    done.append(message.id)


def main(url: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    engine = sa.create_engine(url)
    created = migrate.current(engine, prefix=PREFIX) is None  # no tables yet: ours to drop
    queue = Queue(engine, prefix=PREFIX, failure_base_delay=0.1)
    queue.create()
    try:
        queue.put_many([f"image {i}".encode() for i in range(20)], topic="images")

        worker = Worker(queue, resize, "images", concurrency=4, wait=0.2)
        # Here a thread stops the worker once the work is done; `squeal worker` stops on SIGTERM.
        thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
        thread.start()
        deadline = time.monotonic() + 30
        while len(done) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.stop()
        thread.join()
        print(f"acked {worker.stats.acked}, failed attempts {worker.stats.failed}")
    finally:
        if created:
            queue.destroy()
        queue.close()
        engine.dispose()
    if len(done) < 20:
        raise SystemExit("not every image was handled")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    default = f"sqlite:///{Path(tempfile.mkdtemp()) / 'worker.db'}"
    parser.add_argument("--url", default=default, help="SQLAlchemy URL (default: temp SQLite)")
    main(parser.parse_args().url)
