"""Consumer: wait for messages, handle them, ack or nack, and extend a long lease.

Run:  python examples/consumer.py [--url URL] [--prefix PREFIX]

On a prefix without tables it creates them, enqueues a few messages of its own so that it runs
by itself, and drops the tables at the end. On a prefix that already has tables (for example
after ``examples/producer.py --keep`` with the same --url and --prefix) it consumes what is
there, adds nothing and drops nothing: it never destroys tables it did not create.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import sqlalchemy as sa

from squeal import Queue, migrate


def handle(payload: bytes) -> None:
    if payload == b"bad":
        raise ValueError("cannot handle this one")
    print("handled", payload.decode())


def main(url: str, prefix: str) -> None:
    engine = sa.create_engine(url)
    created = migrate.current(engine, prefix=prefix) is None  # no tables yet: ours to drop
    queue = Queue(engine, prefix=prefix, failure_base_delay=0.2, max_attempts=2)
    queue.create()
    try:
        if created:
            queue.put_many([b"one", b"two", b"bad", b"three"], topic="emails")

        # wait= returns as soon as a message is ready (PostgreSQL: woken by LISTEN/NOTIFY; other
        # databases: polling with backoff), or None after the wait with nothing to do.
        while (msg := queue.get("emails", wait=1.0)) is not None:
            try:
                if msg.payload == b"three":
                    msg.touch(visibility_timeout=120)  # long job: extend the lease first
                handle(msg.payload)
            except ValueError as error:
                print(f"message {msg.id} failed on attempt {msg.attempts}: {error}")
                msg.nack()  # redelivered after backoff; dead after max_attempts
            else:
                msg.ack()

        for dead in queue.dead("emails"):
            print(f"dead letter {dead.id}: {dead.payload!r} after {dead.attempts} attempts")
    finally:
        if created:
            queue.destroy()
        else:
            left = {topic: s.total for topic, s in queue.stats().items()}
            print(f"left the tables of prefix {prefix!r} in place; messages per topic: {left}")
        queue.close()
        engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    default = f"sqlite:///{Path(tempfile.mkdtemp()) / 'consumer.db'}"
    parser.add_argument("--url", default=default, help="SQLAlchemy URL (default: temp SQLite)")
    parser.add_argument("--prefix", default="example", help="table prefix (default: example)")
    args = parser.parse_args()
    main(args.url, args.prefix)
