"""One engine/queue fixture over every database: SQLite always, PostgreSQL and MySQL/MariaDB by URL.

Options:
  --db sqlite,postgresql,mysql   which databases to run (default: all three)
  --require-db                   a missing server or tool fails the run instead of skipping
Server URLs: SQUEAL_TEST_POSTGRESQL_URL, SQUEAL_TEST_MYSQL_URL (loopback defaults below). On a
default URL a missing ``test`` database is created; an unreachable server skips its tests with
the reason (shown in the summary), or fails them under --require-db.
Tests that only apply to some databases say so with ``@pytest.mark.dialects("postgresql", ...)``.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from squeal import Queue
from tests import needs
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
        help="fail (instead of skipping) when a selected database server or a tool a test "
        "needs (faketime, the PostgreSQL server programs, ...) is missing",
    )


def server_url(name: str) -> str:
    """The URL of a server database under test."""
    return os.environ.get(f"SQUEAL_TEST_{name.upper()}_URL", DEFAULT_URLS[name])


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    lines = str(orig).strip().splitlines()
    text = lines[0].strip() if lines else ""
    return f"{type(orig).__name__}: {text[:160]}" if text else type(orig).__name__


def _connects(url: sa.URL) -> str | None:
    """None when ``url`` answers ``SELECT 1``; else the error's first line."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return None
    except Exception as exc:  # any failure means "cannot test here"
        return _first_line(exc)
    finally:
        engine.dispose()


def _server_of(url: sa.URL) -> sa.URL:
    """The same server without the database (PostgreSQL: its ``postgres`` database)."""
    database = "postgres" if url.get_backend_name() == "postgresql" else None
    return sa.URL.create(
        url.drivername, url.username, url.password, url.host, url.port, database, url.query
    )


def _database_exists(server: sa.URL, name: str) -> bool:
    engine = sa.create_engine(server, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if server.get_backend_name() != "postgresql":  # MySQL: databases are schemas
                return name in sa.inspect(conn).get_schema_names()
            query = sa.text("SELECT count(*) FROM pg_database WHERE datname = :name")
            return bool(conn.execute(query, {"name": name}).scalar())
    finally:
        engine.dispose()


def _create_database(server: sa.URL, name: str) -> None:
    engine = sa.create_engine(server, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
    finally:
        engine.dispose()


def _unreachable_reason(name: str) -> str | None:
    """Why the server of database ``name`` cannot be tested here (None: it can)."""
    if name == "sqlite":
        return None
    if name not in _reachable:
        _reachable[name] = _probe(name)
    return _reachable[name]


def _probe(name: str) -> str | None:
    url = sa.make_url(server_url(name))
    env = f"SQUEAL_TEST_{name.upper()}_URL"
    shown = url.render_as_string(hide_password=True)
    failure = _connects(url)
    if failure is None:
        return None
    server = _server_of(url)
    if _connects(server) is not None:
        return f"{name} at {shown} is unreachable ({failure}): start the server or set {env}"
    database = url.database or ""
    if _database_exists(server, database):
        return f"{name} at {shown} refused the connection ({failure}); check {env}"
    if env in os.environ or url.host not in ("127.0.0.1", "localhost", "::1"):
        return (
            f"{name}: the database {database!r} does not exist at {shown}: "
            f"create it (CREATE DATABASE {database}) or point {env} at another"
        )
    _create_database(server, database)  # the loopback default: make it, as CI would
    failure = _connects(url)
    return None if failure is None else f"{name} at {shown} is unreachable ({failure})"


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
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_configure(config: pytest.Config) -> None:
    needs.configure(bool(config.getoption("--require-db")))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per reason why tests were skipped, so that no skip goes unnoticed."""
    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            reasons[str(longrepr[2]).removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.section("squeal: not tested here (--require-db makes these failures)")
        for reason, count in reasons.most_common():
            terminalreporter.write_line(f"{count:5d} skipped: {reason}")


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
        needs.unavailable(reason)
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
