"""A leased message, as an awaitable: each settle is the sync one, in the bridge."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncConnection

from squeal.aio.bridge import run, sync_connection
from squeal.errors import InvalidType
from squeal.message import Message


class AsyncMessage:
    """A message leased to this consumer (see :class:`squeal.Message`: same fields, same rules),
    settled with ``await``. Leaving an ``async with message:`` block without settling it nacks
    it."""

    __slots__ = ("_message",)

    def __init__(self, message: Message) -> None:
        self._message = message

    @property
    def id(self) -> int:
        """The message's id."""
        return self._message.id

    @property
    def topic(self) -> str:
        """Its topic."""
        return self._message.topic

    @property
    def payload(self) -> bytes:
        """Its payload."""
        return self._message.payload

    @property
    def priority(self) -> int:
        """Its priority (higher first)."""
        return self._message.priority

    @property
    def attempts(self) -> int:
        """Deliveries so far, this one included."""
        return self._message.attempts

    @property
    def headers(self) -> dict[str, str]:
        """The headers its put gave (see :attr:`squeal.Message.headers`)."""
        return self._message.headers

    @property
    def max_attempts(self) -> int | None:
        """Deliveries before it dies, if its put gave its own (None: the queue's)."""
        return self._message.max_attempts

    @property
    def lease_token(self) -> int:
        """The fencing token of this lease."""
        return self._message.lease_token

    @property
    def enqueued_at(self) -> datetime:
        """When it was put (UTC, the database's clock)."""
        return self._message.enqueued_at

    @property
    def settled(self) -> bool:
        """True once this consumer acked, nacked or released it."""
        return self._message.settled

    @property
    def pending(self) -> bool:
        """True after a settle in the caller's transaction until squeal learns its outcome."""
        return self._message.pending

    def __repr__(self) -> str:
        return repr(self._message).replace("<Message", "<AsyncMessage", 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncMessage) and other._message is self._message

    def __hash__(self) -> int:
        return id(self._message)

    async def ack(self, *, connection: AsyncConnection | None = None) -> None:
        """Mark the message done (see :meth:`squeal.Message.ack`)."""
        await run(self._message.ack, connection=sync_connection(connection))

    async def nack(
        self,
        *,
        delay: float | None = None,
        error: BaseException | str | None = None,
        connection: AsyncConnection | None = None,
    ) -> None:
        """Failed: retry after ``delay`` or the backoff (see :meth:`squeal.Message.nack`)."""
        await run(
            self._message.nack, delay=delay, error=error, connection=sync_connection(connection)
        )

    async def release(self, *, connection: AsyncConnection | None = None) -> None:
        """Give it back at once, this attempt uncounted (see :meth:`squeal.Message.release`)."""
        await run(self._message.release, connection=sync_connection(connection))

    async def touch(self, visibility_timeout: float | None = None) -> None:
        """Extend the lease (see :meth:`squeal.Message.touch`)."""
        await run(self._message.touch, visibility_timeout)

    async def __aenter__(self) -> AsyncMessage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await run(self._message.__exit__, exc_type, exc, tb)


def sync_messages(messages: Sequence[AsyncMessage]) -> list[Message]:
    """The sync handles of ``messages``, for a batch settle.

    Raises:
        InvalidType: something other than an AsyncMessage among them.
    """
    handles = []
    for message in messages:
        if not isinstance(message, AsyncMessage):
            raise InvalidType(f"expected AsyncMessage objects, got {type(message).__name__}")
        handles.append(message._message)
    return handles


__all__ = ["AsyncMessage", "sync_messages"]
