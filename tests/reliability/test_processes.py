"""T1, T8, T2 and T15: real consumer processes, real signals, checked by the event checker."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from squeal import Queue
from tests.reliability import checker
from tests.reliability.helpers import spawn, stored_ids

SOAK = os.environ.get("SQUEAL_SOAK") == "1"


def _drain(
    engine: sa.Engine,
    db_url: str,
    prefix: str,
    log: Path,
    *,
    consumers: int,
    seconds: float,
    extra: tuple[str, ...] = (),
    kill_every: tuple[float, float] | None = None,
    producers: tuple[subprocess.Popen[str], ...] = (),
) -> tuple[checker.Report, list[int]]:
    """Run consumers until the topic is empty (killing and replacing some if asked); check.

    Consumers stop at an empty topic only once every producer has exited (an empty topic
    before a slow producer's first put is not the end).
    """
    stop = log / "stop"
    args = ("--vt", "1.0", "--stop", str(stop), "--seconds", str(seconds + 90), *extra)
    procs = [spawn("consume", db_url, prefix, log, *args) for _ in range(consumers)]
    killed: list[int] = []
    rnd = random.Random(1)
    end = time.monotonic() + seconds
    try:
        for producer in producers:
            assert producer.wait(timeout=60) == 0, "a producer failed"
        stop.touch()
        while kill_every and time.monotonic() < end:
            time.sleep(rnd.uniform(*kill_every))
            victim = rnd.choice(procs)
            if victim.poll() is None:
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                killed.append(victim.pid)
            procs.remove(victim)
            procs.append(spawn("consume", db_url, prefix, log, *args))
        for p in procs:
            assert p.wait(timeout=seconds + 60) == 0, "a consumer failed"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    remaining = stored_ids(engine, prefix)
    return checker.check(checker.read(log), remaining=remaining, killed=killed), killed


def test_consumers_sigkilled_at_random_lose_nothing(
    db: str, db_url: str, engine: sa.Engine, make_queue: Callable[..., Queue], tmp_path: Path
) -> None:
    """T1: a killer SIGKILLs a consumer every 0.1-0.5 s and starts another; nothing is lost."""
    make_queue()
    prefix = make_queue().prefix
    producer = spawn("produce", db_url, prefix, tmp_path, "--count", "400", "--batch", "20")
    assert producer.wait(timeout=60) == 0
    seconds = 90.0 if SOAK else 8.0
    report, killed = _drain(
        engine,
        db_url,
        prefix,
        tmp_path,
        consumers=5,
        seconds=seconds,
        extra=("--work", "0.05"),
        kill_every=(0.1, 0.5),
    )
    print(f"T1 {db}: killed={len(killed)} {report}")
    assert len(killed) >= 10
    assert report.put == 400
    assert report.ok, report
    assert stored_ids(engine, prefix) == []


def test_stress_with_nacks_releases_and_abandoned_leases_keeps_every_promise(
    db: str, db_url: str, engine: sa.Engine, make_queue: Callable[..., Queue], tmp_path: Path
) -> None:
    """T8: producers and 6 consumers that ack, nack, release or abandon at random."""
    prefix = make_queue().prefix
    count = 3000 if SOAK else 300
    producers = [
        spawn("produce", db_url, prefix, tmp_path, "--count", str(count), "--batch", str(b))
        for b in (1, 10)
    ]
    report, _ = _drain(
        engine,
        db_url,
        prefix,
        tmp_path,
        consumers=6,
        seconds=20.0,
        extra=("--mix", "--batch", "3", "--work", "0.005"),
        producers=tuple(producers),
    )
    print(f"T8 {db}: {report}")
    assert report.put == 2 * count
    assert report.ok, report


def test_zombie_consumer_resumed_after_its_lease_gets_lease_lost_and_its_writes_roll_back(
    db: str, db_url: str, engine: sa.Engine, make_queue: Callable[..., Queue], tmp_path: Path
) -> None:
    """T2: SIGSTOP a holder past its lease; another claims and acks; SIGCONT: LeaseLost."""
    q = make_queue(visibility_timeout=1.0)
    effects = sa.Table(
        f"{q.prefix}_effects",
        sa.MetaData(),
        sa.Column("message_id", sa.BigInteger),
        sa.Column("who", sa.String(20)),
    )
    effects.create(engine)
    try:
        mid = q.put(b"work")
        zombie = spawn(
            "zombie",
            db_url,
            q.prefix,
            tmp_path,
            "--vt",
            "1.0",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert zombie.stdout is not None
        assert zombie.stdin is not None
        claimed = json.loads(zombie.stdout.readline())
        assert claimed["id"] == mid
        zombie.send_signal(signal.SIGSTOP)
        time.sleep(1.3)
        m = q.get()
        assert m is not None
        assert m.id == mid
        assert m.lease_token != claimed["token"]
        with engine.begin() as conn:
            conn.execute(sa.insert(effects).values(message_id=mid, who="second"))
            m.ack(connection=conn)
        zombie.send_signal(signal.SIGCONT)
        zombie.stdin.write("go\n")
        zombie.stdin.flush()
        outcome = json.loads(zombie.stdout.readline())
        zombie.stdin.close()
        zombie.stdout.close()
        assert zombie.wait(timeout=30) == 0
        assert outcome == {"outcome": "LeaseLost"}
        with engine.connect() as conn:
            rows = conn.execute(sa.select(effects.c.message_id, effects.c.who)).all()
        assert [tuple(r) for r in rows] == [(mid, "second")]
    finally:
        effects.drop(engine)


@pytest.mark.dialects("sqlite")
def test_sqlite_processes_on_one_file_never_see_database_is_locked(
    db: str, db_url: str, engine: sa.Engine, make_queue: Callable[..., Queue], tmp_path: Path
) -> None:
    """T15: 4 producers with single puts and 6 consumers on one SQLite file."""
    prefix = make_queue().prefix
    producers = [spawn("produce", db_url, prefix, tmp_path, "--count", "150") for _ in range(4)]
    report, _ = _drain(
        engine, db_url, prefix, tmp_path, consumers=6, seconds=20.0, producers=tuple(producers)
    )
    assert report.put == 600
    assert report.ok, report
