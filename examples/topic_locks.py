"""Topic locks and the Buffer: serial work per topic, a quota per topic, topics in turn.

Run:  python examples/topic_locks.py [--url URL]

A crawler keeps one topic per web site. Politeness: at most two downloads per site at once,
and one crawler at a time per site. First a bare topic lock works one site alone; then two
Buffers (two Queue objects, as two crawler processes would have) share the other sites on
threads, never the same site at once. It works on tables of its own prefix,
``example_topic_locks``, and drops them at the end only if this run created them.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

from squeal import Buffer, Queue, migrate

PREFIX = "example_topic_locks"
SITES = ["example.com", "example.org", "example.net", "python.org"]
PAGES = 12


def crawl(name: str, queue: Queue, done: Counter[str]) -> None:
    """One crawler: download under the site's quota, then parse after ``half_ack``."""
    sites: set[str] = set()
    with Buffer(queue, default_topic_quota=2, topic_quotas={"python.org": 1}) as buffer:
        # get(wait=...) polls; without wait, ``for page in buffer`` stops at the first gap.
        while (page := buffer.get(wait=0.5)) is not None:
            sites.add(page.topic)
            time.sleep(0.005)  # the download: at most the site's quota of these at once
            buffer.half_ack(page)  # the quota slot is free again; the message is still ours
            page.ack()  # parsing done: the page is finished
            done[name] += 1
    queue.close()
    print(f"{name} worked on {', '.join(sorted(sites))}")


def main(url: str) -> None:
    engine = sa.create_engine(url)
    created = migrate.current(engine, prefix=PREFIX) is None  # no tables yet: ours to drop
    queue = Queue(engine, prefix=PREFIX)
    queue.create()
    try:
        for site in SITES:
            queue.put_many([f"https://{site}/{i}".encode() for i in range(PAGES)], topic=site)

        # A bare topic lock: the site with the most ready pages, for this consumer alone.
        lock = queue.acquire_topic()
        assert lock is not None
        with lock:
            first = queue.get_many(lock.topic, 3)
            queue.ack_many(first)
            print(f"locked {lock.topic} and crawled {len(first)} pages of it alone")

        done: Counter[str] = Counter()
        crawlers = [
            threading.Thread(target=crawl, args=(name, Queue(engine, prefix=PREFIX), done))
            for name in ("crawler-1", "crawler-2")
        ]
        for thread in crawlers:
            thread.start()
        for thread in crawlers:
            thread.join()
        print(", ".join(f"{name} crawled {n} pages" for name, n in sorted(done.items())))
        left = {topic: s.total for topic, s in queue.stats().items() if topic in SITES}
    finally:
        if created:
            queue.destroy()
        queue.close()
        engine.dispose()
    if left or sum(done.values()) + len(first) < len(SITES) * PAGES:
        raise SystemExit(f"pages left behind: {left}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    default = f"sqlite:///{Path(tempfile.mkdtemp()) / 'topic_locks.db'}"
    parser.add_argument("--url", default=default, help="SQLAlchemy URL (default: temp SQLite)")
    main(parser.parse_args().url)
