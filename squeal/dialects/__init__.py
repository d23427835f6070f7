"""What varies by database, one bundle per database, chosen once from the dialect's name.

Driver differences live in :mod:`squeal.drivers`; everything here is SQL and the meaning of the
server's error codes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from squeal.dialects import mysql, postgresql, sqlite
from squeal.dialects.base import Strategy
from squeal.dialects.bundle import Bundle
from squeal.dialects.dedup import Windows
from squeal.dialects.health import Health
from squeal.dialects.locking import Locking
from squeal.dialects.migration_lock import MIGRATION_LOCK_SECONDS, locked_transaction
from squeal.drivers import driver_for
from squeal.errors import UnsupportedDatabase, ValidationError
from squeal.schema import Tables, validate_schema

#: Every supported database, by SQLAlchemy dialect name.
BUNDLES: dict[str, Bundle] = {
    name: bundle
    for bundle in (postgresql.BUNDLE, mysql.BUNDLE, sqlite.BUNDLE)
    for name in bundle.dialects
}


def bundle_for(dialect: sa.Dialect) -> Bundle:
    """The bundle for ``dialect``'s database, or UnsupportedDatabase naming what is supported."""
    try:
        return BUNDLES[dialect.name]
    except KeyError:
        supported = ", ".join(sorted(BUNDLES))
        raise UnsupportedDatabase(
            f"squeal does not support the {dialect.name!r} dialect (supported: {supported})"
        ) from None


def strategy_for(engine: sa.Engine, tables: Tables, *, notify: bool = True) -> Strategy:
    """The claim strategy for ``engine``'s database (``notify``: puts announce themselves)."""
    return bundle_for(engine.dialect).strategy(engine.dialect, tables, notify=notify)


def locking_for(
    dialect: sa.Dialect,
    tables: Tables,
    ready: tuple[sa.ColumnElement[bool], ...],
    topic_scan: sa.Select[Any],
) -> Locking:
    """The topic-lock statements for ``dialect``'s database (``ready``: what makes a message
    ready, one condition per kind of row; ``topic_scan``: :attr:`Strategy.topic_scan`)."""
    return bundle_for(dialect).locking(dialect, tables, ready, topic_scan)


def windows_for(dialect: sa.Dialect, tables: Tables) -> Windows:
    """The dedup-window statements for ``dialect``'s database."""
    return bundle_for(dialect).windows(dialect, tables)


def health_for(dialect: sa.Dialect, tables: Tables) -> Health:
    """The health checks for ``dialect``'s database."""
    return bundle_for(dialect).health(tables)


def resolve_schema(engine: sa.Engine, schema: object = None) -> str | None:
    """The one place that decides where squeal's tables live for ``engine``.

    ``schema`` when given; else the schema the engine's ``schema_translate_map`` maps
    unqualified tables to (so migrations, squeal's own statements and a caller's connection
    from that engine agree); else None, the connection's default schema.

    Raises:
        ValidationError: a bad name, or a schema on a database without schemas (SQLite).
    """
    chosen = validate_schema(schema)
    if chosen is None:
        mapped = (engine.get_execution_options().get("schema_translate_map") or {}).get(None)
        chosen = validate_schema(mapped)
    refusal = bundle_for(engine.dialect).no_schemas
    if chosen is not None and refusal is not None:
        raise ValidationError(f"{refusal} (schema {chosen!r})")
    return chosen


@contextmanager
def migration_transaction(
    conn: sa.Connection,
    prefix: str,
    schema: str | None = None,
    *,
    timeout: float = MIGRATION_LOCK_SECONDS,
) -> Iterator[None]:
    """Run the body in one transaction on ``conn`` while holding the migration lock of
    ``prefix`` in ``schema``.

    An unsupported database raises UnsupportedDatabase: squeal never migrates unlocked (a
    concurrent run could interleave its DDL).
    """
    lock = bundle_for(conn.dialect).migration_lock(prefix, schema)
    with driver_for(conn.dialect).migrating(), locked_transaction(conn, lock, timeout=timeout):
        yield


__all__ = [
    "BUNDLES",
    "Bundle",
    "Strategy",
    "bundle_for",
    "health_for",
    "locking_for",
    "migration_transaction",
    "resolve_schema",
    "strategy_for",
    "windows_for",
]
