"""``squeal bench --quick`` as CI runs it: every row measured on each database, nothing left behind.

A smoke run: it checks that the bench works and cleans up, never how fast anything is.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from squeal.cli import bench_aio
from tests import needs
from tests.urls import async_urls

SQUEAL = str(Path(sys.executable).with_name("squeal"))
ROWS = {
    "put",
    "get_ack",
    "batch",
    "bulk_put",
    "bulk_drain",
    "bulk",
    "backlog_small",
    "backlog_large",
    "ahead",
    "limited",
    "limited_batch",
    "drain_2",
    "drain_8",
    "latency",
    "memory",
    "worker",
}
#: The rows without the lean floor: those run by consumer processes.
NOT_LEAN = {"drain_2", "drain_8", "latency", "memory"}


def _bench(tmp_path: Path, *args: str, timeout: float = 600) -> tuple[str, dict[str, Any]]:
    """Run ``squeal bench ARGS --json``: its stdout and the JSON it wrote (exit 0, no traceback)."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [SQUEAL, "bench", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout, json.loads(out.read_text())


@pytest.mark.every_driver
def test_quick_bench_measures_every_row_and_drops_its_tables(db_url: str, tmp_path: Path) -> None:
    """Every driver squeal supports has a floor and a lean floor written on that same driver;
    the single-process rows give both ratios, and the lean floor's table is dropped too."""
    stdout, document = _bench(tmp_path, "--quick", "--url", db_url)
    (result,) = document["databases"]
    assert set(result["rows"]) == ROWS
    for name, row in result["rows"].items():
        assert row["squeal"] > 0, name
        assert row["floor"] > 0, name
        if name in NOT_LEAN:
            assert "lean" not in row, name
        else:
            assert row["lean"] > 0, name
            assert row["lean_ratio"] == pytest.approx(row["squeal"] / row["lean"]), name
    assert result["settings"]["version"]
    assert "ratio" in stdout  # the table was printed
    assert "lean ratio" in stdout
    worker = result["rows"]["worker"]
    assert worker["loop"] > 0  # squeal's own get + ack loop, beside the Worker
    assert "worker/loop" in stdout

    prefix = result["prefix"]
    assert prefix.startswith("bench_")
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        left = [t for t in sa.inspect(engine).get_table_names() if t.startswith(prefix)]
    finally:
        engine.dispose()
    assert left == []


def test_bench_prefix_names_its_tables_and_is_validated(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [SQUEAL, "bench", "--quick", "--only", "put", "--url", db_url, "--prefix", "mine"]
    done = subprocess.run(
        [*command, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(out.read_text())["databases"]
    assert result["prefix"].startswith("mine_")

    for bad in ("Bad-Name", "x" * 35):
        refused = subprocess.run(
            [SQUEAL, "bench", "--quick", "--url", db_url, "--prefix", bad],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("squeal bench: invalid --prefix"), refused.stderr
        assert "Traceback" not in refused.stderr


def test_quick_async_bench_measures_squeal_aio_against_its_floors(
    db_url: str, tmp_path: Path
) -> None:
    """An asyncio URL measures squeal.aio against the raw asyncio floor (asyncpg for every
    PostgreSQL URL, the URL's own driver elsewhere) and, on PostgreSQL, pgqueuer; each
    asyncio driver of the database in one run; nothing left behind, pgqueuer's tables
    included."""
    urls = async_urls(db_url)
    stdout, document = _bench(tmp_path, "--quick", *[a for u in urls for a in ("--url", u)])
    results = document["databases"]
    assert [r["url"] for r in results] == urls
    postgresql = sa.make_url(db_url).get_backend_name() == "postgresql"
    for result in results:
        assert set(result["rows"]) == set(bench_aio.ROWS)
        sides = {"squeal", "floor", "pgqueuer"} if postgresql else {"squeal", "floor"}
        for name, row in result["rows"].items():
            for side in sides:
                assert row[side] > 0, (name, side)
            assert ("vs_pgqueuer" in row) is postgresql
        assert result["settings"]["floor"] in ("asyncpg", "aiomysql", "asyncmy", "aiosqlite")
    assert ("pgqueuer/squeal" in stdout) is postgresql

    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        names = sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    left = [t for t in names for r in results if t.startswith(r["prefix"])]
    assert left == []


#: What a soak window reports about the message table, per database.
SOAK_NUMBERS = {
    "sqlite": {"file_mib", "free_mib", "wal_mib"},
    "postgresql": {"live_rows", "dead_rows", "table_mib", "index_mib"},
    "mysql": {"history_list", "table_mib", "index_mib"},
}


def test_soak_reports_the_rate_and_the_tables_state_per_window(
    db: str, db_url: str, tmp_path: Path
) -> None:
    stdout, document = _bench(
        tmp_path, "--soak", "0.05", "--window", "1", "--hold-snapshot", "--url", db_url
    )
    (result,) = document["soak"]
    assert result["hold_snapshot"] is True
    windows = result["windows"]
    assert len(windows) >= 2
    for window in windows:
        assert window["rate"] > 0
        assert set(window) >= SOAK_NUMBERS[db] | {"t_s", "rate"}
    assert result["last_over_first"] > 0
    assert "last window / first" in stdout
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        tables = sa.inspect(engine).get_table_names()
        left = [t for t in tables if t.startswith(result["prefix"])]
    finally:
        engine.dispose()
    assert left == []


def test_soak_of_a_worker_counts_the_messages_it_handled(db_url: str, tmp_path: Path) -> None:
    stdout, document = _bench(
        tmp_path, "--soak", "0.05", "--window", "1", "--shape", "worker", "--url", db_url
    )
    (result,) = document["soak"]
    assert result["shape"] == "worker"
    assert len(result["windows"]) >= 2
    assert all(window["rate"] > 0 for window in result["windows"])
    assert "worker mix" in stdout


@pytest.mark.dialects("postgresql")
def test_soak_on_a_private_postgresql_at_its_defaults(tmp_path: Path) -> None:
    """--private-postgresql starts a server of its own (autovacuum on, as shipped), stops it."""
    needs.postgres_bin()
    _, document = _bench(tmp_path, "--soak", "0.05", "--window", "1", "--private-postgresql")
    (result,) = document["soak"]
    assert result["url"].startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert ":5432/" not in result["url"]  # not the shared server
    assert set(result["windows"][0]) >= SOAK_NUMBERS["postgresql"]
    port = int(result["url"].split(":")[-1].split("/")[0])
    with socket.socket() as probe:  # stopped: nothing listens there any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.dialects("sqlite")  # the same code measures every broker: one database suffices
def test_celery_bench_measures_squeal_and_kombus_own_sqlalchemy_transport(
    db_url: str, tmp_path: Path
) -> None:
    stdout, document = _bench(tmp_path, "--celery", "30", "--url", db_url)
    results = document["celery"]
    assert [r["broker"].split("+")[0] for r in results] == ["squeal", "squeal", "sqla"]
    assert results[1]["broker"].endswith(", publish_linger 2 ms")
    assert all(r["tasks_per_s"] > 0 and r["sent_per_s"] > 0 for r in results), results
    assert "tasks/s" in stdout
    (raw,) = document["raw"]  # squeal's own queue rows, beside which RabbitMQ's and Redis' go
    assert raw["put"] > 0, raw
    assert raw["get_ack"] > 0, raw
    engine = sa.create_engine(db_url)
    assert sa.inspect(engine).get_table_names() == []  # both brokers' tables dropped
    engine.dispose()
