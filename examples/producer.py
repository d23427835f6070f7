"""Producer: enqueue messages with priorities, delays and dedup keys.

Run:  python examples/producer.py [--url URL] [--prefix PREFIX] [--keep]

Without --keep the example drops its tables at the end; with it, run examples/consumer.py
with the same --url and --prefix to consume what it produced.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import sqlalchemy as sa

from squeal import Queue


def main(url: str, prefix: str, keep: bool) -> None:
    queue = Queue(sa.create_engine(url), prefix=prefix)
    queue.create()

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
    if not keep:
        queue.destroy()
    queue.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    default = f"sqlite:///{Path(tempfile.mkdtemp()) / 'producer.db'}"
    parser.add_argument("--url", default=default, help="SQLAlchemy URL (default: temp SQLite)")
    parser.add_argument("--prefix", default="example_producer", help="table prefix")
    parser.add_argument("--keep", action="store_true", help="keep the tables and messages")
    args = parser.parse_args()
    main(args.url, args.prefix, args.keep)
