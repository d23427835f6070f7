"""The queue operations the dashboard uses, awaited: an AsyncQueue's own coroutines, or a sync
Queue's methods on the server's thread pool (where they may block)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from squeal.aio.queue import AsyncQueue
from squeal.limits import Limit
from squeal.message import DeadMessage, PeekedMessage, TopicStats
from squeal.queue import Queue
from squeal.registry import WorkerInfo

T = TypeVar("T")


class Backend:
    """One queue, sync or asyncio, behind awaitable operations."""

    def __init__(self, queue: Queue | AsyncQueue) -> None:
        if not isinstance(queue, Queue | AsyncQueue):
            raise TypeError(f"queue must be a squeal Queue or AsyncQueue, not {type(queue)}")
        self.queue = queue
        self.prefix = queue.prefix

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self.queue, AsyncQueue):
            return await getattr(self.queue, name)(*args, **kwargs)
        method: Callable[..., Any] = getattr(self.queue, name)
        return await run_in_threadpool(method, *args, **kwargs)

    async def stats(self, limit: int | None = None) -> dict[str, TopicStats]:
        found: dict[str, TopicStats] = await self._call("stats", limit)
        return found

    async def workers(self) -> list[WorkerInfo]:
        found: list[WorkerInfo] = await self._call("workers")
        return found

    async def limits(self) -> list[Limit]:
        found: list[Limit] = await self._call("limits")
        return found

    async def peek(self, topic: str, limit: int) -> list[PeekedMessage]:
        found: list[PeekedMessage] = await self._call("peek", topic, limit)
        return found

    async def dead(self, topic: str, limit: int) -> list[DeadMessage]:
        found: list[DeadMessage] = await self._call("dead", topic, limit)
        return found

    async def redrive(self, topic: str, ids: list[int] | None) -> int:
        moved: int = await self._call("redrive", topic, ids=ids)
        return moved

    async def purge_dead(self, topic: str, ids: list[int] | None) -> int:
        gone: int = await self._call("purge", topic, dead_only=True, ids=ids)
        return gone

    async def pause(self, topic: str) -> None:
        await self._call("pause", topic)

    async def resume(self, topic: str) -> None:
        await self._call("resume", topic)


__all__ = ["Backend"]
