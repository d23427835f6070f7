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

from squeal.cli.floor import floor_missing
from tests import needs

SQUEAL = str(Path(sys.executable).with_name("squeal"))
ROWS = {
    "put",
    "get_ack",
    "batch",
    "backlog_small",
    "backlog_large",
    "ahead",
    "drain_2",
    "drain_8",
    "latency",
    "memory",
}


def _bench(tmp_path: Path, *args: str, timeout: float = 180) -> tuple[str, dict[str, Any]]:
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
    """Every driver squeal supports has a floor written on that same driver."""
    stdout, document = _bench(tmp_path, "--quick", "--url", db_url)
    (result,) = document["databases"]
    assert set(result["rows"]) == ROWS
    for name, row in result["rows"].items():
        assert row["squeal"] > 0, name
        assert row["floor"] > 0, name
    assert result["settings"]["version"]
    assert "ratio" in stdout  # the table was printed

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


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql+asyncpg://u@127.0.0.1:1/x", "asyncpg"),
        ("mysql+aiomysql://u@127.0.0.1:1/x", "aiomysql"),
        ("sqlite+aiosqlite:///x.db", "aiosqlite"),
    ],
)
def test_bench_on_a_driver_without_a_floor_says_so_before_connecting(url: str, driver: str) -> None:
    assert floor_missing(sa.make_url(url)) is not None
    done = subprocess.run(
        [sys.executable, "-m", "squeal.cli", "bench", "--quick", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"no raw-driver floor for the {driver} driver" in done.stderr
    assert "Traceback" not in done.stderr


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
