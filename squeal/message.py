"""Message: one leased message and the handle to settle it."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Protocol

import sqlalchemy as sa

from squeal import validation as check
from squeal.errors import AlreadySettled, InvalidType


class Settler(Protocol):
    """What a leased message asks of the queue that leased it (the queue gives it one)."""

    def ack(self, messages: Sequence[Message], connection: sa.Connection | None) -> None:
        """Delete ``messages`` if their leases still hold (in ``connection``'s transaction)."""

    def nack(
        self,
        messages: Sequence[Message],
        delay: float | None,
        connection: sa.Connection | None,
        error: str | None = None,
    ) -> None:
        """Count a failed attempt: redeliver after ``delay`` (None: backoff), or bury; keep
        ``error`` as the messages' last error."""

    def release(self, messages: Sequence[Message], connection: sa.Connection | None) -> None:
        """Give ``messages`` back unprocessed."""

    def resolve(self, messages: Sequence[Message]) -> None:
        """Settle the pending ``messages`` whose leases the database shows are gone."""

    def touch(self, messages: Sequence[Message], visibility_timeout: float | None) -> None:
        """Extend the leases."""


#: The most characters of a nack's error a message keeps (longer ones are cut, marked with …).
ERROR_LIMIT = 2000


def error_text(error: BaseException | str | None) -> str | None:
    """What a nack's ``error`` stores: an exception's type and message, or the text, cut."""
    if error is None:
        return None
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    elif isinstance(error, str):
        text = error
    else:
        raise InvalidType(f"error must be an exception or a str, not {type(error).__name__}")
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 1] + "…"


def parse_headers(stored: str | None) -> dict[str, str]:
    """Headers as stored (JSON text, or None) to a dict."""
    if stored is None:
        return {}
    found: dict[str, str] = json.loads(stored)
    return found


