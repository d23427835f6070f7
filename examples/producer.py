"""Producer: enqueue messages with priorities, delays and dedup keys.

Run:  python examples/producer.py [--url URL] [--prefix PREFIX] [--keep]

The example drops its tables at the end, but only when this run created them, and never with
--keep. With --keep, run examples/consumer.py with the same --url and --prefix to consume what
it produced.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import sqlalchemy as sa

from squeal import Queue, migrate


def main(url: str, prefix: str, keep: bool) -> None:
    engine = sa.create_engine(url)
    created = migrate.current(engine, prefix=prefix) is None  # no tables yet: ours to drop
    queue = Queue(engine, prefix=prefix)
    queue.create()
    try:
        # One message: bytes in, an id out.
        first = queue.put(json.dumps({"to": "ada@example.com"}).encode(), topic="emails")
        print("put message", first)

        # Higher priority is delivered first; delay hides a message for a while.
        queue.put(b'{"to": "boss@example.com"}', topic="emails", priority=10)
        queue.put(b'{"to": "later@example.com"}', topic="emails", delay=30)

        # A batch is one INSERT and all-or-nothing.
        ids = queue.put_many([f"thumbnail {i}".encode() for i in range(100)], topic="images")
        print(f"put {len(ids)} images in one batch")

        # A dedup key makes a retried put harmless while the first message is still queued.
        queue.put(b"nightly report", topic="reports", dedup_key="report-2024-06-01")
        again = queue.put(b"nightly report", topic="reports", dedup_key="report-2024-06-01")
        print("second put with the same dedup key returned", again)

        for topic, s in queue.stats().items():
            print(f"{topic:8} ready={s.ready} delayed={s.delayed}")
    finally:
        if created and not keep:
            queue.destroy()
        else:
            print(f"kept the tables of prefix {prefix!r} and their messages")
        queue.close()
        engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    default = f"sqlite:///{Path(tempfile.mkdtemp()) / 'producer.db'}"
    parser.add_argument("--url", default=default, help="SQLAlchemy URL (default: temp SQLite)")
    parser.add_argument("--prefix", default="example", help="table prefix (default: example)")
    parser.add_argument("--keep", action="store_true", help="keep the tables and messages")
    args = parser.parse_args()
    main(args.url, args.prefix, args.keep)
