"""AsyncQueue: :class:`squeal.Queue` on an AsyncEngine, each operation awaited.

Every method runs the sync queue's own operation inside SQLAlchemy's greenlet bridge
(squeal.aio.bridge): the SQL, validation, result mapping, retries and back-off are the sync
queue's, defined once. What is here is the awaitable surface and the conversions at its edge
(an AsyncConnection to its sync face, a Message to an AsyncMessage).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from squeal.aio.bridge import async_engine, run, sync_connection
from squeal.aio.message import AsyncMessage, sync_messages
from squeal.dialects.health import Finding
from squeal.exchange import Binding
from squeal.limits import UNSET, Limit
from squeal.message import DeadMessage, PeekedMessage, TopicStats
from squeal.queue import DEFAULT_MAX_ATTEMPTS, Queue
from squeal.registry import WorkerInfo
from squeal.schedules import Schedule
from squeal.topic_lock import TopicLock


class AsyncQueue:
    """A message queue stored in the tables of ``prefix``, reached through ``engine``, an
    AsyncEngine (asyncpg, psycopg, aiomysql, asyncmy or aiosqlite).

    The options, methods, arguments, semantics and errors are :class:`squeal.Queue`'s; each
    method is a coroutine. ``connection=`` takes an :class:`~sqlalchemy.ext.asyncio.
    AsyncConnection` (for an AsyncSession: ``await session.connection()``).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        prefix: str = "squeal",
        schema: str | None = None,
        visibility_timeout: float = 60.0,
        new_message_delay: float = 0.0,
        failure_base_delay: float = 1.0,
        max_failure_delay: float = 3600.0,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        max_payload_size: int = 1_048_576,
        notify: bool = True,
        topic_lock_timeout: float = 900.0,
        dedup_window: float | None = None,
    ) -> None:
        self._engine = async_engine(engine)
        #: The sync queue whose operations this one awaits (on the AsyncEngine's sync face).
        self.sync = Queue(
            self._engine.sync_engine,
            prefix=prefix,
            schema=schema,
            visibility_timeout=visibility_timeout,
            new_message_delay=new_message_delay,
            failure_base_delay=failure_base_delay,
            max_failure_delay=max_failure_delay,
            max_attempts=max_attempts,
            max_payload_size=max_payload_size,
            notify=notify,
            topic_lock_timeout=topic_lock_timeout,
            dedup_window=dedup_window,
        )

    # -- identity -------------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        """The AsyncEngine this queue stores its messages through."""
        return self._engine

    @property
    def prefix(self) -> str:
        """The table-name prefix."""
        return self.sync.prefix

    @property
    def schema(self) -> str | None:
        """The schema of the tables (None: the connection's default)."""
        return self.sync.schema

    def __repr__(self) -> str:
        return repr(self.sync).replace("<Queue", "<AsyncQueue", 1)

    async def close(self) -> None:
        """Close the connections this queue keeps (see :meth:`squeal.Queue.close`)."""
        await run(self.sync.close)

    async def __aenter__(self) -> AsyncQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- schema ---------------------------------------------------------------------------------

    async def create(self) -> None:
        """Create or upgrade the tables (see :meth:`squeal.Queue.create`)."""
        await run(self.sync.create)

    async def destroy(self) -> None:
        """Drop the tables and every message (see :meth:`squeal.Queue.destroy`)."""
        await run(self.sync.destroy)

    # -- producing ------------------------------------------------------------------------------

    async def put(
        self,
        payload: bytes,
        topic: str = "default",
        *,
        priority: int = 0,
        delay: float | None = None,
        dedup_key: str | None = None,
        ttl: float | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        connection: AsyncConnection | None = None,
    ) -> int | None:
        """Add a message (see :meth:`squeal.Queue.put`)."""
        return await run(
            self.sync.put,
            payload,
            topic,
            priority=priority,
            delay=delay,
            dedup_key=dedup_key,
            ttl=ttl,
            max_attempts=max_attempts,
            headers=headers,
            connection=sync_connection(connection),
        )

    async def put_many(
        self,
        payloads: Sequence[bytes],
        topic: str = "default",
        *,
        priority: int = 0,
        delay: float | None = None,
        dedup_keys: Sequence[str | None] | None = None,
        ttl: float | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        connection: AsyncConnection | None = None,
    ) -> list[int | None]:
        """Add messages in one round trip (see :meth:`squeal.Queue.put_many`)."""
        return await run(
            self.sync.put_many,
            payloads,
            topic,
            priority=priority,
            delay=delay,
            dedup_keys=dedup_keys,
            ttl=ttl,
            max_attempts=max_attempts,
            headers=headers,
            connection=sync_connection(connection),
        )

    # -- consuming ------------------------------------------------------------------------------

    async def get(
        self,
        topic: str = "default",
        *,
        visibility_timeout: float | None = None,
        wait: float = 0.0,
    ) -> AsyncMessage | None:
        """Lease the next message (see :meth:`squeal.Queue.get`); a wait awaits."""
        found = await self.get_many(topic, 1, visibility_timeout=visibility_timeout, wait=wait)
        return found[0] if found else None

    async def get_many(
        self,
        topic: str = "default",
        limit: int = 10,
        *,
        visibility_timeout: float | None = None,
        wait: float = 0.0,
    ) -> list[AsyncMessage]:
        """Lease up to ``limit`` messages (see :meth:`squeal.Queue.get_many`)."""
        found = await run(
            self.sync.get_many, topic, limit, visibility_timeout=visibility_timeout, wait=wait
        )
        return [AsyncMessage(message) for message in found]

    async def ack_many(
        self, messages: Sequence[AsyncMessage], *, connection: AsyncConnection | None = None
    ) -> None:
        """Ack several messages in one round trip (see :meth:`squeal.Queue.ack_many`)."""
        await run(
            self.sync.ack_many, sync_messages(messages), connection=sync_connection(connection)
        )

    async def nack_many(
        self,
        messages: Sequence[AsyncMessage],
        *,
        delay: float | None = None,
        error: BaseException | str | None = None,
        connection: AsyncConnection | None = None,
    ) -> None:
        """Nack several messages (see :meth:`squeal.Queue.nack_many`)."""
        await run(
            self.sync.nack_many,
            sync_messages(messages),
            delay=delay,
            error=error,
            connection=sync_connection(connection),
        )

    async def touch_many(
        self, messages: Sequence[AsyncMessage], *, visibility_timeout: float | None = None
    ) -> None:
        """Extend several leases (see :meth:`squeal.Queue.touch_many`)."""
        await run(
            self.sync.touch_many, sync_messages(messages), visibility_timeout=visibility_timeout
        )

    # -- topic locks ----------------------------------------------------------------------------

    async def acquire_topic(self, *, exclude: Iterable[str] = ()) -> AsyncTopicLock | None:
        """Lock a topic with ready messages (see :meth:`squeal.Queue.acquire_topic`)."""
        lock = await run(self.sync.acquire_topic, exclude=exclude)
        return None if lock is None else AsyncTopicLock(lock, self)

    def held_topics(self) -> list[AsyncTopicLock]:
        """The topic locks this queue object holds (no database work)."""
        return [AsyncTopicLock(lock, self) for lock in self.sync.held_topics()]

    async def release_topics(self) -> int:
        """Release every topic lock this queue object holds (see
        :meth:`squeal.Queue.release_topics`)."""
        return await run(self.sync.release_topics)

    # -- inspecting and operating ---------------------------------------------------------------

    async def size(self, topic: str = "default") -> int:
        """Messages of ``topic`` (see :meth:`squeal.Queue.size`)."""
        return await run(self.sync.size, topic)

    async def topics(self) -> dict[str, int]:
        """Messages per topic (see :meth:`squeal.Queue.topics`)."""
        return await run(self.sync.topics)

    async def stats(self, limit: int | None = None) -> dict[str, TopicStats]:
        """Messages per topic and state (see :meth:`squeal.Queue.stats`)."""
        return await run(self.sync.stats, limit)

    async def peek(self, topic: str = "default", limit: int = 10) -> list[PeekedMessage]:
        """The next messages, without leasing them (see :meth:`squeal.Queue.peek`)."""
        return await run(self.sync.peek, topic, limit)

    async def dead(self, topic: str = "default", limit: int = 100) -> list[DeadMessage]:
        """Dead messages (see :meth:`squeal.Queue.dead`)."""
        return await run(self.sync.dead, topic, limit)

    async def redrive(
        self, topic: str = "default", limit: int | None = None, *, ids: Sequence[int] | None = None
    ) -> int:
        """Make dead messages ready again (see :meth:`squeal.Queue.redrive`)."""
        return await run(self.sync.redrive, topic, limit, ids=ids)

    async def delete(self, message_id: int) -> bool:
        """Delete one message that is not leased (see :meth:`squeal.Queue.delete`)."""
        return await run(self.sync.delete, message_id)

    async def purge(
        self,
        topic: str = "default",
        *,
        dead_only: bool = False,
        ids: Sequence[int] | None = None,
    ) -> int:
        """Delete a topic's messages (see :meth:`squeal.Queue.purge`)."""
        return await run(self.sync.purge, topic, dead_only=dead_only, ids=ids)

    async def pause(self, topic: str) -> None:
        """Stop deliveries of ``topic`` everywhere (see :meth:`squeal.Queue.pause`)."""
        await run(self.sync.pause, topic)

    async def resume(self, topic: str) -> None:
        """Deliver ``topic`` again (see :meth:`squeal.Queue.resume`)."""
        await run(self.sync.resume, topic)

    async def bind(
        self,
        exchange: str,
        topic: str,
        *,
        key: str = "",
        ttl: float | None = None,
        expires: float | None = None,
        connection: AsyncConnection | None = None,
    ) -> None:
        """Bind ``topic`` to ``exchange`` (see :meth:`squeal.Queue.bind`)."""
        await run(
            self.sync.bind,
            exchange,
            topic,
            key=key,
            ttl=ttl,
            expires=expires,
            connection=sync_connection(connection),
        )

    async def unbind(
        self,
        exchange: str,
        topic: str,
        *,
        key: str | None = None,
        connection: AsyncConnection | None = None,
    ) -> int:
        """Unbind ``topic`` from ``exchange`` (see :meth:`squeal.Queue.unbind`)."""
        return await run(
            self.sync.unbind, exchange, topic, key=key, connection=sync_connection(connection)
        )

    async def bindings(self, exchange: str | None = None) -> list[Binding]:
        """The live bindings (see :meth:`squeal.Queue.bindings`)."""
        return await run(self.sync.bindings, exchange)

    async def publish(
        self,
        payload: bytes,
        exchange: str,
        *,
        key: str | None = None,
        priority: int = 0,
        delay: float | None = None,
        ttl: float | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        connection: AsyncConnection | None = None,
    ) -> dict[str, int]:
        """Put a copy into every bound topic (see :meth:`squeal.Queue.publish`)."""
        return await run(
            self.sync.publish,
            payload,
            exchange,
            key=key,
            priority=priority,
            delay=delay,
            ttl=ttl,
            max_attempts=max_attempts,
            headers=headers,
            connection=sync_connection(connection),
        )

    async def workers(self) -> list[WorkerInfo]:
        """The running workers (see :meth:`squeal.Queue.workers`)."""
        return await run(self.sync.workers)

    async def paused(self) -> list[str]:
        """The paused topics (see :meth:`squeal.Queue.paused`)."""
        return await run(self.sync.paused)

    async def set_limit(
        self,
        topic: str,
        *,
        concurrency: int | None = UNSET,
        rate: int | None = UNSET,
        per: float | None = UNSET,
    ) -> Limit:
        """Limit a topic's deliveries everywhere (see :meth:`squeal.Queue.set_limit`)."""
        return await run(self.sync.set_limit, topic, concurrency=concurrency, rate=rate, per=per)

    async def limits(self) -> list[Limit]:
        """Every topic with a limit (see :meth:`squeal.Queue.limits`)."""
        return await run(self.sync.limits)

    async def schedule(
        self,
        name: str,
        *,
        topic: str,
        payload: bytes = b"",
        cron: str | None = None,
        every: float | None = None,
        priority: int = 0,
        timezone: str = "UTC",
    ) -> Schedule:
        """Define a recurring message (see :meth:`squeal.Queue.schedule`)."""
        return await run(
            self.sync.schedule,
            name,
            topic=topic,
            payload=payload,
            cron=cron,
            every=every,
            priority=priority,
            timezone=timezone,
        )

    async def unschedule(self, name: str) -> bool:
        """Delete a schedule (see :meth:`squeal.Queue.unschedule`)."""
        return await run(self.sync.unschedule, name)

    async def schedules(self) -> list[Schedule]:
        """Every schedule (see :meth:`squeal.Queue.schedules`)."""
        return await run(self.sync.schedules)

    async def run_schedules(self) -> int:
        """Put every due schedule's message (see :meth:`squeal.Queue.run_schedules`)."""
        return await run(self.sync.run_schedules)

    async def dedup_override(
        self, keys: Iterable[str], topic: str = "default", *, window: float | None
    ) -> None:
        """Change the dedup window of keys (see :meth:`squeal.Queue.dedup_override`)."""
        await run(self.sync.dedup_override, keys, topic, window=window)

    async def health(self) -> list[Finding]:
        """What needs an operator's attention (see :meth:`squeal.Queue.health`)."""
        return await run(self.sync.health)


