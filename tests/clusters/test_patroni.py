"""squeal on PostgreSQL under Patroni: a primary and a synchronous standby, started by the test.

squeal connects through a multi-host URL (``target_session_attrs=read-write``): after a
switchover, and after a failover (the leader's Patroni and postmaster SIGKILLed), producers and
consumers go on within a bounded time, every put that returned is there (synchronous
replication), and every error on the way is a squeal error.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

import squeal
from squeal import Queue
from squeal.cli.patroni import PatroniCluster
from tests import needs

pytestmark = pytest.mark.dialects("postgresql")

#: Puts must be returning again this soon after the leader is lost (Patroni's ttl is 10 s).
RESUME_SECONDS = 40.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PatroniCluster]:
    needs.tool("patroni", env="SQUEAL_TEST_PATRONI", package="patroni")
    needs.tool("etcd", env="SQUEAL_TEST_ETCD", package="etcd-server")
    root = Path(tempfile.mkdtemp(prefix="squeal-patroni-"))
    members = PatroniCluster(root, needs.postgres_bin())
    try:
        started = time.monotonic()
        members.start()
        print(f"patroni: leader and sync standby up in {time.monotonic() - started:.1f}s")
        yield members
    finally:
        try:
            members.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class Load:
    """A producer and a consumer, going on through errors, and what they saw."""

    queue: Queue
    returned: dict[bytes, float] = field(default_factory=dict)
    handled: set[bytes] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def produce(self) -> None:
        n = 0
        while not self.stop.is_set():
            payload = f"m{n}".encode()
            n += 1
            try:
                self.queue.put(payload, "load")
            except squeal.SquealError as error:  # unknown outcome: not counted as returned
                self.errors.append(error)
                time.sleep(0.1)
                continue
            except BaseException as error:
                self.errors.append(error)
                raise
            self.returned[payload] = time.monotonic()

    def consume(self) -> None:
        while not self.stop.is_set():
            try:
                batch = self.queue.get_many("load", 20)
                if batch:
                    self.handled.update(m.payload for m in batch)  # delivered
                    self.queue.ack_many(batch)
                else:
                    time.sleep(0.01)
            except squeal.SquealError as error:
                self.errors.append(error)
                time.sleep(0.1)
            except BaseException as error:
                self.errors.append(error)
                raise

    def resumed_after(self, since: float) -> float:
        """Seconds from ``since`` to the first put that returned after the longest pause."""
        # A copy first: the producer threads may still be adding to it.
        times = sorted(t for t in list(self.returned.values()) if t >= since)
        gaps = [(b - a, b) for a, b in zip([since, *times], times, strict=False)]
        return max(gaps)[0] if gaps else float("inf")

    def check(self) -> None:
        raw = [e for e in self.errors if not isinstance(e, squeal.SquealError)]
        assert raw == [], f"raw driver errors reached the caller: {raw[:3]}"
        # A batch whose ack failed in the switch comes back when its lease runs out.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not set(self.returned) <= self.handled:
            batch = self.queue.get_many("load", 500)
            self.handled.update(m.payload for m in batch)
            if batch:
                self.queue.ack_many(batch)
            else:
                time.sleep(0.2)
        missing = set(self.returned) - self.handled
        assert not missing, f"{len(missing)} returned puts lost: {sorted(missing)[:5]}"


def _run(cluster: PatroniCluster, prefix: str, event: str) -> None:
    cluster.wait_replicated()
    engine = sa.create_engine(cluster.url(), pool_pre_ping=True)
    queue = Queue(engine, prefix=prefix, visibility_timeout=5.0)
    queue.create()
    load = Load(queue)
    threads = [threading.Thread(target=load.produce), threading.Thread(target=load.consume)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        before = cluster.leader()
        assert before is not None
        at = time.monotonic()
        if event == "switchover":
            cluster.switchover(next(m for m in cluster.members if m is not before))
        else:
            cluster.kill(before)
        cluster.wait_for(lambda: cluster.leader() not in (None, before), "a new leader")
        count = len(load.returned)
        cluster.wait_for(lambda: len(load.returned) > count + 50, "puts again", RESUME_SECONDS)
        paused = load.resumed_after(at)
        time.sleep(1.0)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=60)
    try:
        load.check()
        assert paused < RESUME_SECONDS
        print(
            f"patroni {event}: puts paused {paused:.1f}s; {len(load.returned)} returned, none "
            f"lost; {len(load.errors)} squeal errors on the way"
        )
    finally:
        queue.destroy()
        queue.close()
        engine.dispose()
    if event == "failover":  # the lost member comes back as a standby
        cluster.launch(before)
        cluster.wait_for(lambda: before.role() == "replica", before.name)


def test_a_switchover_under_load_loses_nothing(db: str, cluster: PatroniCluster) -> None:
    _run(cluster, "pswitch", "switchover")


def test_a_failover_under_load_loses_no_returned_put(db: str, cluster: PatroniCluster) -> None:
    _run(cluster, "pfail", "failover")
