"""T12: migrations run while consumers work, and two migrations race on one fresh prefix.

- ``squeal.migrate.upgrade`` of the consumers' own prefix (a no-op at head), and ``downgrade`` to
  base + ``upgrade`` of a second prefix, run in a loop while producer and consumer processes use
  the first prefix: nothing is lost, no consumer fails, the event checker finds nothing wrong.
- ``squeal.migrate.upgrade`` run at the same instant by two processes on a fresh prefix: at least
  one succeeds, any other fails with a clean error, and the schema ends at head, equal to
  schema.py, and usable.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from squeal import Queue, migrate
from tests.reliability import checker
from tests.reliability.helpers import REPO, spawn, stored_ids


def _schema_diff(engine: sa.Engine, prefix: str) -> list[Any]:
    """What autogenerate would change to reach schema.py's tables for ``prefix`` (empty: equal)."""
    return migrate.schema_diff(engine, prefix=prefix)


def _round_trip(q: Queue) -> None:
    mid = q.put(b"ok", "check")
    msg = q.get("check", visibility_timeout=30)
    assert msg is not None
    assert msg.id == mid
    msg.ack()


def test_migrations_while_consumers_run_lose_nothing_and_fail_no_consumer(
    db: str,
    db_url: str,
    engine: sa.Engine,
    make_queue: Callable[..., Queue],
    tmp_path: Path,
) -> None:
    q = make_queue()
    prefix = q.prefix
    second = Queue(engine, prefix=f"{prefix}b")
    log = tmp_path / "log"
    stop = tmp_path / "stop"
    args = ("--vt", "2.0", "--stop", str(stop), "--seconds", "90")
    producer = spawn("produce", db_url, prefix, log, "--count", "600", "--batch", "5")
    consumers = [
        spawn("consume", db_url, prefix, log, *args, "--mix", "--batch", "3", "--work", "0.005")
        for _ in range(3)
    ]
    cycles = 0
    try:
        end = time.monotonic() + 8.0
        while time.monotonic() < end or cycles < 3:
            migrate.upgrade(engine, prefix=prefix)  # at head: nothing to do
            second.create()
            _round_trip(second)
            second.destroy()
            cycles += 1
        assert producer.wait(timeout=60) == 0, "the producer failed"
        stop.touch()
        codes = [c.wait(timeout=120) for c in consumers]
    finally:
        for p in [producer, *consumers]:
            if p.poll() is None:
                p.kill()
                p.wait()
        second.close()
    report = checker.check(checker.read(log), remaining=stored_ids(engine, prefix))
    print(f"T12 {db}: {cycles} migration cycles during the run; {report}")
    assert codes == [0, 0, 0], f"consumer exit codes {codes}"
    assert report.put == 600
    assert report.ok, report
    assert stored_ids(engine, prefix) == []
    assert migrate.current(engine, prefix=prefix) == migrate.head()
    assert migrate.current(engine, prefix=f"{prefix}b") is None
    _round_trip(q)


_UPGRADER = """
import sys, time, sqlalchemy as sa
from squeal import migrate
url, prefix, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
engine = sa.create_engine(url)
with engine.connect() as conn:
    conn.exec_driver_sql("SELECT 1")
time.sleep(max(0.0, at - time.time()))
try:
    migrate.upgrade(engine, prefix=prefix)
except Exception as exc:
    print(f"ERROR {type(exc).__module__}.{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    sys.exit(3)
print("OK")
"""


def test_two_processes_upgrading_one_fresh_prefix_at_once_end_with_one_correct_schema(
    db: str, db_url: str, engine: sa.Engine, prefix: str
) -> None:
    outcomes: list[list[str]] = []
    for round_ in range(3):
        name = f"{prefix}r{round_}"
        at = time.time() + 1.5
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _UPGRADER, db_url, name, str(at)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [p.communicate(timeout=120) for p in procs]
        lines = [out.strip() or f"(no output) {err.strip()[-300:]}" for out, err in results]
        outcomes.append(lines)
        q = Queue(engine, prefix=name)
        try:
            for p, line in zip(procs, lines, strict=True):
                # Either it worked, or it failed with an error and a one-line reason: never a
                # hang, a crash without a message, or a half-built schema.
                assert (p.returncode, line) == (0, "OK") or (
                    p.returncode == 3 and line.startswith("ERROR ")
                ), line
            assert "OK" in lines, f"neither concurrent upgrade succeeded: {lines}"
            assert migrate.current(engine, prefix=name) == migrate.head()
            assert _schema_diff(engine, name) == []
            _round_trip(q)
            migrate.upgrade(engine, prefix=name)  # a later upgrade still finds it at head
        finally:
            q.destroy()
            q.close()
    print(f"T12 concurrent upgrade {db}: {outcomes}")


_CLI_AT = """
import sys, time
from squeal.cli import main
at = float(sys.argv[1])
time.sleep(max(0.0, at - time.time()))
sys.exit(main(sys.argv[2:]))
"""


def test_four_processes_running_squeal_migrate_on_a_fresh_prefix_all_succeed(
    db: str, db_url: str, engine: sa.Engine, prefix: str
) -> None:
    """Concurrent ``squeal migrate`` runs take turns under the migration lock: every one exits 0
    (the first creates the tables, the others then find them at head) and the schema is exact.
    Each reads the revision once it holds the lock, so exactly one says it upgraded.
    """
    outcomes: list[list[int]] = []
    for round_ in range(3):
        name = f"{prefix}m{round_}"
        at = time.time() + 2.0
        argv = ["migrate", "--url", db_url, "--prefix", name]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CLI_AT, str(at), *argv],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        results = [p.communicate(timeout=120) for p in procs]
        outcomes.append([p.returncode for p in procs])
        q = Queue(engine, prefix=name)
        try:
            for p, (out, err) in zip(procs, results, strict=True):
                assert p.returncode == 0, f"squeal migrate failed: {out.strip()} {err.strip()}"
                assert "Traceback" not in err, err
            said = sorted("upgraded" if " upgraded " in out else out.strip() for out, _ in results)
            assert said.count("upgraded") == 1, said
            assert all("is already at" in line for line in said if line != "upgraded"), said
            assert migrate.current(engine, prefix=name) == migrate.head()
            assert _schema_diff(engine, name) == []
            _round_trip(q)
        finally:
            q.destroy()
            q.close()
    print(f"T12 four concurrent squeal migrate {db}: exit codes {outcomes}")
