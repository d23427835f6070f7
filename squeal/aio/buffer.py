"""AsyncBuffer: :class:`squeal.Buffer` on an AsyncQueue, each operation awaited.

The topic fairness, quotas, prefetch, renewals and drops are the sync Buffer's own, run in the
greenlet bridge (squeal.aio.bridge); what is here is the awaitable surface. One task consumes
from it at a time (its ``get``, ``touch`` and ``close`` wait for each other); the messages it
hands out may be settled from any task.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from types import TracebackType

from squeal.aio.bridge import run
from squeal.aio.message import AsyncMessage, sync_messages
from squeal.aio.queue import AsyncQueue
from squeal.buffer import Buffer
from squeal.errors import InvalidType


class AsyncBuffer:
    """A topic-fair, quota-limited consumer of an :class:`~squeal.aio.AsyncQueue` built on
    topic locks: :class:`squeal.Buffer`'s options and rules, each method a coroutine.

        async with AsyncBuffer(queue, default_topic_quota=2) as buffer:
            async for message in buffer:
                await handle(message)
                await message.ack()
    """

    def __init__(
        self,
        queue: AsyncQueue,
        *,
        default_topic_quota: int = 1,
        extra_buffer_multiplier: int = 2,
        max_topic_idle: float = 60.0,
        topic_quotas: Mapping[str, int] | None = None,
    ) -> None:
        if not isinstance(queue, AsyncQueue):
            raise InvalidType(
                f"queue must be a squeal.aio AsyncQueue, not {type(queue).__name__}"
                + (" (for a Queue, use squeal.Buffer)" if type(queue).__name__ == "Queue" else "")
            )
        self.queue = queue
        #: The sync Buffer whose operations this one awaits.
        self.sync = Buffer(
            queue.sync,
            default_topic_quota=default_topic_quota,
            extra_buffer_multiplier=extra_buffer_multiplier,
            max_topic_idle=max_topic_idle,
            topic_quotas=topic_quotas,
        )
        self._turn = asyncio.Lock()

    @property
    def topic_quotas(self) -> dict[str, int]:
        """Quotas of particular topics (a change applies from the next delivery)."""
        return self.sync.topic_quotas

    def __repr__(self) -> str:
        return repr(self.sync).replace("<Buffer", "<AsyncBuffer", 1)

    async def get(self, *, wait: float = 0.0) -> AsyncMessage | None:
        """The next message a held topic may hand out (see :meth:`squeal.Buffer.get`)."""
        async with self._turn:
            message = await run(self.sync.get, wait=wait)
        return None if message is None else AsyncMessage(message)

    def __aiter__(self) -> AsyncIterator[AsyncMessage]:
        """Yield messages until none is available."""
        return self._messages()

    async def _messages(self) -> AsyncIterator[AsyncMessage]:
        while (message := await self.get()) is not None:
            yield message

    def half_ack(self, message: AsyncMessage) -> None:
        """Free ``message``'s quota slot while it stays leased (see
        :meth:`squeal.Buffer.half_ack`); bookkeeping only, nothing to await."""
        (handle,) = sync_messages([message])
        self.sync.half_ack(handle)

    async def touch(self) -> None:
        """Extend every held lock and lease (see :meth:`squeal.Buffer.touch`)."""
        async with self._turn:
            await run(self.sync.touch)

    def held_topics(self) -> list[str]:
        """The topics whose locks this Buffer holds, in the order it took them."""
        return self.sync.held_topics()

    async def close(self) -> None:
        """Release everything (see :meth:`squeal.Buffer.close`)."""
        async with self._turn:
            await run(self.sync.close)

    async def __aenter__(self) -> AsyncBuffer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


__all__ = ["AsyncBuffer"]
