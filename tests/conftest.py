"""One engine/queue fixture over every database: SQLite always, PostgreSQL and MySQL/MariaDB by URL.

Options:
  --db sqlite,postgresql,mysql   which databases to run (default: all three)
  --require-db                   an unreachable server fails the run instead of deselecting it
Server URLs: SQUEAL_TEST_POSTGRESQL_URL, SQUEAL_TEST_MYSQL_URL (loopback defaults below).
Tests that only apply to some databases say so with ``@pytest.mark.dialects("postgresql", ...)``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from squeal import Queue
from tests.children import Children

DATABASES = ("sqlite", "postgresql", "mysql")
DEFAULT_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
}
_reachable: dict[str, str | None] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("squeal")
    group.addoption("--db", default=",".join(DATABASES), help="databases to test, comma separated")
    group.addoption(
        "--require-db",
        action="store_true",
        help="fail (instead of deselecting) when a selected database server is unreachable",
    )


def server_url(name: str) -> str:
    """The URL of a server database under test."""
    return os.environ.get(f"SQUEAL_TEST_{name.upper()}_URL", DEFAULT_URLS[name])


def _unreachable_reason(name: str) -> str | None:
    if name == "sqlite":
        return None
    if name not in _reachable:
        engine = sa.create_engine(server_url(name), poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            _reachable[name] = None
        except Exception as exc:  # any failure means "cannot test here"
            _reachable[name] = f"{name} at {engine.url!r} is unreachable: {exc.__class__.__name__}"
        finally:
            engine.dispose()
    return _reachable[name]


def _selected(config: pytest.Config) -> list[str]:
    chosen = [d.strip() for d in str(config.getoption("--db")).split(",") if d.strip()]
    unknown = set(chosen) - set(DATABASES)
    if unknown:
        raise pytest.UsageError(f"--db: unknown database(s) {sorted(unknown)}; use {DATABASES}")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db" in metafunc.fixturenames:
        metafunc.parametrize("db", DATABASES, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    selected = _selected(config)
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("db") if callspec else None
        marker = item.get_closest_marker("dialects")
        allowed = set(marker.args) if marker else set(DATABASES)
        if name is not None and (name not in selected or name not in allowed):
            drop.append(item)
            continue
        if name is not None and not config.getoption("--require-db") and _unreachable_reason(name):
            drop.append(item)
            continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for name in _selected(config):
        where = "a file per test" if name == "sqlite" else server_url(name)
        status = _unreachable_reason(name) or "reachable"
        lines.append(f"squeal database {name}: {where} ({status})")
    return lines


@pytest.fixture
def db(request: pytest.FixtureRequest) -> str:
    """The name of the database under test: sqlite, postgresql or mysql."""
    name: str = request.param
    reason = _unreachable_reason(name)
    if reason:
        pytest.fail(f"--require-db: {reason}")
    return name


@pytest.fixture
def db_url(db: str, tmp_path: Path) -> str:
    """A URL for the database under test (a fresh SQLite file for sqlite)."""
    if db == "sqlite":
        return f"sqlite:///{tmp_path / 'squeal.db'}"
    return server_url(db)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on the database under test; no connection may stay checked out."""
    eng = sa.create_engine(db_url)
    yield eng
    checked_out = eng.pool.checkedout()  # type: ignore[attr-defined]
    eng.dispose()
    assert checked_out == 0, f"{checked_out} pooled connection(s) left checked out"


@pytest.fixture
def prefix() -> str:
    """A table prefix of this test's own, so tests never see each other's messages."""
    return f"t{secrets.token_hex(5)}"


@pytest.fixture
def make_queue(engine: sa.Engine, prefix: str) -> Iterator[Callable[..., Queue]]:
    """Build queues on this test's prefix (tables created once, dropped at teardown)."""
    created: list[Queue] = []

    def make(**options: Any) -> Queue:
        q = Queue(engine, prefix=prefix, **options)
        if not created:
            q.create()
        created.append(q)
        return q

    yield make
    if created:
        created[0].destroy()
    for q in created:
        q.close()


@pytest.fixture
def queue(make_queue: Callable[..., Queue]) -> Queue:
    """A queue with default options on fresh tables."""
    return make_queue()


@pytest.fixture
def children(
    make_queue: Callable[..., Queue], db_url: str, prefix: str, tmp_path: Path
) -> Iterator[Children]:
    """Worker processes; requested after the tables exist, stopped before they are dropped."""
    pool = Children(db_url, prefix, tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
