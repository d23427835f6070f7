"""Running the sync queue's operations on the event loop: SQLAlchemy's greenlet bridge.

Each call runs one operation of :class:`squeal.Queue` in a greenlet (``greenlet_spawn``); every
DB-API call it makes on an asyncio driver's adapted connection awaits the driver, and every
pause awaits ``asyncio.sleep`` (squeal.bridge), so the loop runs other tasks meanwhile. Nothing
runs in a thread, and no loop is started: the caller's loop drives it all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util.concurrency import greenlet_spawn

from squeal.errors import InvalidType

T = TypeVar("T")


async def run(operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Await ``operation(*args, **kwargs)``, run inside the bridge."""
    return await greenlet_spawn(operation, *args, **kwargs)


def sync_connection(connection: object) -> sa.Connection | None:
    """The sync face of the caller's ``AsyncConnection`` (None for None), for ``connection=``.

    Raises:
        InvalidType: anything else; an AsyncSession is told how to get its connection.
    """
    if connection is None:
        return None
    if isinstance(connection, AsyncConnection):
        return connection.sync_connection
    if hasattr(connection, "sync_session"):
        raise InvalidType(
            "connection= takes an AsyncConnection; for an AsyncSession pass "
            "await session.connection()"
        )
    raise InvalidType(f"connection must be an AsyncConnection, not {type(connection).__name__}")


def async_engine(engine: object) -> AsyncEngine:
    """``engine``, checked to be an AsyncEngine (InvalidType naming the sync API otherwise)."""
    if isinstance(engine, AsyncEngine):
        return engine
    if isinstance(engine, sa.Engine):
        raise InvalidType(
            "squeal.aio takes an AsyncEngine (create_async_engine); for a sync Engine use "
            "squeal.Queue and squeal.migrate"
        )
    raise InvalidType(f"engine must be a sqlalchemy AsyncEngine, not {type(engine).__name__}")


__all__ = ["async_engine", "run", "sync_connection"]
