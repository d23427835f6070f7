"""SQLite files are switched to WAL after migrating, even while another process holds them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from squeal.dialects import strategy_for
from squeal.schema import build_tables

HOLD_A_READ = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN")
c.execute("SELECT count(*) FROM sqlite_master").fetchall()
print("reading", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"""


@pytest.mark.dialects("sqlite")
def test_wal_switch_waits_out_a_reader_longer_than_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    # A busy timeout of 0.3 s: one attempt to switch gives up long before the reader is done.
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE other (x INTEGER)")
            conn.commit()
        with subprocess.Popen(
            [sys.executable, "-c", HOLD_A_READ, str(path), "1.5"],
            stdout=subprocess.PIPE,
            text=True,
        ) as reader:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "reading"
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
                # What migrate.upgrade runs once its tables are committed.
                strategy_for(engine, build_tables("walx")).after_migrate(conn)
                conn.commit()
            assert reader.wait(timeout=30) == 0
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()
