"""What the sync code knows of SQLAlchemy's asyncio bridge, where ``squeal.aio`` runs it.

``squeal.aio`` runs each operation of the sync queue inside the bridge (a greenlet on the
user's event loop, where each DB-API call of an asyncio driver awaits the driver). Two things
must differ there, and only these: a pause (a back-off, a poll, a wait for a lock) awaits
``asyncio.sleep`` instead of blocking the loop's thread; and an engine of an asyncio driver is
usable only there, so anywhere else it is refused with the API that takes it.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.util import concurrency

from squeal.errors import InvalidType

#: SQLAlchemy's way to await a coroutine from sync code inside its bridge (2.1: ``await_``;
#: 2.0: ``await_only``).
await_: Callable[[Awaitable[Any]], Any] = (
    getattr(concurrency, "await_", None) or concurrency.await_only
)


def in_async_bridge() -> bool:
    """Whether this code runs in SQLAlchemy's asyncio bridge (an event loop's thread)."""
    try:
        greenlet = importlib.import_module("greenlet")
    except ImportError:  # SQLAlchemy's asyncio extension is not installed: no bridge
        return False
    return bool(getattr(greenlet.getcurrent(), "__sqlalchemy_greenlet_provider__", False))


def sleep(seconds: float) -> None:
    """Pause for ``seconds``: on the event loop inside the bridge, else in this thread."""
    if seconds <= 0:
        return
    if in_async_bridge():
        await_(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


def sync_engine(engine: object, *, instead: str, used_now: bool = True) -> sa.Engine:
    """``engine``, checked to be an Engine that sync code can use.

    ``used_now``: also check that it can be used here and now; a Queue checks at each
    operation instead, since ``squeal.aio`` builds one on the sync face of an AsyncEngine
    outside the bridge and uses it only inside.

    Raises:
        InvalidType: not an Engine; or an AsyncEngine, or the sync face of one outside the
            bridge (its driver can only be awaited): the message names ``instead``, the API
            that takes it.
    """
    if isinstance(engine, sa.Engine):
        if used_now:
            usable_here(engine, instead=instead)
        return engine
    if hasattr(engine, "sync_engine"):
        raise InvalidType(f"{type(engine).__name__} is asyncio: use {instead}")
    raise InvalidType(f"engine must be a sqlalchemy Engine, not {type(engine).__name__}")


def usable_here(engine: sa.Engine, *, instead: str) -> None:
    """Refuse an engine of an asyncio driver outside the bridge (InvalidType naming
    ``instead``), before SQLAlchemy would fail with MissingGreenlet."""
    if engine.dialect.is_async and not in_async_bridge():
        raise InvalidType(
            f"this engine's driver ({engine.dialect.name}+{engine.dialect.driver}) is an "
            f"asyncio driver: use {instead} on its AsyncEngine"
        )


__all__ = ["await_", "in_async_bridge", "sleep", "sync_engine", "usable_here"]
