"""squeal on asyncio: :class:`AsyncQueue` on the AsyncEngine you already have.

The same queue as :class:`squeal.Queue`, with the same options, names, semantics and errors;
every operation is a coroutine. Each one runs the sync queue's own operation inside SQLAlchemy's
greenlet bridge, so there is one definition of each (docs/asyncio.md says why and what it
costs). Drivers: asyncpg, psycopg (async), aiomysql, asyncmy, aiosqlite.
"""

from __future__ import annotations

from squeal.aio.buffer import AsyncBuffer
from squeal.aio.message import AsyncMessage
from squeal.aio.migrate import current, downgrade, schema_diff, status, upgrade
from squeal.aio.queue import AsyncQueue, AsyncTopicLock
from squeal.aio.worker import AsyncWorker

__all__ = [
    "AsyncBuffer",
    "AsyncMessage",
    "AsyncQueue",
    "AsyncTopicLock",
    "AsyncWorker",
    "current",
    "downgrade",
    "schema_diff",
    "status",
    "upgrade",
]
