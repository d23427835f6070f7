"""Consumer: wait for messages, handle them, ack or nack, and extend a long lease.

Run:  python examples/consumer.py [--url URL] [--prefix PREFIX]

It enqueues a few messages of its own first, so it runs by itself; point it at the prefix of
examples/producer.py --keep to consume that one's messages instead.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import sqlalchemy as sa

from squeal import Queue


def handle(payload: bytes) -> None:
    if payload == b"bad":
        raise ValueError("cannot handle this one")
    print("handled", payload.decode())


def main(url: str, prefix: str) -> None:
    queue = Queue(sa.create_engine(url), prefix=prefix, failure_base_delay=0.2, max_attempts=2)
    queue.create()
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
    queue.destroy()
    queue.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    default = f"sqlite:///{Path(tempfile.mkdtemp()) / 'consumer.db'}"
    parser.add_argument("--url", default=default, help="SQLAlchemy URL (default: temp SQLite)")
    parser.add_argument("--prefix", default="example_consumer", help="table prefix")
    args = parser.parse_args()
    main(args.url, args.prefix)