def from_ms(ms: int) -> datetime:
    """Database milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class Message:
    """A message leased to this consumer until its visibility timeout runs out.

    Settle it once with :meth:`ack`, :meth:`nack` or :meth:`release`; :meth:`touch` extends the
    lease. Used as a context manager, leaving the block without settling it nacks it.

    A settle with ``connection=`` runs in the caller's transaction, whose outcome squeal does
    not hear of: the handle is then :attr:`pending`. The database tells the rest when the
    handle is used again: after a commit a second settle raises AlreadySettled; after a
    rollback the message is still leased to this handle, and settling it again works.
    """

    __slots__ = (
        "_enqueued_ms",
        "_headers",
        "_is_settled",
        "_on_settle",
        "_pending",
        "_settler",
        "attempts",
        "id",
        "lease_token",
        "max_attempts",
        "payload",
        "priority",
        "topic",
    )

    def __init__(  # noqa: PLR0917 - positional: a get_many of 100 builds 100 (twice as fast)
        self,
        settler: Settler,
        id: int,
        topic: str,
        payload: bytes,
        priority: int,
        attempts: int,
        enqueued_ms: int,
        lease_token: int,
        max_attempts: int | None = None,
        headers: str | None = None,
    ) -> None:
        self._settler = settler
        #: Called once when the handle becomes settled (a Buffer frees its quota slot).
        self._on_settle: Callable[[Message], None] | None = None
        self._is_settled = False  # not through the setter: nothing to tell yet
        self._pending = False
        self.id = id
        self.topic = topic
        self.payload = payload
        self.priority = priority
        self.attempts = attempts
        self._enqueued_ms = enqueued_ms
        self.lease_token = lease_token
        #: Deliveries before it dies, if its put gave its own (None: the queue's).
        self.max_attempts = max_attempts
        self._headers = headers

    @property
    def headers(self) -> dict[str, str]:
        """The headers its put gave (a new dict each time; empty if none)."""
        return parse_headers(self._headers)

    @property
    def enqueued_at(self) -> datetime:
        """When the message was put (UTC, the database's clock; made when first read)."""
        return from_ms(self._enqueued_ms)

    def __repr__(self) -> str:
        return (
            f"<Message id={self.id} topic={self.topic!r} priority={self.priority} "
            f"attempts={self.attempts} bytes={len(self.payload)}>"
        )

    @property
    def settled(self) -> bool:
        """True once this consumer acked, nacked or released the message (for a settle in the
        caller's transaction: once squeal learned that the transaction committed)."""
        return self._settled

    @property
    def pending(self) -> bool:
        """True after a settle in the caller's transaction (``connection=``) until squeal
        learns what became of it: when the handle is settled again, or a Buffer asks."""
        return self._pending and not self._is_settled

    @property
    def _settled(self) -> bool:
        return self._is_settled

    @_settled.setter
    def _settled(self, value: bool) -> None:
        # Every way of settling (these methods, Queue.ack_many / nack_many) ends here, so the
        # watcher hears of it exactly once, and only after the database agreed.
        self._is_settled = value
        if value and self._on_settle is not None:
            watcher, self._on_settle = self._on_settle, None
            watcher(self)

    def _settle(self) -> None:
        if self._settled:
            raise AlreadySettled(f"message {self.id} was already acked, nacked or released")
        if self._pending:
            # What became of the settle in the caller's transaction: the database decides.
            self._settler.resolve([self])
            if self._settled:
                raise AlreadySettled(
                    f"message {self.id} was settled in the caller's transaction, which committed"
                )
            self._pending = False  # rolled back: still leased to this handle

    def _done(self, connection: sa.Connection | None) -> None:
        """After a settle: settled, or pending on the caller's transaction."""
        if connection is None:
            self._settled = True
        else:
            self._pending = True

    def ack(self, *, connection: sa.Connection | None = None) -> None:
        """Mark the message done: it is deleted.

        Args:
            connection: a Connection inside the caller's transaction; the ack then commits or
                rolls back with the caller's own writes (exactly-once effects), and the handle
                is :attr:`pending` until squeal learns which.

        Raises:
            LeaseLost: another consumer re-claimed the message, or it is gone; nothing changed.
            AlreadySettled: this handle was already settled.
        """
        conn = check.connection(connection)
        self._settle()
        self._settler.ack([self], conn)
        self._done(conn)

    def nack(
        self,
        *,
        delay: float | None = None,
        error: BaseException | str | None = None,
        connection: sa.Connection | None = None,
    ) -> None:
        """Mark the attempt failed: redelivered after backoff, or dead after ``max_attempts``.

        Args:
            delay: seconds before redelivery instead of the queue's exponential backoff.
            error: why it failed (an exception: its type and message), kept as the message's
                last error and shown with it if it dies (:meth:`Queue.dead`), cut to
                :data:`ERROR_LIMIT` characters.
            connection: a Connection inside the caller's transaction (as for :meth:`ack`).

        Raises:
            LeaseLost: the lease was taken over or the message is gone; nothing changed.
            AlreadySettled: this handle was already settled.
        """
        conn = check.connection(connection)
        text = error_text(error)
        self._settle()
        self._settler.nack([self], delay, conn, text)
        self._done(conn)

    def release(self, *, connection: sa.Connection | None = None) -> None:
        """Give the message back unprocessed: ready now, and this attempt is not counted.

        Args:
            connection: a Connection inside the caller's transaction (as for :meth:`ack`).

        Raises:
            LeaseLost: the lease was taken over or the message is gone; nothing changed.
            AlreadySettled: this handle was already settled.
        """
        conn = check.connection(connection)
        self._settle()
        self._settler.release([self], conn)
        self._done(conn)

    def touch(self, visibility_timeout: float | None = None) -> None:
        """Extend the lease to ``visibility_timeout`` seconds from now (default: the queue's).

        Raises:
            LeaseLost: the lease was taken over or the message is gone.
            AlreadySettled: this handle was already settled.
        """
        self._settle()
        self._settler.touch([self], visibility_timeout)

    def __enter__(self) -> Message:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A settle pending in the caller's transaction is not undone here: that transaction may
        # still be open, and a nack would wait for its own row lock.
        if not self._settled and not self._pending:
            self.nack()


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored, read without leasing it."""

    id: int
    topic: str
    payload: bytes
    priority: int
    attempts: int
    enqueued_at: datetime
    #: The headers its put gave (empty if none).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeadMessage(StoredMessage):
    """A message that died: it is never delivered again unless redriven."""

    #: When it died (None for one that died before squeal recorded it, version 0.1).
    died_at: datetime | None = None
    #: Why: ``"failed"`` (a nack on its last attempt), ``"lease expired"`` (its lease ran out
    #: on its last attempt), ``"expired"`` (its ttl ran out before a claim); None as above.
    reason: str | None = None
    #: The error its last nack gave (``nack(error=...)``; workers give the handler's), if any.
    last_error: str | None = None


class PeekedMessage(StoredMessage):
    """A ready message seen by :meth:`Queue.peek`, without claiming it."""


@dataclass(frozen=True)
class TopicStats:
    """Counts for one topic at one moment of the database clock."""

    ready: int
    delayed: int
    leased: int
    dead: int
    oldest_ready_age: float | None
    """Seconds since the oldest ready message was enqueued; None when nothing is ready."""
    paused: bool = False
    """Whether the topic is paused (``Queue.pause``): its messages are not delivered."""
    estimated: bool = False
    """Whether the counts are lower bounds: ``Queue.stats(limit=...)`` found a state holding
    more messages than the limit and counted it as the limit (into ``ready``, ``delayed`` or
    ``dead``); ``oldest_ready_age`` is then that of the next message to be delivered."""

    @property
    def total(self) -> int:
        """Every message in the topic, whatever its state."""
        return self.ready + self.delayed + self.leased + self.dead
