"""Quick start: enqueue, consume, retry and acknowledge on a SQLite file.

Run:  python examples/quickstart.py [--url URL]

It works on tables of its own prefix, ``example_quickstart``, and drops them at the end only if
this run created them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import sqlalchemy as sa

from squeal import Queue, migrate

PREFIX = "example_quickstart"


def main(url: str) -> None:
    engine = sa.create_engine(url)
    created = migrate.current(engine, prefix=PREFIX) is None  # no tables yet: ours to drop
    queue = Queue(
        engine, prefix=PREFIX, visibility_timeout=30.0, failure_base_delay=0.1, max_attempts=3
    )
    queue.create()  # runs squeal's migrations; in deployments use `squeal migrate`
    try:
        queue.put(b"send welcome email to ada@example.com", topic="emails")
        queue.put(b"send invoice to bob@example.com", topic="emails", priority=10)
        queue.put_many([b"resize 1.png", b"resize 2.png"], topic="images")
        print("ready per topic:", queue.topics())

        # Highest priority first: the invoice comes out before the welcome email.
        while (msg := queue.get("emails")) is not None:
            print(f"handling message {msg.id}: {msg.payload.decode()} (attempt {msg.attempts})")
            msg.ack()

        # A handler that fails: leaving a message's block with an exception nacks it, and it
        # comes back after a short backoff with its attempts counted. get() returns None when
        # nothing is ready, so check before entering the block.
        msg = queue.get("images")
        if msg is not None:
            try:
                with msg:
                    raise RuntimeError("disk full")
            except RuntimeError as error:
                print(f"message {msg.id} failed ({error}); it will be retried")

        # wait= blocks until a message is ready; the failed one comes back as attempt 2.
        while (msg := queue.get("images", wait=0.5)) is not None:
            print(f"handling message {msg.id}: {msg.payload.decode()} (attempt {msg.attempts})")
            msg.ack()
        print("left in the queue:", {topic: s.total for topic, s in queue.stats().items()})
    finally:
        if created:
            queue.destroy()
        queue.close()
        engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    default = f"sqlite:///{Path(tempfile.mkdtemp()) / 'quickstart.db'}"
    parser.add_argument("--url", default=default, help="SQLAlchemy URL (default: temp SQLite)")
    main(parser.parse_args().url)
