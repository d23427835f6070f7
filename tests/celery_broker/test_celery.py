"""Real Celery workers (processes started here) on squeal's broker, on every database.

Each task appends a line to a log file when it finishes; the tests read it. Workers run the
threads pool (one process: a SIGKILL ends every task in flight at once).
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery, chord, group

import squeal.kombu  # noqa: F401 - registers the squeal+ URLs
from squeal import Queue
from squeal.schema import build_tables
from tests.celery_broker.app import result_tables
from tests.reliability.helpers import leased_ids

ROOT = Path(__file__).resolve().parents[2]


class Broker:
    """Fresh squeal tables, a Celery app that sends to them, and worker processes."""

    def __init__(self, db_url: str, tmp: Path) -> None:
        self.db_url = db_url
        self.url = f"squeal+{db_url}"
        self.prefix = "c" + uuid.uuid4().hex[:8]
        self.log = tmp / "done.log"
        self.log.touch()
        self.queue = Queue(sa.create_engine(db_url), prefix=self.prefix)
        self.queue.create()
        self.sender = Celery("sender", broker=self.url)
        self.sender.conf.broker_transport_options = {"prefix": self.prefix}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.tmp = tmp
        self.backend: str | None = None

    def with_results(self) -> None:
        """Celery's own SQLAlchemy result backend on the same database (for chords)."""
        self.backend = f"db+{self.db_url}"
        self.sender.conf.result_backend = self.backend
        self.sender.conf.database_table_names = result_tables(self.prefix)

    def worker(
        self,
        visibility_timeout: float = 60.0,
        concurrency: int = 4,
        *,
        remote: bool = False,
        pool: str = "threads",
        linger: float | None = None,
    ) -> None:
        env = {
            "SQUEAL_CELERY_REMOTE": "1" if remote else "0",
            "SQUEAL_CELERY_LINGER": "" if linger is None else str(linger),
            **os.environ,
            "SQUEAL_CELERY_BACKEND": self.backend or "",
            "SQUEAL_CELERY_BROKER": self.url,
            "SQUEAL_CELERY_PREFIX": self.prefix,
            "SQUEAL_CELERY_LOG": str(self.log),
            "SQUEAL_CELERY_VT": str(visibility_timeout),
        }
        command = [
            sys.executable, "-m", "celery", "-A", "tests.celery_broker.app", "worker",
            "--pool", pool, "--concurrency", str(concurrency), "--loglevel", "WARNING",
            "--without-heartbeat", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        with (self.tmp / f"worker{len(self.workers)}.out").open("wb") as output:
            self.workers.append(
                subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
                )
            )

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def done(self) -> Counter[int]:
        return Counter(int(line.split()[1]) for line in self.lines() if line.startswith("done"))

    def wait_for(self, ready: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for worker in self.workers:
                if worker.poll() not in (None, -signal.SIGKILL):
                    raise AssertionError(f"a worker exited ({worker.returncode}): {self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not within {timeout:.0f} s ({len(self.done())} tasks done, "
                    f"{self.queue.stats()}); {self.output()}"
                )
            time.sleep(0.05)

    def output(self) -> str:
        return " | ".join(p.read_text()[-2000:] for p in sorted(self.tmp.glob("worker*.out")))

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

    def close(self) -> None:
        self.stop()
        self.sender.close()
        if self.backend is not None:
            meta = sa.MetaData()
            meta.reflect(self.queue.engine, only=lambda name, _: name.startswith(self.prefix + "_"))
            for table in meta.sorted_tables:
                if table.name in result_tables(self.prefix).values():
                    table.drop(self.queue.engine)
        self.queue.destroy()
        self.queue.close()
        self.queue.engine.dispose()


@pytest.fixture
def broker(db_url: str, tmp_path: Path) -> Iterator[Broker]:
    b = Broker(db_url, tmp_path)
    try:
        yield b
    finally:
        b.close()


def test_tasks_run_and_nothing_is_left_behind(broker: Broker) -> None:
    for n in range(50):
        broker.sender.send_task("record", args=[n])
    broker.worker()
    broker.wait_for(lambda: len(broker.done()) == 50, "50 tasks done")
    broker.stop()
    assert broker.done() == Counter(range(50))
    assert broker.queue.stats() == {}


def test_remote_control_reaches_the_worker_through_a_fanout_exchange(broker: Broker) -> None:
    """``celery inspect ping`` and ``celery control shutdown``: the broadcast goes through
    the ``celery.pidbox`` fanout exchange, the reply through a direct exchange to a queue
    only the client bound; the worker's mailbox is unbound when it stops."""
    broker.worker(remote=True)
    broker.sender.send_task("record", args=[1])
    broker.wait_for(lambda: len(broker.done()) == 1, "the worker runs")
    replies: dict[str, object] = {}

    def answered() -> bool:
        replies.update(broker.sender.control.inspect(timeout=10, limit=1).ping() or {})
        return bool(replies)

    broker.wait_for(answered, "a ping answered", timeout=90)
    assert list(replies.values()) == [{"ok": "pong"}]
    assert [b.exchange for b in broker.queue.bindings("celery.pidbox")] == ["celery.pidbox"]
    broker.sender.control.broadcast("shutdown")
    (worker,) = broker.workers
    assert worker.wait(timeout=30) == 0, broker.output()
    assert broker.queue.bindings("celery.pidbox") == []


def test_what_a_task_sends_lingering_is_stored_when_it_ends_in_a_prefork_pool(
    broker: Broker,
) -> None:
    """With ``publish_linger`` an hour long, the task ``relay`` sends runs only because the
    pool process stores it when ``relay`` ends (before its ``acks_late`` ack, which the pool's
    parent commits: a flush there would not reach the child's sends)."""
    broker.worker(pool="prefork", concurrency=1, linger=3600.0)
    broker.sender.send_task("relay", args=[7])
    broker.wait_for(lambda: broker.done()[7] == 1, "the task relay sent ran")
    broker.stop()
    assert broker.lines() == ["relayed 7", "done 7"]
    assert broker.queue.stats() == {}


def test_a_retry_with_a_countdown_runs_again_later(broker: Broker) -> None:
    for n in range(3):
        broker.sender.send_task("flaky", args=[n])
    broker.worker()
    broker.wait_for(lambda: len(broker.done()) == 3, "3 retried tasks done")
    lines = broker.lines()
    for n in range(3):
        assert lines.index(f"failed {n}") < lines.index(f"done {n}")
    broker.stop()
    assert broker.queue.stats() == {}


def _held_tasks(broker: Broker) -> set[int]:
    """The task numbers (``record``'s first argument) of the messages still leased."""
    table = build_tables(broker.prefix).message
    with broker.queue.engine.connect() as conn:
        payloads = conn.execute(
            sa.select(table.c.payload).where(table.c.id.in_(leased_ids(conn.engine, broker.prefix)))
        ).scalars()
        return {ast.literal_eval(json.loads(p)["headers"]["argsrepr"])[0] for p in payloads}


def test_acks_late_tasks_of_a_sigkilled_worker_run_again_and_none_is_lost(
    broker: Broker,
) -> None:
    """A worker is SIGKILLed while it runs tasks (acks_late); a second worker finishes: every
    one of 600 tasks is done, those in flight at the kill again once their leases ran out."""
    total = 600
    for n in range(total):
        broker.sender.send_task("record", args=[n, 0.01])
    broker.worker(visibility_timeout=4.0)
    broker.wait_for(lambda: len(broker.done()) >= 100, "100 tasks done")
    broker.workers[0].send_signal(signal.SIGKILL)
    broker.workers[0].wait(timeout=30)
    at_kill = broker.done()
    # What the dead worker held (no one claims until the next worker starts): what it ran
    # whose ack had not committed is among these, however many its completer had waiting.
    held = _held_tasks(broker)
    assert len(at_kill) < total, "the worker finished everything before it was killed"
    broker.worker(visibility_timeout=4.0)
    broker.wait_for(lambda: len(broker.done()) == total, f"{total} tasks done", timeout=120)
    broker.stop()
    done = broker.done()
    assert set(done) == set(range(total))
    assert broker.queue.stats() == {}
    # Done twice only where the kill came between a task's end and its ack's commit.
    twice = [n for n, times in done.items() if times > 1]
    assert set(twice) <= set(at_kill) & held, (twice, held)
    assert len(held & set(at_kill)) < len(at_kill), "no ack of a finished task committed"


def test_groups_and_a_chord_on_celerys_database_result_backend(broker: Broker) -> None:
    broker.with_results()
    broker.worker()
    add = broker.sender.signature("add")
    assert group(add.clone(args=(n, n)) for n in range(5))().get(timeout=60) == [0, 2, 4, 6, 8]
    callback = broker.sender.signature("total")
    assert chord(add.clone(args=(n, 1)) for n in range(5))(callback).get(timeout=60) == 15
    broker.stop()
    assert broker.queue.stats() == {}
