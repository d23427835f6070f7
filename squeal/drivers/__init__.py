"""One adapter per DB-API driver, chosen from ``(engine.dialect.name, engine.dialect.driver)``.

A driver without an adapter runs through :class:`~squeal.drivers.base.Generic` (SQLAlchemy's
public API; logged once at INFO). docs/drivers.md lists what each driver has and lacks.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from squeal.drivers.asyncio import Aiomysql, Aiosqlite, Asyncmy, Asyncpg, PsycopgAsync
from squeal.drivers.base import Code, Driver, Generic
from squeal.drivers.mysql import MariaDBConnector, MySQLConnector, MySQLdb, PyMySQL
from squeal.drivers.postgresql import Pg8000, Psycopg, Psycopg2
from squeal.drivers.sqlite import Sqlite3

log = logging.getLogger("squeal")

_BY_DATABASE: dict[str, tuple[Driver, ...]] = {
    "postgresql": (Psycopg(), Psycopg2(), Pg8000()),
    "mysql": (PyMySQL(), MySQLdb(), MySQLConnector(), MariaDBConnector()),
    "sqlite": (Sqlite3(),),
}
_BY_DATABASE["mariadb"] = _BY_DATABASE["mysql"]  # SQLAlchemy's two names for one family
#: The adapters, by (dialect name, driver name).
ADAPTERS: dict[tuple[str, str], Driver] = {
    (database, driver.name): driver
    for database, drivers in _BY_DATABASE.items()
    for driver in drivers
}
_ASYNC_BY_DATABASE: dict[str, tuple[Driver, ...]] = {
    "postgresql": (Asyncpg(), PsycopgAsync()),
    "mysql": (Aiomysql(), Asyncmy()),
    "sqlite": (Aiosqlite(),),
}
_ASYNC_BY_DATABASE["mariadb"] = _ASYNC_BY_DATABASE["mysql"]
#: The adapters of asyncio drivers (``create_async_engine``), by (dialect name, driver name):
#: psycopg has one of each kind.
ASYNC_ADAPTERS: dict[tuple[str, str], Driver] = {
    (database, driver.name): driver
    for database, drivers in _ASYNC_BY_DATABASE.items()
    for driver in drivers
}
_generic_logged: set[tuple[str, str]] = set()


def driver_for(dialect: sa.Dialect) -> Driver:
    """The adapter for ``dialect``'s driver; the generic one (logged once) when there is none."""
    key = (dialect.name, dialect.driver)
    found = (ASYNC_ADAPTERS if dialect.is_async else ADAPTERS).get(key)
    if found is not None:
        return found
    if key not in _generic_logged:
        _generic_logged.add(key)
        log.info(
            "squeal has no adapter for the %s driver %r: it runs through SQLAlchemy's "
            "Connection API (correct, slower; no wake-up notifications; docs/drivers.md)",
            dialect.name,
            dialect.driver,
        )
    return Generic(dialect.driver)


def extra_for(database: str, driver: str) -> str | None:
    """The pip extra of squeal that installs ``driver`` for ``database`` (None: none needed)."""
    found = ADAPTERS.get((database, driver))
    return None if found is None else (found.extra or None)


__all__ = ["ADAPTERS", "ASYNC_ADAPTERS", "Code", "Driver", "Generic", "driver_for", "extra_for"]
