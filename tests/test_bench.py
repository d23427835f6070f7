"""``squeal bench --quick`` as CI runs it: every row measured on each database, nothing left behind.

A smoke run: it checks that the bench works and cleans up, never how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from squeal.cli.floor import floor_missing

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


@pytest.mark.every_driver
def test_quick_bench_measures_every_row_and_drops_its_tables(db_url: str, tmp_path: Path) -> None:
    """Every driver squeal supports has a floor written on that same driver."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [SQUEAL, "bench", "--quick", "--url", db_url, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr

    document = json.loads(out.read_text())
    (result,) = document["databases"]
    assert set(result["rows"]) == ROWS
    for name, row in result["rows"].items():
        assert row["squeal"] > 0, name
        assert row["floor"] > 0, name
    assert result["settings"]["version"]
    assert "ratio" in done.stdout  # the table was printed

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
