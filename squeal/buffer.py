"""Buffer: a topic-fair consumer that works each topic under its lock, a quota at a time.

    with Buffer(queue, default_topic_quota=2) as buffer:
        for message in buffer:
            handle(message)
            message.ack()

A Buffer holds topic locks (:meth:`Queue.acquire_topic`), so no other Buffer works the same
topic meanwhile. Per held topic it hands out at most the topic's quota of messages at once,
from a prefetch of ``extra_buffer_multiplier`` quotas claimed in one batch, and it serves its
topics in turn: the one served longest ago first. A topic that has nothing left, or that nobody
took a message from for ``max_topic_idle`` seconds, is dropped: its prefetched messages are
released (the claim is not counted as an attempt) and its lock is released. When no held topic
can serve, the Buffer locks another one: the next free topic with a ready message.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from squeal import log
from squeal import validation as check
from squeal.bridge import sleep as pause_for
from squeal.errors import (
    AlreadyReleased,
    AlreadySettled,
    InvalidType,
    LeaseLost,
    ValidationError,
)
from squeal.message import Message
from squeal.queue import Queue
from squeal.topic_lock import TopicLock

#: Fraction of a lease after which the Buffer renews it on its own (lock) or before handing
#: a prefetched message out (message), so a live holder never loses either.
_RENEW_LOCK_AFTER = 1 / 3
_RENEW_MESSAGE_AFTER = 1 / 2
#: After a claim found a topic empty while some of its messages are still being processed, the
#: topic is not asked again for this long (their nacks or releases may refill it).
_DRY_PAUSE = 0.5
#: Topics one ``get`` tries to lock before it gives up (each may turn out empty by then).
_ACQUIRE_TRIES = 3


@dataclass
class _Held:
    """One topic this Buffer holds the lock of."""

    lock: TopicLock
    #: When it last handed a message out (serving order: longest ago first).
    last_served: float
    #: When it last handed a message out or one of its messages was settled (idle drops).
    last_active: float
    lock_renewed: float
    #: Claimed but not handed out yet, with the (monotonic) time each was claimed or touched.
    prefetched: deque[tuple[Message, float]] = field(default_factory=deque)
    dry_until: float = 0.0


class Buffer:
    """A topic-fair, quota-limited consumer of ``queue`` built on topic locks.

    Args:
        queue: the queue to consume.
        default_topic_quota: messages of one topic handed out and not yet settled (or
            half-acked) at any moment.
        extra_buffer_multiplier: a topic's prefetch is this many quotas, claimed in one batch.
        max_topic_idle: seconds a held topic with nothing in processing may go without a
            delivery before it is dropped (its prefetch released, its lock released).
        topic_quotas: quotas of particular topics, instead of the default. The dict is kept
            (``buffer.topic_quotas``), so a change applies from the next delivery.

    Not safe to share between threads, except that the messages it hands out may be settled,
    half-acked and touched from any thread.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        default_topic_quota: int = 1,
        extra_buffer_multiplier: int = 2,
        max_topic_idle: float = 60.0,
        topic_quotas: Mapping[str, int] | None = None,
    ) -> None:
        if not isinstance(queue, Queue):
            hint = " (use squeal.aio.AsyncBuffer)" if type(queue).__name__ == "AsyncQueue" else ""
            raise InvalidType(f"queue must be a squeal Queue, not {type(queue).__name__}{hint}")
        self.queue = queue
        self.default_topic_quota = check.count(default_topic_quota, "default_topic_quota")
        self.extra_buffer_multiplier = check.count(
            extra_buffer_multiplier, "extra_buffer_multiplier"
        )
        self.max_topic_idle = check.seconds(max_topic_idle, "max_topic_idle")
        self.topic_quotas: dict[str, int] = {
            check.text(topic, "topic_quotas topic"): check.count(quota, f"quota of {topic!r}")
            for topic, quota in (topic_quotas or {}).items()
        }
        self._held: dict[str, _Held] = {}
        #: Handed out and not settled (half-acked ones included), by message id.
        self._outstanding: dict[int, Message] = {}
        #: Per topic, the ids that count against its quota (handed out, not half-acked).
        self._processing: dict[str, set[int]] = {}
        self._guard = threading.RLock()
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"topics={sorted(self._held)}"
        return f"<Buffer {state} outstanding={len(self._outstanding)}>"

    # -- consuming ------------------------------------------------------------------------------

    def get(self, *, wait: float = 0.0) -> Message | None:
        """The next message a held topic may hand out under its quota (locking another topic
        when none may): the topic served longest ago first.

        Args:
            wait: seconds to keep trying (polling) when nothing is available (0: return at once).

        Returns:
            A leased message (settle it as usual), or None when nothing was available.

        Raises:
            ValueError: the Buffer is closed.
        """
        deadline = time.monotonic() + check.seconds(wait, "wait")
        pause = 0.05
        while True:
            message = self._next()
            remaining = deadline - time.monotonic()
            if message is not None or remaining <= 0:
                return message
            pause_for(min(pause, remaining))
            pause = min(pause * 2, 1.0)

    def __iter__(self) -> Iterator[Message]:
        """Yield messages until none is available."""
        while (message := self.get()) is not None:
            yield message

    def half_ack(self, message: Message) -> None:
        """Free ``message``'s quota slot while it stays leased: the caller still settles it.

        For the part of the work that needs the per-topic limit done (say, the download),
        before the rest (say, parsing). A message not counted any more (settled, half-acked,
        or not from this Buffer) is left as it is.
        """
        if not isinstance(message, Message):
            raise InvalidType(f"expected a Message, not {type(message).__name__}")
        with self._guard:
            if self._outstanding.get(message.id) is message:
                self._uncount(message)

    def touch(self) -> None:
        """Extend every held topic lock and the lease of every message held or handed out.

        Call it at least every third of the lock and visibility timeouts while a long job runs
        without calling :meth:`get`. Topics idle longer than ``max_topic_idle`` are dropped
        here too. A message whose lease turns out lost stops counting against its quota.

        Raises:
            ValueError: the Buffer is closed.
        """
        with self._guard:
            self._check_open()
            now = time.monotonic()
            for held in list(self._held.values()):
                if not self._renew_lock(held, now, force=True):
                    continue
                if self._idle(held, now):
                    self._drop(held, "idle")
            prefetched = [m for held in self._held.values() for m, _ in held.prefetched]
            self._touch_all([*prefetched, *self._outstanding.values()])
            for held in self._held.values():
                held.prefetched = deque((m, now) for m, _ in held.prefetched)

    def held_topics(self) -> list[str]:
        """The topics whose locks this Buffer holds, in the order it took them."""
        with self._guard:
            return list(self._held)

    def close(self) -> None:
        """Release everything: prefetched messages (no attempt counted), then the locks.

        Messages handed out and not settled yet are nacked, as leaving a message's own ``with``
        block does (not those whose settle is pending in the caller's transaction). Closing twice
        does nothing.
        """
        with self._guard:
            if self._closed:
                return
            self._closed = True
            for message in list(self._outstanding.values()):
                if message.pending:  # settled in the caller's transaction: not ours to undo
                    self._outstanding.pop(message.id, None)
                    continue
                try:
                    message.nack()
                except (LeaseLost, AlreadySettled):
                    self._outstanding.pop(message.id, None)
            for held in list(self._held.values()):
                self._drop(held, "closed")
            self._processing.clear()

    def __enter__(self) -> Buffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what get does --------------------------------------------------------------------------

    def _next(self) -> Message | None:
        with self._guard:
            self._check_open()
            # Quota held by settles pending in callers' transactions is freed once the
            # database shows they committed.
            pending = [m for m in self._outstanding.values() if m.pending]
            if pending:
                self.queue._resolve(pending)
            now = time.monotonic()
            for held in list(self._held.values()):
                if self._renew_lock(held, now):
                    self._refresh(held, now)
            return self._serve(now) or self._take_topic(now)

    def _refresh(self, held: _Held, now: float) -> None:
        """Drop ``held`` if idle; top its prefetch up when it may serve; drop it if empty."""
        if self._idle(held, now):
            self._drop(held, "idle")
            return
        if not held.prefetched and self._allowed(held.lock.topic) > 0 and now >= held.dry_until:
            self._claim(held, now)
        if not held.prefetched and not self._processing.get(held.lock.topic):
            self._drop(held, "empty")

    def _serve(self, now: float) -> Message | None:
        """Hand out the next message of the held topic served longest ago that may serve."""
        while True:
            ready = [
                h for h in self._held.values() if h.prefetched and self._allowed(h.lock.topic) > 0
            ]
            if not ready:
                return None
            held = min(ready, key=lambda h: h.last_served)
            message, claimed = held.prefetched.popleft()
            if now - claimed >= self.queue.visibility_timeout * _RENEW_MESSAGE_AFTER:
                try:
                    message.touch()
                except LeaseLost:
                    continue  # it sat here past its lease and someone else took it
            held.last_served = held.last_active = now
            topic = held.lock.topic
            self._processing.setdefault(topic, set()).add(message.id)
            self._outstanding[message.id] = message
            message._on_settle = self._settled
            return message

    def _take_topic(self, now: float) -> Message | None:
        """Lock a new topic (the next free one with a ready message) and serve from it."""
        tried: set[str] = set()
        for _ in range(_ACQUIRE_TRIES):
            lock = self.queue.acquire_topic(exclude={*self._held, *tried})
            if lock is None:
                return None
            tried.add(lock.topic)
            held = _Held(lock, last_served=now, last_active=now, lock_renewed=now)
            self._held[lock.topic] = held
            self._claim(held, now)
            log.event("buffer_topic_taken", topic=lock.topic, prefetched=len(held.prefetched))
            if held.prefetched:
                return self._serve(now)
            self._drop(held, "empty")
        return None

    def _claim(self, held: _Held, now: float) -> None:
        topic = held.lock.topic
        wanted = self.extra_buffer_multiplier * self._quota(topic)
        claimed = self.queue.get_many(topic, min(wanted, 10_000))
        held.prefetched.extend((m, now) for m in claimed)
        if not claimed:
            held.dry_until = now + _DRY_PAUSE

    # -- topics ---------------------------------------------------------------------------------

    def _quota(self, topic: str) -> int:
        return self.topic_quotas.get(topic, self.default_topic_quota)

    def _allowed(self, topic: str) -> int:
        return self._quota(topic) - len(self._processing.get(topic, ()))

    def _idle(self, held: _Held, now: float) -> bool:
        busy = bool(self._processing.get(held.lock.topic))
        return not busy and now - held.last_active > self.max_topic_idle

    def _renew_lock(self, held: _Held, now: float, *, force: bool = False) -> bool:
        """Renew ``held``'s lock once a third of it ran out (``force``: now); False if lost."""
        due = now - held.lock_renewed >= self.queue.topic_lock_timeout * _RENEW_LOCK_AFTER
        if not (due or force):
            return True
        try:
            held.lock.touch()
        except (LeaseLost, AlreadyReleased):
            # Somebody else works the topic now: give its messages back and stop serving it.
            self._forget(held, "lock_lost")
            return False
        held.lock_renewed = now
        return True

    def _drop(self, held: _Held, reason: str) -> None:
        """Give ``held``'s prefetched messages back, then its lock."""
        released = self._forget(held, reason)
        # A lock that ran out and was taken over (or was released by hand) is not ours to release.
        with contextlib.suppress(LeaseLost, AlreadyReleased):
            held.lock.release()
        log.event("buffer_topic_dropped", topic=held.lock.topic, reason=reason, released=released)

    def _forget(self, held: _Held, reason: str) -> int:
        """Release ``held``'s prefetched messages (the claim not counted) and stop holding it."""
        del self._held[held.lock.topic]
        released = 0
        while held.prefetched:
            message, _ = held.prefetched.popleft()
            try:
                message.release()
            except LeaseLost:
                continue  # its lease ran out and someone else claimed it meanwhile
            released += 1
        if reason == "lock_lost":
            log.event("buffer_topic_lost", topic=held.lock.topic, released=released)
        return released

    # -- messages -------------------------------------------------------------------------------

    def _settled(self, message: Message) -> None:
        """Hook run by a handed-out message once it is acked, nacked or released."""
        with self._guard:
            if self._outstanding.get(message.id) is message:
                self._uncount(message)
                del self._outstanding[message.id]
                held = self._held.get(message.topic)
                if held is not None:
                    held.last_active = time.monotonic()

    def _uncount(self, message: Message) -> None:
        ids = self._processing.get(message.topic)
        if ids is not None:
            ids.discard(message.id)
            if not ids:
                del self._processing[message.topic]

    def _touch_all(self, messages: list[Message]) -> None:
        """Touch ``messages``; those whose lease is lost are forgotten, the rest extended.
        A message whose settle is pending in the caller's transaction is left alone (its row
        may be locked by that transaction)."""
        messages = [m for m in messages if not m.pending]
        while messages:
            try:
                self.queue.touch_many(messages)
            except AlreadySettled:
                pass  # settled on another thread meanwhile: its hook is waiting for the guard
            except LeaseLost as lost:
                if lost.message_id is None:
                    raise
                self._lost_message(lost.message_id)
            else:
                return
            messages = [m for m in messages if not m.settled and self._holds(m)]

    def _holds(self, message: Message) -> bool:
        held = self._held.get(message.topic)
        prefetched = held is not None and any(m is message for m, _ in held.prefetched)
        return prefetched or self._outstanding.get(message.id) is message

    def _lost_message(self, message_id: int) -> None:
        for held in self._held.values():
            held.prefetched = deque((m, t) for m, t in held.prefetched if m.id != message_id)
        message = self._outstanding.pop(message_id, None)
        if message is not None:
            self._uncount(message)
            message._on_settle = None

    def _check_open(self) -> None:
        if self._closed:
            raise ValidationError("this Buffer is closed")


__all__ = ["Buffer"]
