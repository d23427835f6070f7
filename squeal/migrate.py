"""Run squeal's Alembic migrations: from Python, ``squeal migrate``, or your own alembic."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from squeal.bridge import sync_engine
from squeal.dialects import migration_transaction, resolve_schema, strategy_for
from squeal.errors import ForeignRevision, ManagedElsewhere, SchemaOutOfDate
from squeal.recorded import REVISION_PREFIX, Fit, Recorded, fit, recorded
from squeal.schema import build_tables, validate_prefix, validate_schema

#: The branch label of squeal's revisions, for ``version_locations`` in an application's alembic.
BRANCH_LABEL = "squeal"
#: The migrations, inside the package (``squeal:_migrations`` to Alembic) in a wheel, an
#: editable install and a source checkout alike.
_PACKAGED = Path(__file__).resolve().parent / "_migrations"
#: Alembic keeps the running migration's context in module globals: two threads of one process
#: migrating at once (two prefixes, or two nodes of a cluster) would run in each other's. So
#: Alembic runs one command at a time per process (taken after the database's migration lock).
_ALEMBIC = threading.Lock()


def script_location() -> Path:
    """The folder holding squeal's ``env.py`` and ``versions/``."""
    if (_PACKAGED / "env.py").is_file():
        return _PACKAGED
    raise FileNotFoundError("squeal's migrations are missing from this installation")


def version_locations() -> str:
    """The ``versions`` folder, for an application's ``version_locations`` setting."""
    return str(script_location() / "versions")


def version_table(prefix: str) -> str:
    """The table where squeal records its revision for ``prefix`` (isolated)."""
    return f"{validate_prefix(prefix)}_alembic_version"


def _scripts() -> ScriptDirectory:
    """squeal's revisions, after checking that every file in its folder is squeal's own.

    With squeal's versions folder in an application's ``version_locations``, ``alembic
    revision`` writes the application's first revision there when it chains onto squeal's head;
    run by squeal, such a file would change the application's tables (or drop squeal's).
    """
    scripts = ScriptDirectory(str(script_location()))
    for script in scripts.walk_revisions():
        if not script.revision.startswith(REVISION_PREFIX):
            raise ForeignRevision(
                f"{script.path} is not one of squeal's revisions (revision {script.revision!r}) "
                f"but sits in squeal's versions folder; squeal will not run it. Move it to your "
                f"own versions folder (an application's first revision needs --head=base "
                f"--branch-label=app --version-path=<your versions folder>)",
                command="",
            )
    return scripts


def config(
    prefix: str = "squeal",
    *,
    schema: str | None = None,
    connection: sa.Connection | None = None,
    url: str | None = None,
    output: io.TextIOBase | None = None,
) -> Config:
    """An Alembic Config for squeal's migrations (isolated: its own version table)."""
    cfg = Config(output_buffer=output) if output is not None else Config()  # type: ignore[arg-type]
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["squeal.prefix"] = validate_prefix(prefix)
    cfg.attributes["squeal.schema"] = validate_schema(schema)
    if connection is not None:
        cfg.attributes["connection"] = connection
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head() -> str:
    """The newest revision the migrations know."""
    heads = _scripts().get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"squeal's migrations have {len(heads)} heads: {heads}")
    return heads[0]


def upgrade(
    engine: sa.Engine,
    *,
    prefix: str = "squeal",
    schema: str | None = None,
    revision: str = "head",
) -> str | None:
    """Create or upgrade squeal's tables for ``prefix`` (in ``schema``: see
    :func:`squeal.dialects.resolve_schema`) to ``revision``.

    Concurrent upgrades of one prefix (other processes, ``squeal migrate``, squeal's env.py
    under ``alembic``) take turns under a database lock; a later one finds nothing to do.

    Returns:
        The revision the tables were at when this upgrade got the lock (None: no tables), so
        a caller that waited for another upgrade can tell that it found nothing to do.

    Raises:
        UnsupportedDatabase: before any DDL runs, when squeal cannot run on this database.
        DatabaseBusy: another migration of this prefix held the lock for too long.
    """
    engine = sync_engine(engine, instead="squeal.aio.upgrade")
    schema = resolve_schema(engine, schema)
    strategy = strategy_for(engine, build_tables(prefix, schema))
    _scripts()
    with engine.connect() as conn:
        strategy.check_server(conn)
        with migration_transaction(conn, prefix, schema):
            found = recorded(conn, prefix, schema)
            if found.integrated:
                return _integrated(found, prefix, revision)
            before = found.revision
            if _ahead(found, prefix, "upgrade"):
                return before
            with _ALEMBIC:
                command.upgrade(config(prefix, schema=schema, connection=conn), revision)
    with engine.connect() as conn:
        strategy.after_migrate(conn)
        conn.commit()
    return before


