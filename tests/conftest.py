"""One engine/queue fixture over every database: SQLite always, PostgreSQL and MySQL/MariaDB by URL.

Options:
  --db sqlite,postgresql,mysql   which databases to run (default: all three); an entry may
                                 name a driver too (postgresql+pg8000, mariadb+mysqlconnector)
  --require-db                   a missing server or tool fails the run instead of skipping
  --database-tests-only          leave out the tests that take no database (docs, house rules,
                                 migrations history, ...): CI runs each server in a lane of its
                                 own and those tests once, in the SQLite lanes
Server URLs: SQUEAL_TEST_POSTGRESQL_URL, SQUEAL_TEST_MYSQL_URL (loopback defaults below). On a
default URL a missing ``test`` database is created; an unreachable server skips its tests with
the reason (shown in the summary), or fails them under --require-db.
Tests that only apply to some databases say so with ``@pytest.mark.dialects("postgresql", ...)``.

The driver axis: a test runs on each database's primary driver (psycopg, PyMySQL, sqlite3),
and tests marked ``every_driver`` (the driver contract, the driver-sensitive reliability tests)
on every driver squeal has an adapter for, under both dialect names of the MySQL family. A
``--db`` entry with a driver runs everything on that driver. A driver that is not installed is
a skip naming its extra (a failure under --require-db).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from squeal import Queue
from tests import needs
from tests.children import Children
from tests.urls import ASYNC_DRIVERS

DATABASES = ("sqlite", "postgresql", "mysql")
#: The drivers of each database; the first is its primary driver.
DRIVERS = {
    "sqlite": ("pysqlite",),
    "postgresql": ("psycopg", "psycopg2", "pg8000"),
    "mysql": ("pymysql", "mysqldb", "mysqlconnector", "mariadbconnector"),
}
#: The variants of a database: its dialect name(s) and drivers. The primary one is named
#: like the database, so ordinary test ids stay ``[postgresql]``, ``[mysql]``, ``[sqlite]``.
VARIANTS = {
    "sqlite": ("sqlite",),
    "postgresql": ("postgresql", "postgresql+psycopg2", "postgresql+pg8000"),
    "mysql": (
        "mysql",
        *(f"mysql+{d}" for d in DRIVERS["mysql"][1:]),
        *(f"mariadb+{d}" for d in DRIVERS["mysql"]),
    ),
}
#: The asyncio variants (squeal.aio): ``aio:`` and the database (drivers: tests/urls.py).
ASYNC = "aio:"
ASYNC_VARIANTS = {
    d: (f"{ASYNC}{d}", *(f"{ASYNC}{d}+{driver}" for driver in drivers[1:]))
    for d, drivers in ASYNC_DRIVERS.items()
}
DEFAULT_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/test",
}
_reachable: dict[str, str | None] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("squeal")
    group.addoption(
        "--db",
        default=",".join(DATABASES),
        help="databases (or database+driver variants) to test, comma separated",
    )
    group.addoption(
        "--require-db",
        action="store_true",
        help="fail (instead of skipping) when a selected database server or a tool a test "
        "needs (faketime, the PostgreSQL server programs, ...) is missing",
    )
    group.addoption(
        "--database-tests-only",
        action="store_true",
        help="leave out the tests that take no database (run them in another lane, once)",
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


def family(variant: str) -> str:
    """The database of a variant: ``mariadb+pymysql`` -> ``mysql``, ``aio:sqlite`` -> ``sqlite``."""
    name = variant.removeprefix(ASYNC).split("+", maxsplit=1)[0]
    return "mysql" if name == "mariadb" else name


def _selected(config: pytest.Config) -> tuple[list[str], list[str]]:
    """(databases chosen whole, variants chosen by name) from ``--db``."""
    chosen = [d.strip() for d in str(config.getoption("--db")).split(",") if d.strip()]
    every = {v for variants in (*VARIANTS.values(), *ASYNC_VARIANTS.values()) for v in variants}
    named = {v: v for v in every} | {f"{d}+{DRIVERS[d][0]}": d for d in DATABASES if d != "sqlite"}
    unknown = [c for c in chosen if c not in DATABASES and c not in named]
    if unknown:
        raise pytest.UsageError(
            f"--db: unknown {unknown}; use {', '.join(DATABASES)} or one of {sorted(every)}"
        )
    whole = [c for c in chosen if c in DATABASES]
    return whole, [named[c] for c in chosen if c not in DATABASES and named[c] not in whole]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db" not in metafunc.fixturenames:
        return
    whole, named = _selected(metafunc.config)
    marker = metafunc.definition.get_closest_marker("dialects")
    allowed = set(marker.args) if marker else set(DATABASES)
    every_driver = metafunc.definition.get_closest_marker("every_driver") is not None
    variants = [
        v
        for d in DATABASES
        if d in whole
        for v in (VARIANTS[d] if every_driver else VARIANTS[d][:1])
    ]
    if _async_native(metafunc):  # squeal.aio's own tests: every asyncio driver, nothing sync
        variants = []
    if _runs_async(metafunc):
        variants += [
            v
            for d in DATABASES
            if d in whole
            for v in (
                ASYNC_VARIANTS[d]
                if every_driver or _async_native(metafunc)
                else ASYNC_VARIANTS[d][:1]
            )
        ]
    variants += [
        v for v in named if v not in variants and (not is_async(v) or _runs_async(metafunc))
    ]
    variants = [v for v in variants if family(v) in allowed]
    metafunc.parametrize("db", variants, indirect=True)


def _runs_async(metafunc: pytest.Metafunc) -> bool:
    """The conformance suite and the driver contract also run on squeal.aio, unless marked
    ``sync_only`` (with the reason); tests/aio runs on squeal.aio alone, on every driver."""
    if _async_native(metafunc):
        return True
    path = Path(str(metafunc.definition.fspath))
    suite = path.parent.name in ("conformance", "drivers")
    return suite and metafunc.definition.get_closest_marker("sync_only") is None


def _async_native(metafunc: pytest.Metafunc) -> bool:
    """A test of tests/aio: written with coroutines, run on loops of its own."""
    return Path(str(metafunc.definition.fspath)).parent.name == "aio"


def is_async(variant: str) -> bool:
    """Whether ``variant`` runs squeal.aio (an ``aio:`` variant)."""
    return variant.startswith(ASYNC)


_LOOP = pytest.StashKey[asyncio.AbstractEventLoop]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Under an ``aio:`` variant, run the test (fixtures included) inside SQLAlchemy's greenlet
    bridge on a loop of its own, in debug mode: the facade awaits AsyncQueue there, and the
    test's own SQL runs on the async driver."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or not is_async(str(callspec.params.get("db", ""))):
        return None
    if item.path.parent.name == "aio":  # squeal.aio's own tests run their own loops
        return None
    from _pytest.runner import runtestprotocol
    from sqlalchemy.util.concurrency import greenlet_spawn

    loop = asyncio.new_event_loop()
    # Debug mode (never-awaited coroutines, calls from the wrong thread). The test function
    # itself is one task whose sync steps block the loop (its sleeps, its own SQL), so slow
    # callbacks are measured where only squeal runs on the loop: tests/aio/.
    loop.set_debug(True)
    loop.slow_callback_duration = 60.0
    item.stash[_LOOP] = loop
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    try:
        loop.run_until_complete(greenlet_spawn(runtestprotocol, item, nextitem=nextitem))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect tests whose databases were all left out by --db (an empty parametrization),
    and under --database-tests-only the tests that take no database."""
    keep, drop = [], []
    databases_only = bool(config.getoption("--database-tests-only"))
    for item in items:
        skip = item.get_closest_marker("skip")
        reason = str(skip.kwargs.get("reason", "")) if skip else ""
        empty = reason.startswith("got empty parameter set") and "(db)" in reason
        callspec = getattr(item, "callspec", None)
        dbless = callspec is None or "db" not in callspec.params
        (drop if empty or (databases_only and dbless) else keep).append(item)
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
    for name in _selected(config)[0]:
        where = "a file per test" if name == "sqlite" else server_url(name)
        status = _unreachable_reason(name) or "reachable"
        lines.append(f"squeal database {name}: {where} ({status})")
    return lines


