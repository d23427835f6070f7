"""Run squeal's Alembic migrations: from Python, ``squeal migrate``, or your own alembic."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from squeal.dialects import migration_transaction, strategy_for
from squeal.schema import build_tables, validate_prefix

#: The branch label of squeal's revisions, for ``version_locations`` in an application's alembic.
BRANCH_LABEL = "squeal"
#: Where the migrations are inside an installed wheel, and in a source checkout.
_PACKAGED = Path(__file__).resolve().parent / "_migrations"
_SOURCE = Path(__file__).resolve().parent.parent / "migrations"


def script_location() -> Path:
    """The folder holding squeal's ``env.py`` and ``versions/``."""
    for path in (_PACKAGED, _SOURCE):
        if (path / "env.py").is_file():
            return path
    raise FileNotFoundError("squeal's migrations are missing from this installation")


def version_locations() -> str:
    """The ``versions`` folder, for an application's ``version_locations`` setting."""
    return str(script_location() / "versions")


def version_table(prefix: str) -> str:
    """The table where squeal records its revision for ``prefix``."""
    return f"{validate_prefix(prefix)}_alembic_version"


def config(
    prefix: str = "squeal",
    *,
    connection: sa.Connection | None = None,
    url: str | None = None,
    output: io.TextIOBase | None = None,
) -> Config:
    """An Alembic Config for squeal's migrations (isolated: its own version table)."""
    cfg = Config(output_buffer=output) if output is not None else Config()  # type: ignore[arg-type]
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["squeal.prefix"] = validate_prefix(prefix)
    if connection is not None:
        cfg.attributes["connection"] = connection
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head() -> str:
    """The newest revision the migrations know."""
    heads = ScriptDirectory.from_config(config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"squeal's migrations have {len(heads)} heads: {heads}")
    return heads[0]


def upgrade(engine: sa.Engine, *, prefix: str = "squeal", revision: str = "head") -> str | None:
    """Create or upgrade squeal's tables for ``prefix`` to ``revision``.

    Concurrent upgrades of one prefix (other processes, ``squeal migrate``, squeal's env.py
    under ``alembic``) take turns under a database lock; a later one finds nothing to do.

    Returns:
        The revision the tables were at when this upgrade got the lock (None: no tables), so
        a caller that waited for another upgrade can tell that it found nothing to do.

    Raises:
        UnsupportedDatabase: before any DDL runs, when squeal cannot run on this database.
        DatabaseBusy: another migration of this prefix held the lock for too long.
    """
    strategy = strategy_for(engine, build_tables(prefix))
    with engine.connect() as conn:
        strategy.check_server(conn)
        with migration_transaction(conn, prefix):
            before = _revision(conn, prefix)
            command.upgrade(config(prefix, connection=conn), revision)
    with engine.connect() as conn:
        strategy.after_migrate(conn)
        conn.commit()
    return before


def downgrade(
    engine: sa.Engine,
    *,
    prefix: str = "squeal",
    revision: str = "base",
    drop_version_table: bool = False,
) -> str | None:
    """Downgrade squeal's tables to ``revision``; ``base`` removes them all (under the lock).

    Returns the revision the tables were at when this downgrade got the lock (None: none).
    """
    with engine.connect() as conn, migration_transaction(conn, prefix):
        before = _revision(conn, prefix)
        command.downgrade(config(prefix, connection=conn), revision)
        if drop_version_table and revision == "base":
            sa.Table(version_table(prefix), sa.MetaData()).drop(conn, checkfirst=True)
    return before


def current(engine: sa.Engine, *, prefix: str = "squeal") -> str | None:
    """The revision squeal's tables are at, or None when they do not exist."""
    with engine.connect() as conn:
        return _revision(conn, prefix)


def _revision(conn: sa.Connection, prefix: str) -> str | None:
    ctx = MigrationContext.configure(conn, opts={"version_table": version_table(prefix)})
    return ctx.get_current_revision()


def schema_diff(engine: sa.Engine, *, prefix: str = "squeal") -> list[Any]:
    """What autogenerate would change to reach squeal's declared tables (empty: they match).

    Only this prefix's tables are compared; the application's own tables are ignored.
    """

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or str(name).startswith(f"{prefix}_")

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_name": include_name,
                "version_table": version_table(prefix),
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        return list(compare_metadata(ctx, build_tables(prefix).metadata))


def sql(engine_or_url: sa.Engine | str, *, prefix: str = "squeal", revision: str = "head") -> str:
    """The DDL of an upgrade to ``revision``, as SQL text for a DBA (nothing is executed)."""
    url = (
        engine_or_url
        if isinstance(engine_or_url, str)
        else engine_or_url.url.render_as_string(hide_password=False)
    )
    out = io.StringIO()
    command.upgrade(config(prefix, url=url, output=out), revision, sql=True)
    return out.getvalue()


def migration_prefix() -> str:
    """The prefix a running migration works on (called from the revision scripts).

    squeal's own env.py passes it in ``config.attributes``; an application's alembic can set
    ``squeal_prefix`` in its ini section or pass ``-x squeal_prefix=...``; default ``squeal``.
    """
    from alembic import context

    cfg = context.config
    prefix = (
        cfg.attributes.get("squeal.prefix")
        or context.get_x_argument(as_dictionary=True).get("squeal_prefix")
        or cfg.get_main_option("squeal_prefix")
        or "squeal"
    )
    return validate_prefix(prefix)