def downgrade(
    engine: sa.Engine,
    *,
    prefix: str = "squeal",
    schema: str | None = None,
    revision: str = "base",
    drop_version_table: bool = False,
) -> str | None:
    """Downgrade squeal's tables to ``revision``; ``base`` removes them all (under the lock).

    Returns the revision the tables were at when this downgrade got the lock (None: none).
    """
    engine = sync_engine(engine, instead="squeal.aio.downgrade")
    schema = resolve_schema(engine, schema)
    _scripts()
    with engine.connect() as conn, migration_transaction(conn, prefix, schema):
        found = recorded(conn, prefix, schema)
        if found.integrated:
            raise _managed_elsewhere(found, prefix, "downgrade", "squeal@base")
        before = found.revision
        if _ahead(found, prefix, "downgrade"):
            raise SchemaOutOfDate(
                f"squeal's tables for prefix {prefix!r} are at revision {before}, which this "
                f"squeal does not know: downgrade them with the squeal version that migrated them"
            )
        with _ALEMBIC:
            command.downgrade(config(prefix, schema=schema, connection=conn), revision)
        if drop_version_table and revision == "base":
            version = sa.Table(version_table(prefix), sa.MetaData(schema=schema))
            version.drop(conn, checkfirst=True)
    return before


def current(engine: sa.Engine, *, prefix: str = "squeal", schema: str | None = None) -> str | None:
    """The revision squeal's tables are at, or None when they do not exist (isolated or
    integrated alike: see :func:`status`)."""
    engine = sync_engine(engine, instead="squeal.aio.current")
    return status(engine, prefix=prefix, schema=schema).revision


def status(engine: sa.Engine, *, prefix: str = "squeal", schema: str | None = None) -> Recorded:
    """Where and at which revision squeal's tables for ``prefix`` are recorded: their own
    version table (isolated) or the application's ``alembic_version`` (integrated)."""
    engine = sync_engine(engine, instead="squeal.aio.status")
    schema = resolve_schema(engine, schema)
    with engine.connect() as conn:
        return recorded(conn, validate_prefix(prefix), schema)


def _ahead(found: Recorded, prefix: str, verb: str) -> bool:
    """Whether the tables are at a later revision than this squeal knows: another version of
    squeal migrated them (a rolling upgrade, with this process still on the old version).

    Raises:
        SchemaOutOfDate: on an upgrade, when that revision is not marked compatible with this
            squeal's (see :func:`squeal.recorded.fit`), so this squeal cannot run on it.
    """
    how = fit(found.revisions, head()) if found.revisions else Fit.BEHIND
    if how is Fit.AHEAD and verb == "upgrade":
        raise SchemaOutOfDate(
            f"squeal's tables for prefix {prefix!r} are at revision {found.revision}, newer "
            f"than this squeal ({head()}) and not marked compatible with it: run the squeal "
            f"version that migrated them"
        )
    return how in (Fit.AHEAD, Fit.COMPATIBLE)


def _integrated(found: Recorded, prefix: str, revision: str) -> str | None:
    """An upgrade of tables the application's Alembic manages: nothing to do at squeal's
    head; anything else is the application's Alembic's to run."""
    if revision in ("head", "heads", head()) and found.revision == head():
        return found.revision
    raise _managed_elsewhere(found, prefix, "upgrade", "squeal@head")


def _managed_elsewhere(found: Recorded, prefix: str, verb: str, target: str) -> ManagedElsewhere:
    command_line = f"alembic {verb} {target}"
    return ManagedElsewhere(
        f"squeal's tables for prefix {prefix!r} are managed by your application's Alembic "
        f"(revision {', '.join(found.revisions)} in {found.table}); run: {command_line}",
        command=command_line,
    )


def schema_diff(
    engine: sa.Engine, *, prefix: str = "squeal", schema: str | None = None
) -> list[Any]:
    """What autogenerate would change to reach squeal's declared tables (empty: they match).

    Only this prefix's tables are compared; the application's own tables are ignored.
    """
    engine = sync_engine(engine, instead="squeal.aio.schema_diff")
    schema = resolve_schema(engine, schema)

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return name == schema
        return type_ != "table" or str(name).startswith(f"{prefix}_")

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "include_name": include_name,
                "include_schemas": schema is not None,
                "version_table": version_table(prefix),
                "version_table_schema": schema,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        declared = build_tables(prefix, schema, engine.dialect.name).metadata
        return list(compare_metadata(ctx, declared))


def sql(
    engine_or_url: sa.Engine | str,
    *,
    prefix: str = "squeal",
    schema: str | None = None,
    revision: str = "head",
) -> str:
    """The DDL of an upgrade to ``revision``, as SQL text for a DBA (nothing is executed)."""
    url = (
        engine_or_url
        if isinstance(engine_or_url, str)
        else engine_or_url.url.render_as_string(hide_password=False)
    )
    _scripts()
    out = io.StringIO()
    with _ALEMBIC:
        command.upgrade(config(prefix, schema=schema, url=url, output=out), revision, sql=True)
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


def migration_schema() -> str | None:
    """The schema a running migration works in (called from env.py and the revision scripts):
    ``config.attributes`` from squeal, ``-x squeal_schema=...`` or ``squeal_schema`` in an
    application's ini; default None (the connection's default schema)."""
    from alembic import context

    cfg = context.config
    if "squeal.schema" in cfg.attributes:
        return validate_schema(cfg.attributes["squeal.schema"])
    schema = context.get_x_argument(as_dictionary=True).get("squeal_schema") or (
        cfg.get_main_option("squeal_schema")
    )
    return validate_schema(schema or None)
