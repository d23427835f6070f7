"""What consumers do, as events for observers (``squeal.metrics`` is one; docs/metrics.md).

Every queue object of the process reports its claims (how many messages, how long the claim's
statements took: waiting for messages is not counted), settlements (acked, nacked, dead,
released) and lost leases; workers also report each handler's run. An observer receives them
on the thread (or, for squeal.aio, inside the greenlet bridge) that did the work, so its
methods must be quick and must not raise. With no observer installed, each event costs one
check of an empty tuple.

A settlement in the caller's transaction (``connection=``) is reported when squeal's statement
ran, not when the caller commits.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any, Protocol

from squeal.log import Leased

#: Outcomes of a settlement.
ACKED, NACKED, DEAD, RELEASED = "acked", "nacked", "dead", "released"


class Handled(Leased, Protocol):
    """What an observer sees of a message a worker handles."""

    @property
    def headers(self) -> dict[str, str]: ...


class Observer:
    """Receives consumers' events; every method does nothing unless overridden."""

    def claimed(self, topic: str, count: int, seconds: float) -> None:
        """A claim of ``topic`` leased ``count`` messages (0: it found none) in ``seconds``."""

    def settled(self, topic: str, outcome: str, count: int) -> None:
        """``count`` messages of ``topic`` were acked, nacked (to be retried), dead (nacked on
        their last attempt) or released."""

    def lease_lost(self, operation: str, topic: str | None) -> None:
        """An ack, nack, release or touch found a lease gone (``topic``: the first lost
        message's, if known)."""

    def handled(self, topic: str, seconds: float, failed: bool) -> None:
        """A worker's handler ran for ``seconds`` on a message of ``topic``, and returned or
        (``failed``) raised."""

    def stamped(self, topic: str, headers: dict[str, str]) -> dict[str, str]:
        """The headers a put of ``topic`` stores, given its own (e.g. with trace context
        added); return them (changed or not)."""
        return headers

    def handling(self, message: Handled) -> AbstractContextManager[None] | None:
        """A context to run a worker's handler of ``message`` in (e.g. a span), or None."""
        return None


class _Observers:
    """The process's observers: a tuple replaced whole, so events read it without a lock."""

    def __init__(self) -> None:
        self.now: tuple[Observer, ...] = ()
        self.guard = threading.Lock()


_registered = _Observers()


def add_observer(observer: Observer) -> None:
    """Send every consumer event of this process to ``observer`` too."""
    with _registered.guard:
        if observer not in _registered.now:
            _registered.now = (*_registered.now, observer)


def remove_observer(observer: Observer) -> None:
    """Stop sending events to ``observer`` (nothing if it was not added)."""
    with _registered.guard:
        _registered.now = tuple(o for o in _registered.now if o is not observer)


def claimed(topic: str, count: int, seconds: float) -> None:
    for observer in _registered.now:
        observer.claimed(topic, count, seconds)


def settled(outcome: str, messages: Sequence[Leased]) -> None:
    if not _registered.now or not messages:
        return
    for topic, count in _counted(messages).items():
        for observer in _registered.now:
            observer.settled(topic, outcome, count)


def nacked(messages: Sequence[Leased], max_attempts: int) -> None:
    """Nacks: ``dead`` for a message on its last attempt (its own limit, else the queue's)."""
    if not _registered.now:
        return
    dead = [m for m in messages if m.attempts >= _limit(m, max_attempts)]
    settled(DEAD, dead)
    settled(NACKED, [m for m in messages if m not in dead])


def lease_lost(operation: str, messages: Sequence[Leased], message_id: int | None) -> None:
    if not _registered.now:
        return
    topic = next((m.topic for m in messages if m.id == message_id), None)
    for observer in _registered.now:
        observer.lease_lost(operation, topic)


def handled(topic: str, seconds: float, failed: bool) -> None:
    for observer in _registered.now:
        observer.handled(topic, seconds, failed)


def stamped(topic: str, headers: object) -> object:
    """A put's headers after every observer stamped them (``headers`` itself without any)."""
    observers = _registered.now
    if not observers or not (headers is None or isinstance(headers, Mapping)):
        return headers  # (a wrong type is reported by validation)
    out = dict(headers or {})
    for observer in observers:
        out = observer.stamped(topic, out)
    return out


def handling(message: Handled) -> AbstractContextManager[Any]:
    """The context to run a worker's handler of ``message`` in: every observer's, entered
    now and exited with the block."""
    observers = _registered.now
    if not observers:
        return _NOTHING
    stack = ExitStack()
    for observer in observers:
        context = observer.handling(message)
        if context is not None:
            stack.enter_context(context)
    return stack


def active() -> bool:
    """Whether any observer is installed (skip measuring for none)."""
    return bool(_registered.now)


_NOTHING = nullcontext()


def _limit(message: Leased, max_attempts: int) -> int:
    own = message.max_attempts
    return max_attempts if own is None else own


def _counted(messages: Sequence[Leased]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in messages:
        counts[message.topic] = counts.get(message.topic, 0) + 1
    return counts


__all__ = [
    "ACKED",
    "DEAD",
    "NACKED",
    "RELEASED",
    "Handled",
    "Observer",
    "active",
    "add_observer",
    "claimed",
    "handled",
    "handling",
    "lease_lost",
    "nacked",
    "remove_observer",
    "settled",
    "stamped",
]
