"""Topic locks: an exclusive, expiring lease on one topic, for serial processing per key.

Like SQS FIFO message groups: a consumer that holds a topic's lock is the only one working on
that topic until it releases the lock or the lock runs out. Locks are cooperative: ``get``
does not look at them, so a consumer should only ``get`` from topics whose lock it holds.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, Protocol

from squeal import log
from squeal import validation as check
from squeal.dialects.locking import Lease, Locking
from squeal.errors import AlreadyReleased, LeaseLost
from squeal.executor import Executor
from squeal.message import from_ms
from squeal.schema import text_value

if TYPE_CHECKING:
    from squeal.session import Session


class LockOwner(Protocol):
    """What a topic lock needs of the queue that acquired it (a :class:`~squeal.Queue`)."""

    @property
    def topic_lock_timeout(self) -> float:
        """Seconds a lock lasts unless touched."""
        ...


#: Candidate queries one acquire runs before it gives up on a crowd of racing takers.
_ROUNDS = 4


class TopicLock:
    """An exclusive lease on ``topic`` until ``expires_at``, proven by ``token``.

    :meth:`touch` extends it, :meth:`release` gives it up. Used as a context manager, leaving
    the block releases it (unless it was released already).
    """

    __slots__ = ("_locks", "_released", "expires_at", "queue", "token", "topic")

    def __init__(self, locks: TopicLocks, *, topic: str, token: int, expires_at: datetime) -> None:
        self._locks = locks
        #: The queue that acquired the lock.
        self.queue = locks.owner
        self.topic = topic
        self.token = token
        self.expires_at = expires_at
        self._released = False

    def __repr__(self) -> str:
        state = "released" if self._released else f"until {self.expires_at.isoformat()}"
        return f"<TopicLock topic={self.topic!r} {state}>"

    @property
    def released(self) -> bool:
        """True once this holder released the lock."""
        return self._released

    def release(self) -> None:
        """Give the topic up: another consumer may take it at once.

        Raises:
            AlreadyReleased: this holder released it before (an AlreadySettled).
            LeaseLost: the lock ran out and another consumer took the topic over; nothing
                changed.
        """
        if self._released:
            raise AlreadyReleased(f"the lock on topic {self.topic!r} was already released")
        self._locks.release(self)

    def touch(self, timeout: float | None = None) -> None:
        """Extend the lock to ``timeout`` seconds from now (default: ``topic_lock_timeout``).

        Raises:
            AlreadyReleased: this holder released it before.
            LeaseLost: the lock ran out and another consumer took the topic over.
        """
        seconds = (
            self.queue.topic_lock_timeout
            if timeout is None
            else check.seconds(timeout, "timeout", positive=True)
        )
        if self._released:
            raise AlreadyReleased(f"the lock on topic {self.topic!r} was already released")
        self._locks.touch(self, check.to_ms(seconds))

    def __enter__(self) -> TopicLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._released:
            self.release()


class TopicLocks:
    """One queue's topic locks: acquiring, fencing, and the ones this process holds."""

    def __init__(self, owner: LockOwner, session: Session, locking: Locking) -> None:
        self.owner = owner
        self._session = session
        self._locking = locking
        self._held: dict[int, TopicLock] = {}
        self._guard = threading.Lock()
        #: The topic this object acquired last: the next acquire starts after it.
        self._last = ""

    def acquire(self, exclude: Iterable[str], max_attempts: int) -> TopicLock | None:
        """Lock a free topic with a ready message, or return None. Topics are tried in name
        order, starting after the one this object acquired last (round robin)."""
        skip = sorted(check.texts(exclude, "exclude"))
        session, locking = self._session, self._locking
        ttl_ms = check.to_ms(self.owner.topic_lock_timeout)
        token = secrets.randbits(63)
        params = {"attempts_limit": max_attempts, **({"exclude": skip} if skip else {})}
        stmt = locking.candidates(excluding=bool(skip))
        for _ in range(_ROUNDS):
            params["after"] = self._last
            rows = session.read(lambda ex: ex.rows(stmt, params))
            if not rows:
                return None
            for row in rows:
                topic = text_value(row[0])

                def take(ex: Executor, topic: str = topic) -> Lease | None:
                    return locking.take(ex, topic, token, ttl_ms)

                lease = session.write(take, atomic=locking.take_is_atomic)
                if lease is not None:
                    return self._granted(topic, lease)
        return None

    def _granted(self, topic: str, lease: Lease) -> TopicLock:
        lock = TopicLock(self, topic=topic, token=lease.token, expires_at=from_ms(lease.expires_at))
        with self._guard:
            self._held[id(lock)] = lock
            self._last = topic
        log.event("lock_acquired", topic=topic, token=lease.token)
        return lock

    def release(self, lock: TopicLock) -> None:
        """Delete ``lock``'s row if its token still holds the topic, else raise LeaseLost."""
        params = {"lock_topic": lock.topic, "lock_token": lock.token}
        done = self._session.write(lambda ex: ex.count(self._locking.release, params))
        self._forget(lock)
        if done != 1:
            self._lost(lock, "release")
        lock._released = True
        log.event("lock_released", topic=lock.topic, token=lock.token)

    def touch(self, lock: TopicLock, ttl_ms: int) -> None:
        """Extend ``lock`` to now + ``ttl_ms`` if its token still holds the topic."""
        locking = self._locking
        expires = self._session.write(
            lambda ex: locking.touch(ex, lock.topic, lock.token, ttl_ms),
            atomic=locking.touch_is_atomic,
        )
        if expires is None:
            self._forget(lock)
            self._lost(lock, "touch")
        lock.expires_at = from_ms(expires)

    def _lost(self, lock: TopicLock, operation: str) -> NoReturn:
        log.event("lock_lost", log.NOTABLE, operation=operation, topic=lock.topic, token=lock.token)
        raise LeaseLost(
            f"topic {lock.topic!r}: lock lost (it ran out and another consumer took it over)"
        )

    def _forget(self, lock: TopicLock) -> None:
        with self._guard:
            self._held.pop(id(lock), None)

    def held(self) -> list[TopicLock]:
        """The locks acquired here and not released (nor found lost), oldest first."""
        with self._guard:
            return list(self._held.values())

    def release_all(self) -> int:
        """Release every held lock, skipping lost ones; how many were released."""
        released = 0
        for lock in self.held():
            try:
                lock.release()
            except (LeaseLost, AlreadyReleased):
                continue
            released += 1
        return released


__all__ = ["TopicLock", "TopicLocks"]
