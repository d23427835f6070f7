"""Prometheus metrics (squeal.metrics, ``squeal metrics``) on every database: scraped and
parsed with prometheus_client's own parser, they equal ``q.stats()``; scrapers share one read
per cache period; consumer counters count what consumers did."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from squeal import LeaseLost, Message, Queue, Worker
from squeal.executor import add_statement_listener, remove_statement_listener
from squeal.metrics import register_consumers, register_queue, unregister_consumers
from squeal.snapshot import CountLimit, Snapshots

SQUEAL = str(Path(sys.executable).with_name("squeal"))

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def as_stats(found: Samples) -> dict[str, dict[str, float]]:
    """The ``squeal_messages`` and age/paused gauges, per topic, as ``q.stats()`` says them."""
    topics: dict[str, dict[str, float]] = {}
    for (name, labels), value in found.items():
        label = dict(labels)
        if name == "squeal_messages":
            topics.setdefault(label["topic"], {})[label["state"]] = value
        elif name in ("squeal_oldest_ready_age_seconds", "squeal_topic_paused"):
            topics.setdefault(label["topic"], {})[name] = value
    return topics


def expected(q: Queue) -> dict[str, dict[str, float]]:
    return {
        topic: {
            "ready": s.ready,
            "delayed": s.delayed,
            "leased": s.leased,
            "dead": s.dead,
            "squeal_oldest_ready_age_seconds": s.oldest_ready_age or 0.0,
            "squeal_topic_paused": 1.0 if s.paused else 0.0,
        }
        for topic, s in q.stats().items()
    }


def fill(q: Queue) -> None:
    """Messages in every state, over three topics, one of them paused and empty."""
    q.put_many([b"r1", b"r2", b"r3"], "mail")
    q.put(b"later", "mail", delay=3600)
    q.put_many([b"x", b"y"], "sms")
    leased = q.get("sms")
    assert leased is not None
    dying = q.get("sms")
    assert dying is not None
    dying.nack(error="boom")  # max_attempts=1: dead
    q.pause("idle")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_scraped_gauges_equal_stats(
    make_queue: Callable[..., Queue], registry: CollectorRegistry
) -> None:
    q = make_queue(max_attempts=1)
    fill(q)
    register_queue(q, cache=0, registry=registry)
    found = samples(generate_latest(registry).decode())
    stats = expected(q)
    scraped = as_stats(found)
    # The age grows between the two reads: compare it with a tolerance, the rest exactly.
    ages = {t: v.pop("squeal_oldest_ready_age_seconds") for t, v in scraped.items()}
    for topic, values in stats.items():
        assert ages[topic] == pytest.approx(values.pop("squeal_oldest_ready_age_seconds"), abs=5)
    assert scraped == stats
    assert set(stats) == {"idle", "mail", "sms"}
    assert found[("squeal_workers", (("kind", "thread"),))] == 0
    assert found[("squeal_snapshot_read_seconds", ())] >= 0


def test_running_workers_are_counted(
    make_queue: Callable[..., Queue], registry: CollectorRegistry
) -> None:
    q = make_queue()
    hold = threading.Event()
    worker = Worker(q, lambda m: hold.wait(30), "jobs", concurrency=2, registry_beat=0.1)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    q.put(b"long", "jobs")
    thread.start()
    register_queue(q, cache=0, registry=registry)
    try:
        deadline = time.monotonic() + 30
        while True:
            found = samples(generate_latest(registry).decode())
            if found[("squeal_workers_in_flight", (("kind", "thread"),))] == 1:
                break
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        assert found[("squeal_workers", (("kind", "thread"),))] == 1
        assert found[("squeal_workers", (("kind", "asyncio"),))] == 0
    finally:
        hold.set()
        worker.stop()
        thread.join(timeout=30)


def test_many_scrapers_share_one_read_per_period(make_queue: Callable[..., Queue]) -> None:
    q = make_queue()
    q.put(b"x", "t")
    snapshots = Snapshots(q, period=60)
    registries = [CollectorRegistry() for _ in range(4)]
    for registry in registries:
        register_queue(q, registry=registry, snapshots=snapshots)
    statements: list[str] = []

    def capture(sql: str, params: object) -> None:
        statements.append(sql)

    def scrape(registry: CollectorRegistry) -> None:
        for _ in range(25):
            generate_latest(registry)

    add_statement_listener(capture)
    try:
        threads = [threading.Thread(target=scrape, args=(r,)) for r in registries * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        remove_statement_listener(capture)
    assert snapshots.reads == 1
    one_read = len(statements)
    # 200 scrapes, one read: the count limit's probes, the ready messages of the topics the
    # probes found under the limit, the paused topics, the workers.
    assert one_read == 4, statements


def test_gauges_over_the_count_limit_are_marked_estimated(
    make_queue: Callable[..., Queue], registry: CollectorRegistry
) -> None:
    q = make_queue()
    q.put_many([b"x"] * 3, "big")
    q.put(b"x", "small")
    snapshots = Snapshots(q, period=0, limit=CountLimit(value=2, least=2, most=2))
    register_queue(q, registry=registry, snapshots=snapshots)
    found = samples(generate_latest(registry).decode())
    assert found[("squeal_messages", (("state", "ready"), ("topic", "big")))] == 2
    assert found[("squeal_messages", (("state", "ready"), ("topic", "small")))] == 1
    assert found[("squeal_messages_estimated", (("topic", "big"),))] == 1
    assert found[("squeal_messages_estimated", (("topic", "small"),))] == 0
    assert found[("squeal_snapshot_count_limit", ())] == 2


def test_consumer_counters_count_what_consumers_did(
    make_queue: Callable[..., Queue], registry: CollectorRegistry
) -> None:
    q = make_queue(max_attempts=2, failure_base_delay=0.0)
    consumers = register_consumers(registry)
    try:
        assert register_consumers(registry) is consumers  # once per registry
        q.put_many([b"ok1", b"ok2", b"bad"], "jobs")
        q.put(b"given back", "other")

        def handle(msg: Message) -> None:
            if msg.payload == b"bad":
                raise ValueError("bad")

        worker = Worker(q, handle, "jobs", concurrency=2, wait=0.1, registry_beat=None)
        thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
        thread.start()
        deadline = time.monotonic() + 30
        while not (worker.stats.acked == 2 and worker.stats.failed == 2):
            assert time.monotonic() < deadline, worker.stats
            time.sleep(0.05)
        worker.stop()
        thread.join(timeout=30)
        released = q.get("other")
        assert released is not None
        released.release()
        late = q.get("other", visibility_timeout=0.3)
        assert late is not None
        time.sleep(0.5)  # its lease runs out
        assert q.get("other") is not None  # taken by another claim
        with pytest.raises(LeaseLost):
            late.ack()
        found = samples(generate_latest(registry).decode())
    finally:
        unregister_consumers(registry)

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("squeal_claimed_messages_total", topic="jobs") == 4  # ok1, ok2, bad twice
    assert value("squeal_claimed_messages_total", topic="other") == 3
    assert value("squeal_settled_messages_total", topic="jobs", outcome="acked") == 2
    assert value("squeal_settled_messages_total", topic="jobs", outcome="nacked") == 1
    assert value("squeal_settled_messages_total", topic="jobs", outcome="dead") == 1
    assert value("squeal_settled_messages_total", topic="other", outcome="released") == 1
    assert value("squeal_lease_lost_total", operation="ack") == 1
    assert value("squeal_handler_seconds_count", topic="jobs", outcome="ok") == 2
    assert value("squeal_handler_seconds_count", topic="jobs", outcome="failed") == 2
    claims = value("squeal_claim_seconds_count", topic="jobs")
    assert claims >= 3  # every claim, empty polls included
    assert value("squeal_claim_seconds_sum", topic="jobs") > 0
    # Once unregistered, nothing is counted and the names are free again.
    q.put(b"after", "jobs")
    assert q.get("jobs") is not None
    assert b"squeal_claimed" not in generate_latest(registry)


def fetch(url: str, authorization: str | None = None) -> str | int:
    """The body of a GET, or its HTTP error status."""
    headers = {} if authorization is None else {"Authorization": authorization}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return str(r.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return error.code


def test_the_metrics_command_prints_and_serves_behind_a_token(
    make_queue: Callable[..., Queue], db_url: str, prefix: str
) -> None:
    q = make_queue(max_attempts=1)
    fill(q)
    printed = subprocess.run(
        [SQUEAL, "metrics", "--url", db_url, "--prefix", prefix, "--print"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    assert {t: v["ready"] for t, v in as_stats(samples(printed.stdout)).items()} == {
        t: s.ready for t, s in q.stats().items()
    }
    env = {**os.environ, "SQUEAL_TOKEN": "s3cret"}
    server = subprocess.Popen(
        [SQUEAL, "metrics", "--url", db_url, "--prefix", prefix, "--port", "0", "--cache", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "(a bearer token)" in line, line + (server.stderr.read() if server.stderr else "")
        url = line.split()[3]
        assert fetch(url) == 401
        assert fetch(url, "Bearer nope") == 401
        before = as_stats(samples(str(fetch(url, "Bearer s3cret"))))
        q.put(b"one more", "mail")
        after = as_stats(samples(str(fetch(url, "Bearer s3cret"))))
        assert after["mail"]["ready"] == before["mail"]["ready"] + 1  # --cache 0: read each time
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err


def test_a_worker_process_serves_its_counters(
    make_queue: Callable[..., Queue], db_url: str, prefix: str, tmp_path: Path
) -> None:
    q = make_queue()
    q.put_many([b"a", b"b"], "jobs")
    env = {**os.environ, "SQUEAL_TEST_OUT": str(tmp_path / "out.txt")}
    command = ["worker", "tests.test_worker:record", "--topic", "jobs", "--metrics-port", "0"]
    child = subprocess.Popen(
        [SQUEAL, *command, "--url", db_url, "--prefix", prefix],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert child.stderr is not None
        line = child.stderr.readline()
        assert "metrics on http://" in line, line
        url = line.split()[-1]
        acked = ("squeal_settled_messages_total", (("outcome", "acked"), ("topic", "jobs")))
        claimed = ("squeal_claimed_messages_total", (("topic", "jobs"),))
        deadline = time.monotonic() + 30
        while (found := samples(str(fetch(url)))).get(acked) != 2:
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        assert found[claimed] == 2
    finally:
        child.terminate()
        child.communicate(timeout=30)
    assert child.returncode == 0