@pytest.fixture
def aio_loop(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoop | None:
    """The event loop of a test under an ``aio:`` variant (debug mode); None otherwise."""
    return request.node.stash.get(_LOOP, None)


@pytest.fixture
def db(request: pytest.FixtureRequest, aio_loop: asyncio.AbstractEventLoop | None) -> str:
    """The database under test: sqlite, postgresql or mysql (MariaDB too), on any driver."""
    variant: str = request.param
    name = family(variant)
    reason = _unreachable_reason(name) or _driver_missing(variant)
    if reason:
        needs.unavailable(reason)
    return name


@pytest.fixture
def db_url(request: pytest.FixtureRequest, db: str, tmp_path: Path) -> str:
    """A URL for the variant under test (a fresh SQLite file for sqlite)."""
    if db == "sqlite":
        return f"sqlite:///{tmp_path / 'squeal.db'}"
    variant: str = request.node.callspec.params["db"]
    return variant_url(db if is_async(variant) else variant)


@pytest.fixture
def driver(request: pytest.FixtureRequest, db: str) -> str:
    """The driver under test (``dialect.driver``): psycopg, pg8000, pymysql, pysqlite, ...,
    and under an ``aio:`` variant asyncpg, psycopg, asyncmy, aiomysql, aiosqlite."""
    variant: str = request.node.callspec.params["db"]
    drivers = ASYNC_DRIVERS if is_async(variant) else DRIVERS
    return variant.split("+")[1] if "+" in variant else drivers[db][0]


@pytest.fixture
def async_url(request: pytest.FixtureRequest, db: str, driver: str, db_url: str) -> str | None:
    """The URL of an ``aio:`` variant's AsyncEngine (None under a sync variant)."""
    if not is_async(request.node.callspec.params["db"]):
        return None
    url = sa.make_url(db_url)
    return url.set(drivername=f"{url.get_backend_name()}+{driver}").render_as_string(
        hide_password=False
    )


def variant_url(variant: str) -> str:
    """The server URL of ``variant``'s database with the variant's dialect and driver."""
    url = sa.make_url(server_url(family(variant)))
    if "+" in variant:
        url = url.set(drivername=variant)
    return url.render_as_string(hide_password=False)


_missing: dict[str, str | None] = {}


def _driver_missing(variant: str) -> str | None:
    """Why ``variant``'s driver cannot be used here (None: it can)."""
    if is_async(variant):
        return _async_driver_missing(variant)
    if "+" not in variant:
        return None
    if variant not in _missing:
        from squeal.drivers import extra_for

        database, driver = variant.split("+")
        try:
            sa.create_engine(variant_url(variant)).dispose()
            _missing[variant] = None
        except ImportError as exc:
            _missing[variant] = (
                f"the {driver} driver is not installed ({exc}): "
                f"pip install 'squeal[{extra_for(database, driver)}]'"
            )
    return _missing[variant]


def _async_driver_missing(variant: str) -> str | None:
    database = family(variant)
    driver = variant.split("+")[1] if "+" in variant else ASYNC_DRIVERS[database][0]
    if variant not in _missing:
        from squeal.drivers import ASYNC_ADAPTERS

        try:
            importlib.import_module(driver)
            importlib.import_module("greenlet")
            _missing[variant] = None
        except ImportError as exc:
            extra = ASYNC_ADAPTERS[(database, driver)].extra
            _missing[variant] = (
                f"the asyncio driver {driver} is not installed ({exc}): "
                f"pip install 'squeal[{extra}]'"
            )
    return _missing[variant]


@pytest.fixture
def async_engine(
    async_url: str | None, aio_loop: asyncio.AbstractEventLoop | None
) -> Iterator[AsyncEngine | None]:
    """The AsyncEngine of an ``aio:`` variant (None under a sync variant)."""
    if async_url is None or aio_loop is None:
        yield None
        return
    from tests.aio_facade import Runner

    eng = create_async_engine(async_url)
    yield eng
    Runner(aio_loop, eng)(eng.dispose())


@pytest.fixture
def engine(db_url: str, async_engine: AsyncEngine | None) -> Iterator[sa.Engine]:
    """An engine on the database under test; no connection may stay checked out. Under an
    ``aio:`` variant, the AsyncEngine's sync face (the test function runs in the bridge)."""
    if async_engine is not None:
        eng = async_engine.sync_engine
        yield eng
        checked_out = eng.pool.checkedout()  # type: ignore[attr-defined]
        assert checked_out == 0, f"{checked_out} pooled connection(s) left checked out"
        return
    eng = sa.create_engine(db_url)
    yield eng
    checked_out = eng.pool.checkedout()  # type: ignore[attr-defined]
    eng.dispose()
    assert checked_out == 0, f"{checked_out} pooled connection(s) left checked out"


@pytest.fixture
def private_url(db: str, db_url: str) -> Iterator[str]:
    """A database of this test's own, for tests that use the shared name ``alembic_version``."""
    if db == "sqlite":
        yield db_url  # already a fresh file
        return
    name = f"squeal_{secrets.token_hex(5)}"
    admin = sa.create_engine(db_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    force = " WITH (FORCE)" if db == "postgresql" else ""
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield sa.make_url(db_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        admin.dispose()


@pytest.fixture
def private_engine(private_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(private_url, poolclass=sa.pool.NullPool)
    yield eng
    eng.dispose()


@pytest.fixture
def prefix() -> str:
    """A table prefix of this test's own, so tests never see each other's messages."""
    return f"t{secrets.token_hex(5)}"


@pytest.fixture
def make_queue(
    engine: sa.Engine,
    prefix: str,
    async_engine: AsyncEngine | None,
    aio_loop: asyncio.AbstractEventLoop | None,
) -> Iterator[Callable[..., Queue]]:
    """Build queues on this test's prefix (tables created once, dropped at teardown). Under an
    ``aio:`` variant each is an AsyncQueue behind the sync facade of tests/aio_facade.py."""
    created: list[Queue] = []
    runner = None
    if async_engine is not None and aio_loop is not None:
        from tests.aio_facade import Runner

        runner = Runner(aio_loop, async_engine)

    def make(**options: Any) -> Queue:
        if runner is not None and async_engine is not None:
            from squeal.aio import AsyncQueue

            q: Any = runner.outward(AsyncQueue(async_engine, prefix=prefix, **options))
        else:
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
