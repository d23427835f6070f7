"""Keep squeal's tables out of your Alembic project's autogenerate.

squeal's tables are not in your models, so ``alembic revision --autogenerate`` proposes to drop
them (and their version table, and the tables of every other prefix). In your ``env.py``::

    import squeal.alembic

    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=squeal.alembic.include_name,
        include_object=squeal.alembic.include_object,
    )

With a filter of your own, combine them: ``include_object=squeal.alembic.combine(mine,
squeal.alembic.include_object)``. What is hidden: every table, index and constraint of each
prefix whose squeal revision the database records (in ``{prefix}_alembic_version``, or in your
``alembic_version`` when your Alembic runs squeal's branch), and those version tables. Nothing
of yours is hidden, whatever its name: a table is squeal's only when a recorded squeal revision
says so (SQLite keeps no table comments to mark them by).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from squeal.recorded import APPLICATION_VERSION_TABLE, REVISION_PREFIX, recorded
from squeal.schema import build_tables

Filter = Callable[..., bool]

#: The suffix of squeal's own version table of a prefix.
_VERSION_SUFFIX = "_alembic_version"


def squeal_tables(connection: sa.Connection, schema: str | None = None) -> frozenset[str]:
    """The names of every table squeal created in ``schema`` (the connection's default: None),
    for every prefix whose revision is recorded, version tables included."""
    inspector = sa.inspect(connection)
    names = set(inspector.get_table_names(schema=schema))
    prefixes = {n[: -len(_VERSION_SUFFIX)] for n in names if n.endswith(_VERSION_SUFFIX)}
    found: set[str] = set()
    for prefix in prefixes:
        if _is_squeal(connection, schema, prefix):
            found |= set(build_tables(prefix).metadata.tables) | {prefix + _VERSION_SUFFIX}
    if APPLICATION_VERSION_TABLE in names and schema is None:
        integrated = _integrated_prefix()
        if integrated is not None and recorded(connection, integrated).integrated:
            found |= set(build_tables(integrated).metadata.tables)
    return frozenset(found & names)


def _is_squeal(connection: sa.Connection, schema: str | None, prefix: str) -> bool:
    table = sa.table(prefix + _VERSION_SUFFIX, sa.column("version_num"), schema=schema)
    try:
        with connection.begin_nested():
            versions = connection.execute(sa.select(table.c.version_num)).scalars().all()
    except sa.exc.SQLAlchemyError:
        return False  # not a version table after all (another layout, no privilege)
    return any(str(v).startswith(REVISION_PREFIX) for v in versions)


def _integrated_prefix() -> str | None:
    """The prefix of squeal's branch in the running Alembic environment (``squeal_prefix``)."""
    from squeal.migrate import migration_prefix

    try:
        return migration_prefix()
    except Exception:  # outside an Alembic run: no integrated prefix to know of
        return None


def _hidden(schema: str | None) -> frozenset[str]:
    """squeal's tables in ``schema``, read once per migration run."""
    from alembic import context

    migration = context.get_context()
    cache: dict[str | None, frozenset[str]] = migration.opts.setdefault("squeal.tables", {})
    if schema not in cache:
        connection = migration.connection
        cache[schema] = squeal_tables(connection, schema) if connection is not None else frozenset()
    return cache[schema]


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """Alembic's ``include_name`` hook: False for squeal's tables (and what belongs to them)."""
    schema = parent_names.get("schema_name")
    if type_ == "table":
        return name not in _hidden(schema)
    table = parent_names.get("table_name")
    return table is None or table not in _hidden(schema)


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic's ``include_object`` hook: False for squeal's tables and their indexes,
    constraints and columns, whether reflected from the database or found in metadata."""
    table = obj if type_ == "table" else getattr(obj, "table", None)
    if not isinstance(table, sa.Table):
        return True
    return table.name not in _hidden(table.schema)


def combine(*filters: Filter) -> Filter:
    """One hook that includes an object only when every one of ``filters`` does."""

    def every(*args: Any, **kwargs: Any) -> bool:
        return all(f(*args, **kwargs) for f in filters)

    return every
