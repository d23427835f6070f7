"""Alembic environment for squeal's tables.

Works when squeal calls it (``squeal.migrate``, ``squeal migrate``, ``Queue.create``) and under
the plain ``alembic`` command: set ``script_location`` to this folder and ``sqlalchemy.url``
(or pass ``-x url=...``); pass ``-x squeal_prefix=...`` for a prefix other than ``squeal`` and
``-x squeal_schema=...`` for a schema (MySQL/MariaDB: database) other than the connection's.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context

from squeal.dialects import migration_transaction
from squeal.migrate import migration_prefix, migration_schema, version_table
from squeal.schema import build_tables

config = context.config
prefix = migration_prefix()
schema = migration_schema()


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate looks only at this prefix's tables, never at the application's."""
    if type_ == "schema":
        return name == schema
    if type_ == "table":
        return bool(name) and str(name).startswith(f"{prefix}_")
    return True


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("squeal migrations: set sqlalchemy.url or pass -x url=...")
    return url


def _configure(dialect: str, **kw: Any) -> None:
    context.configure(
        target_metadata=build_tables(prefix, schema, dialect).metadata,
        version_table=version_table(prefix),
        version_table_schema=schema,
        include_schemas=schema is not None,
        include_name=include_name,
        compare_type=True,
        render_as_batch=True,
        **kw,
    )


def run_offline() -> None:
    url = _url()
    dialect = sa.make_url(url).get_backend_name()
    # SQLite runs DDL in transactions, but Alembic prints none for it: without BEGIN/COMMIT a
    # script that rebuilds a table (squeal_0008) would not be one change (others' writes
    # could fall between its statements).
    atomic = {"transactional_ddl": True} if dialect == "sqlite" else {}
    _configure(dialect, url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **atomic)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection.dialect.name, connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Under the plain alembic command: the same lock as squeal.migrate, so that concurrent
    # upgrades of one prefix take turns (squeal.migrate holds it before passing a connection).
    engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as conn, migration_transaction(conn, prefix, schema):
        _configure(conn.dialect.name, connection=conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
