"""The README's test command on machines that lack something: visible skips, or failures.

Each test runs pytest itself in a child process, on a few tests, with a server or a tool taken
away: a closed port for the server, an empty PATH for the tools.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SQUEAL_TEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_an_unreachable_server_is_a_visible_skip_and_a_failure_under_require_db() -> None:
    closed = {
        "SQUEAL_TEST_POSTGRESQL_URL": "postgresql+psycopg://postgres@127.0.0.1:1/test",
        "SQUEAL_TEST_MYSQL_URL": "mysql+pymysql://root@127.0.0.1:1/test",
    }
    smoke = "tests/conformance/test_smoke.py"
    relaxed = _pytest(smoke, **closed)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "not tested here" in relaxed.stdout
    assert "skipped: postgresql at postgresql+psycopg://postgres@127.0.0.1:1/test" in relaxed.stdout
    assert "start the server or set SQUEAL_TEST_MYSQL_URL" in relaxed.stdout
    assert " passed" in relaxed.stdout  # SQLite ran
    strict = _pytest(smoke, "--require-db", **closed)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "--require-db: postgresql at" in strict.stdout


@pytest.mark.dialects("postgresql")
def test_missing_tools_are_skips_naming_what_to_install(db: str, db_url: str) -> None:
    tests = [
        "tests/reliability/test_faults.py::test_consumer_with_a_skewed_clock_behaves_the_same",
        "tests/reliability/test_server_restart.py",
    ]
    no_tools = {"PATH": "", "SQUEAL_TEST_POSTGRESQL_URL": db_url}
    relaxed = _pytest(*tests, "--db=postgresql", **no_tools)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "skipped: faketime not found: install faketime" in relaxed.stdout
    assert "skipped: the PostgreSQL server programs (initdb, pg_ctl) were not found" in (
        relaxed.stdout
    )
    strict = _pytest(*tests, "--db=postgresql", "--require-db", **no_tools)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "--require-db: faketime not found" in strict.stdout
