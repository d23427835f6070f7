"""``squeal bench --galera``: squeal on a MariaDB Galera cluster, by topology.

Starts a private cluster on loopback (:mod:`squeal.cli.galera`; needs mariadbd, galera-4 and
rsync) and measures the same load three ways: a one-node cluster; three nodes with every client
on the first; three nodes with the clients spread over all of them. The load is 3 producers
(``put``, one message at a time) and 3 consumers (``get_many(10)`` then one ``ack`` per
message) for ``--seconds`` each, on one topic, 64-byte messages; then one client's ``put``
latency alone. Certification conflicts (consumers on two nodes claiming the same row) are
retried by squeal and counted here from its debug log.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from squeal import Queue, SquealError
from squeal.cli.galera import GaleraCluster

PAYLOAD = bytes(range(64))
TOPIC = "galera"


class _Retries(logging.Handler):
    """Counts squeal's retries of transient errors (certification conflicts among them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "transient database error" in record.getMessage():
            self.count += 1


class _Load:
    """3 producers and 3 consumers, client i on ``urls[i % len(urls)]``."""

    def __init__(self, urls: list[str]) -> None:
        self.queues = [
            Queue(sa.create_engine(urls[i % len(urls)]), prefix="gbench", visibility_timeout=60)
            for i in range(6)
        ]
        self.stop = threading.Event()
        self.counts = {"put": 0, "handled": 0, "errors": 0}
        self._guard = threading.Lock()

    def _add(self, name: str, n: int = 1) -> None:
        with self._guard:
            self.counts[name] += n

    def produce(self, q: Queue) -> None:
        while not self.stop.is_set():
            try:
                q.put(PAYLOAD, TOPIC)
            except SquealError:
                self._add("errors")
                continue
            self._add("put")

    def consume(self, q: Queue) -> None:
        while not self.stop.is_set():
            try:
                batch = q.get_many(TOPIC, 10)
                for msg in batch:
                    msg.ack()
            except SquealError:
                self._add("errors")
                continue
            self._add("handled", len(batch))
            if not batch:
                time.sleep(0.005)

    def run(self, seconds: float) -> float:
        """Run for ``seconds``; the seconds it took, threads joined."""
        threads = [threading.Thread(target=self.produce, args=(q,)) for q in self.queues[:3]]
        threads += [threading.Thread(target=self.consume, args=(q,)) for q in self.queues[3:]]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=120)
        return time.monotonic() - started

    def close(self) -> None:
        self.queues[0].destroy()
        for q in self.queues:
            q.close()
            q.engine.dispose()


def _put_latency(q: Queue, n: int = 200) -> float:
    """The median seconds of ``n`` puts by one client alone."""
    latencies = []
    for _ in range(n):
        began = time.perf_counter()
        q.put(PAYLOAD, "latency")
        latencies.append(time.perf_counter() - began)
    return statistics.median(latencies)


def _measure(urls: list[str], seconds: float) -> dict[str, Any]:
    load = _Load(urls)
    load.queues[0].create()
    retries = _Retries()
    logger = logging.getLogger("squeal")
    level = logger.level
    logger.addHandler(retries)
    logger.setLevel(logging.DEBUG)
    try:
        elapsed = load.run(seconds)
    finally:
        logger.removeHandler(retries)
        logger.setLevel(level)
    try:
        latency = _put_latency(load.queues[0])
    finally:
        load.close()
    return {
        "puts_per_s": round(load.counts["put"] / elapsed, 1),
        "handled_per_s": round(load.counts["handled"] / elapsed, 1),
        "retries": retries.count,
        "errors": load.counts["errors"],
        "put_ms_median": round(latency * 1000, 2),
    }


def run(seconds: float, json_path: Path | None) -> int:
    """Measure the three topologies; print a table; 0 on success."""
    results: dict[str, dict[str, Any]] = {}
    for size, spread, name in (
        (1, False, "one node"),
        (3, False, "3 nodes, every client on one"),
        (3, True, "3 nodes, clients on all three"),
    ):
        root = Path(tempfile.mkdtemp(prefix="squeal-galera-bench-"))
        cluster = GaleraCluster(root, size)
        try:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: starting", file=sys.stderr, flush=True)
            cluster.start()
            urls = cluster.urls() if spread else cluster.urls()[:1]
            results[name] = _measure(urls, seconds)
            # What Galera says: write sets that failed certification or were aborted by one
            # applied from another node, and the share of the time replication was paused
            # because a node's apply queue was full (flow control).
            for key, status in (
                ("cert_failures", "wsrep_local_cert_failures"),
                ("bf_aborts", "wsrep_local_bf_aborts"),
            ):
                results[name][key] = sum(
                    int(cluster.status(node, status) or 0) for node in cluster.nodes
                )
            results[name]["flow_control_paused"] = max(
                float(cluster.status(node, "wsrep_flow_control_paused") or 0)
                for node in cluster.nodes
            )
        finally:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)
    print(
        "| topology | puts/s | handled/s | retries by squeal | certification failures | "
        "aborted by a replicated write | flow control paused | errors | one put alone |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['puts_per_s']:,.0f} | {r['handled_per_s']:,.0f} | {r['retries']} | "
            f"{r['cert_failures']} | {r['bf_aborts']} | {r['flow_control_paused']:.0%} | "
            f"{r['errors']} | {r['put_ms_median']} ms |"
        )
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


__all__ = ["run"]
