"""One claiming strategy per database, chosen once from the engine's dialect name."""

from __future__ import annotations

import sqlalchemy as sa

from squeal.dialects.base import Strategy
from squeal.dialects.mysql import MySQLStrategy
from squeal.dialects.postgresql import PostgreSQLStrategy
from squeal.dialects.sqlite import SQLiteStrategy
from squeal.errors import UnsupportedDatabase
from squeal.schema import Tables

_REGISTRY: dict[str, type[Strategy]] = {
    "postgresql": PostgreSQLStrategy,
    "mysql": MySQLStrategy,
    "mariadb": MySQLStrategy,
    "sqlite": SQLiteStrategy,
}


def strategy_for(engine: sa.Engine, tables: Tables) -> Strategy:
    """Return the strategy for ``engine``'s database, or raise UnsupportedDatabase."""
    try:
        cls = _REGISTRY[engine.dialect.name]
    except KeyError:
        supported = ", ".join(sorted(_REGISTRY))
        raise UnsupportedDatabase(
            f"squeal does not support the {engine.dialect.name!r} dialect (supported: {supported})"
        ) from None
    return cls(engine.dialect, tables)


__all__ = ["Strategy", "strategy_for"]
