"""squeal's migrations on an AsyncEngine: :mod:`squeal.migrate`'s functions, awaited.

Alembic runs on the AsyncEngine's sync face inside the bridge, as Alembic's own asyncio recipe
does with ``run_sync``; the migration lock's waits await ``asyncio.sleep``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from squeal import migrate
from squeal.aio.bridge import async_engine, run
from squeal.recorded import Recorded


async def upgrade(
    engine: AsyncEngine,
    *,
    prefix: str = "squeal",
    schema: str | None = None,
    revision: str = "head",
) -> str | None:
    """Create or upgrade squeal's tables (see :func:`squeal.migrate.upgrade`)."""
    sync = async_engine(engine).sync_engine
    return await run(migrate.upgrade, sync, prefix=prefix, schema=schema, revision=revision)


async def downgrade(
    engine: AsyncEngine,
    *,
    prefix: str = "squeal",
    schema: str | None = None,
    revision: str = "base",
    drop_version_table: bool = False,
) -> str | None:
    """Downgrade squeal's tables (see :func:`squeal.migrate.downgrade`)."""
    return await run(
        migrate.downgrade,
        async_engine(engine).sync_engine,
        prefix=prefix,
        schema=schema,
        revision=revision,
        drop_version_table=drop_version_table,
    )


async def current(
    engine: AsyncEngine, *, prefix: str = "squeal", schema: str | None = None
) -> str | None:
    """The revision squeal's tables are at (see :func:`squeal.migrate.current`)."""
    return await run(
        migrate.current, async_engine(engine).sync_engine, prefix=prefix, schema=schema
    )


async def status(
    engine: AsyncEngine, *, prefix: str = "squeal", schema: str | None = None
) -> Recorded:
    """Where and at which revision they are recorded (see :func:`squeal.migrate.status`)."""
    return await run(migrate.status, async_engine(engine).sync_engine, prefix=prefix, schema=schema)


async def schema_diff(
    engine: AsyncEngine, *, prefix: str = "squeal", schema: str | None = None
) -> list[Any]:
    """What autogenerate would change (see :func:`squeal.migrate.schema_diff`)."""
    return await run(
        migrate.schema_diff, async_engine(engine).sync_engine, prefix=prefix, schema=schema
    )


__all__ = ["current", "downgrade", "schema_diff", "status", "upgrade"]
