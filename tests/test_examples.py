"""Every file in examples/ runs as written, on every database (docs that are tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from squeal import Queue, migrate
from tests.urls import primary_async_url

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
#: Exceptions an example raises on purpose and squeal logs with their traceback: the worker
#: example's handler fails the first attempt of two images.
EXPECTED_TRACEBACKS = {"worker": {"OSError: image server busy"}}


def run(example: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = next(p for p in EXAMPLES if p.stem == example)
    return subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=120, check=False
    )


def unexpected_tracebacks(example: str, stderr: str) -> list[str]:
    """The last line (the exception) of each traceback in ``stderr`` that is not expected."""
    expected = EXPECTED_TRACEBACKS.get(example, set())
    found = []
    for block in stderr.split("Traceback (most recent call last):")[1:]:
        ending = next((line for line in block.splitlines() if re.match(r"\w[\w.]*: ", line)), "")
        if ending not in expected:
            found.append(ending or block)
    return found


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_to_completion(example: Path, db_url: str) -> None:
    # The asyncio examples take the URL of the database's primary asyncio driver.
    url = primary_async_url(db_url) if example.stem.startswith("asyncio_") else db_url
    done = run(example.stem, "--url", url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not unexpected_tracebacks(example.stem, done.stderr), done.stderr


def test_quickstart_runs_with_no_arguments() -> None:
    """The README's first command: no server, no options, a temporary SQLite file."""
    done = run("quickstart")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(attempt 2)" in done.stdout


def test_consumer_on_the_producers_prefix_gets_its_messages_and_drops_nothing(
    db_url: str, prefix: str
) -> None:
    """producer.py --keep, then consumer.py on the same prefix, as the README suggests."""
    engine = sa.create_engine(db_url)
    try:
        produced = run("producer", "--url", db_url, "--prefix", prefix, "--keep")
        assert produced.returncode == 0, produced.stdout + produced.stderr
        consumed = run("consumer", "--url", db_url, "--prefix", prefix)
        assert consumed.returncode == 0, consumed.stdout + consumed.stderr
        handled = [line for line in consumed.stdout.splitlines() if line.startswith("handled")]
        # The producer's two ready emails, highest priority first; the consumer added none.
        assert handled == [
            'handled {"to": "boss@example.com"}',
            'handled {"to": "ada@example.com"}',
        ]
        # The consumer did not create the tables, so it dropped neither them nor the rest.
        assert migrate.current(engine, prefix=prefix) is not None
        queue = Queue(engine, prefix=prefix)
        left = {topic: s.total for topic, s in queue.stats().items()}
        assert left == {"emails": 1, "images": 100, "reports": 1}  # the delayed email stays
        queue.close()
    finally:
        if migrate.current(engine, prefix=prefix) is not None:
            Queue(engine, prefix=prefix).destroy()
        engine.dispose()


@pytest.mark.parametrize("example", ["producer", "consumer"])
def test_example_leaves_tables_it_did_not_create(example: str, db_url: str, prefix: str) -> None:
    engine = sa.create_engine(db_url)
    queue = Queue(engine, prefix=prefix)
    queue.create()
    try:
        mine = queue.put(b"not the example's", topic="someone-else")
        done = run(example, "--url", db_url, "--prefix", prefix)
        assert done.returncode == 0, done.stdout + done.stderr
        assert [m.id for m in queue.peek("someone-else")] == [mine]
    finally:
        queue.destroy()
        queue.close()
        engine.dispose()
