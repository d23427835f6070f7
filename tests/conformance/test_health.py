"""q.health() and squeal health: what keeps a queue fast, read from the server, with advice."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from squeal import Finding, Queue

#: The checks each database reports (at least).
CHECKS = {
    "sqlite": {"file", "write-ahead log"},
    "postgresql": {"autovacuum", "dead rows", "oldest snapshot"},
    "mysql": {"history list", "oldest transaction", "table size"},
}


def _one(findings: list[Finding], check: str) -> Finding:
    (found,) = [f for f in findings if f.check == check]
    return found


def test_health_reports_every_check_and_advice_for_anything_not_ok(queue: Queue, db: str) -> None:
    queue.put(b"x", "health")
    msg = queue.get("health")
    assert msg is not None
    msg.ack()
    findings = queue.health()
    assert {f.check for f in findings} >= CHECKS[db]
    for finding in findings:
        assert finding.status in ("ok", "warning", "action", "unknown"), finding
        assert finding.detail, finding
        assert bool(finding.advice) == (finding.status != "ok"), finding
    if db != "sqlite":  # squeal's own tables are named with their sizes
        assert queue.prefix + "_message" in " ".join(f.detail for f in findings)


@pytest.mark.dialects("postgresql")
def test_health_says_whether_autovacuum_is_off(queue: Queue, engine: sa.Engine) -> None:
    with engine.connect() as conn:
        on = conn.exec_driver_sql("SHOW autovacuum").scalar() == "on"
    found = _one(queue.health(), "autovacuum")
    assert found.status == ("ok" if on else "action")


@pytest.mark.dialects("postgresql", "mysql")
def test_health_names_a_snapshot_held_by_another_session(
    queue: Queue, db_url: str, db: str
) -> None:
    queue.put(b"x", "held")
    table = f"{queue.prefix}_message"
    other = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    holder = other.connect()
    try:
        if db == "postgresql":
            who = holder.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            holder.commit()
            holder.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
            check, named = "oldest snapshot", f"pid {who} "
        else:
            who = holder.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            holder.commit()
            holder.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            check, named = "oldest transaction", f"connection {who} "
        holder.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
        held = _one(queue.health(), check)
        assert named in held.detail, held
    finally:
        holder.close()
        other.dispose()
    # The server ends a closed session's transaction on its own time, and InnoDB refreshes
    # its INNODB_TRX view only when it was last read over 0.1 s ago: look again, slowly.
    deadline = time.monotonic() + 30
    released = _one(queue.health(), check)
    while named in released.detail and time.monotonic() < deadline:
        time.sleep(0.25)
        released = _one(queue.health(), check)
    assert named not in released.detail, released


@pytest.mark.dialects("sqlite")
def test_health_reports_sqlite_free_pages_and_the_write_ahead_log(queue: Queue) -> None:
    queue.put_many([b"x" * 4000] * 200, "pages")
    assert queue.purge("pages") == 200
    findings = queue.health()
    assert "journal_mode=wal" in _one(findings, "file").detail
    assert "MiB" in _one(findings, "write-ahead log").detail


def test_squeal_health_exits_1_exactly_when_a_finding_needs_action(
    queue: Queue, db_url: str
) -> None:
    command = [sys.executable, "-m", "squeal.cli", "health", "--url", db_url]
    command += ["--prefix", queue.prefix]
    done = subprocess.run(
        [*command, "--json"], check=False, capture_output=True, text=True, timeout=60
    )
    findings = json.loads(done.stdout)
    assert {f["check"] for f in findings} == {f.check for f in queue.health()}
    act = any(f["status"] == "action" for f in findings)
    assert done.returncode == (1 if act else 0), done.stderr
    shown = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert shown.returncode == done.returncode
    assert "Traceback" not in shown.stderr
    for finding in findings:
        assert finding["check"] in shown.stdout
        if finding["advice"]:
            assert finding["advice"] in shown.stdout
