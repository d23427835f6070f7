"""How the command line reaches a database: the engine, the timeout, the missing-driver hint."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from squeal.cli.output import EXIT_USAGE, CommandError, first_line, shown

#: Seconds to wait for a PostgreSQL server before reporting it unreachable (libpq waits forever).
CONNECT_TIMEOUT = 10


def reason(error: sa.exc.SQLAlchemyError) -> str:
    """The driver's own message, without SQLAlchemy's SQL echo and background link."""
    orig = getattr(error, "orig", None)
    return first_line(orig if orig is not None else error)


def is_async_url(url: sa.URL) -> bool:
    """Whether ``url`` names an asyncio driver (``postgresql+asyncpg``, ...)."""
    try:
        return bool(getattr(url.get_dialect(), "is_async", False))
    except (sa.exc.NoSuchModuleError, ImportError):
        return False  # reported where the engine is created


@contextmanager
def connected_engine(url: sa.URL) -> Iterator[sa.Engine]:
    """An engine on ``url`` whose database has been reached once; disposed afterwards. On an
    asyncio driver's URL, the sync face of an AsyncEngine (the command runs in the bridge)."""
    from squeal.drivers import ADAPTERS

    connect_args: dict[str, object] = {}
    try:
        adapter = ADAPTERS.get((url.get_backend_name(), url.get_driver_name()))
    except sa.exc.NoSuchModuleError:
        adapter = None  # reported below, where create_engine fails
    if adapter is not None:
        timeout = adapter.connect_timeout(CONNECT_TIMEOUT)
        if not timeout.keys() & url.query.keys():
            connect_args.update(timeout)
    try:
        if is_async_url(url):
            from sqlalchemy.ext.asyncio import create_async_engine

            engine = create_async_engine(url, poolclass=sa.pool.NullPool).sync_engine
        else:
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
    except sa.exc.NoSuchModuleError:
        raise CommandError(
            f"invalid --url: SQLAlchemy has no database dialect {url.drivername!r}", EXIT_USAGE
        ) from None
    except ImportError as exc:
        raise CommandError(_driver_hint(url, exc)) from None
    try:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.DBAPIError as exc:
            raise CommandError(f"database unreachable at {shown(url)}: {reason(exc)}") from None
        yield engine
    finally:
        engine.dispose()


#: Drivers to suggest, when installed, for a bare URL whose default driver is missing.
_INSTALLED_ALTERNATIVES = {
    "mysql": ("pymysql",),
    "mariadb": ("pymysql",),
    "postgresql": ("psycopg", "psycopg2"),
}


def _driver_hint(url: sa.URL, error: ImportError) -> str:
    """What to do when ``url``'s driver is missing: its extra, or an installed alternative."""
    import importlib.util

    from squeal.drivers import extra_for

    backend, driver = url.get_backend_name(), url.get_driver_name()
    text = f"the {driver} driver for {url.drivername!r} URLs is not installed ({error})"
    extra = extra_for(backend, driver)
    if extra:
        text += f"; install it with: pip install 'squeal[{extra}]'"
    if "+" not in url.drivername:  # a bare URL names SQLAlchemy's default driver
        for name in _INSTALLED_ALTERNATIVES.get(backend, ()):
            if name != driver and importlib.util.find_spec(name) is not None:
                text += f", or use the installed {name}: {backend}+{name}://..."
                break
    return text
