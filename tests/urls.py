"""The test databases' URLs on their asyncio drivers (shared by conftest and the tests)."""

from __future__ import annotations

import sqlalchemy as sa

#: The asyncio drivers of each database; the first is its primary one, on which the
#: conformance suite runs (through tests/aio_facade.py).
ASYNC_DRIVERS = {
    "sqlite": ("aiosqlite",),
    "postgresql": ("asyncpg", "psycopg"),
    "mysql": ("asyncmy", "aiomysql"),
}
#: Where the driver's name alone would pick its sync dialect (``create_async_engine`` takes
#: either; a URL that must say asyncio by itself, as ``squeal bench``'s, takes this one).
_ASYNC_NAMES = {"psycopg": "psycopg_async"}


def _drivers(url: sa.URL) -> tuple[str, ...]:
    backend = url.get_backend_name()
    return ASYNC_DRIVERS["mysql" if backend == "mariadb" else backend]


def async_url(db_url: str, driver: str | None = None) -> str:
    """``db_url`` on asyncio ``driver`` (default: its database's primary asyncio driver)."""
    url = sa.make_url(db_url)
    backend = url.get_backend_name()
    name = driver or _drivers(url)[0]
    drivername = f"{backend}+{_ASYNC_NAMES.get(name, name)}"
    return url.set(drivername=drivername).render_as_string(hide_password=False)


def primary_async_url(db_url: str) -> str:
    """``db_url`` with its database's primary asyncio driver (``sqlite+aiosqlite``, ...)."""
    return async_url(db_url)


def async_urls(db_url: str) -> list[str]:
    """``db_url`` on each asyncio driver of its database."""
    return [async_url(db_url, d) for d in _drivers(sa.make_url(db_url))]