class AsyncTopicLock:
    """An exclusive lease on a topic (see :class:`squeal.TopicLock`), released with ``await``;
    ``async with lock:`` releases it at the end of the block."""

    __slots__ = ("_lock", "queue")

    def __init__(self, lock: TopicLock, queue: AsyncQueue) -> None:
        self._lock = lock
        #: The queue that acquired the lock.
        self.queue = queue

    @property
    def topic(self) -> str:
        """The topic held."""
        return self._lock.topic

    @property
    def token(self) -> int:
        """The fencing token of this lock."""
        return self._lock.token

    @property
    def expires_at(self) -> datetime:
        """When the lock runs out unless touched (UTC)."""
        return self._lock.expires_at

    @property
    def released(self) -> bool:
        """True once this holder released it."""
        return self._lock.released

    def __repr__(self) -> str:
        return repr(self._lock).replace("<TopicLock", "<AsyncTopicLock", 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncTopicLock) and other._lock is self._lock

    def __hash__(self) -> int:
        return id(self._lock)

    async def release(self) -> None:
        """Give the topic up (see :meth:`squeal.TopicLock.release`)."""
        await run(self._lock.release)

    async def touch(self, timeout: float | None = None) -> None:
        """Extend the lock (see :meth:`squeal.TopicLock.touch`)."""
        await run(self._lock.touch, timeout)

    async def __aenter__(self) -> AsyncTopicLock:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await run(self._lock.__exit__, exc_type, exc, tb)


__all__ = ["AsyncQueue", "AsyncTopicLock"]
