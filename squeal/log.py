"""squeal's structured log events on the ``squeal`` logger.

No handler is installed (not even a NullHandler): with no logging configured, Python's
last-resort handler prints WARNING and above to stderr, so a failure is never silent, and
normal operation logs nothing at that level. The events below are DEBUG and INFO.

Every event is one record whose message is the event name followed by its fields, and whose
fields are also attributes of the record (``extra=``): ``record.squeal_event`` is the name and
``record.topic``, ``record.message_id`` and so on carry the values. Payload bytes are never
logged. docs/logging.md lists the events and their fields.

The helpers below build their fields only when the logger is enabled for the event's level, so
the hot path pays one level check when logging is off.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Leased(Protocol):
    """What the log reports of a leased message."""

    @property
    def id(self) -> int: ...

    @property
    def topic(self) -> str: ...

    @property
    def attempts(self) -> int: ...

    @property
    def max_attempts(self) -> int | None:
        """The message's own limit (a put's), or None for the queue's."""
        ...


logger = logging.getLogger("squeal")

DEBUG = logging.DEBUG
WARNING = logging.WARNING
#: Level of the events that change a message's fate outside the normal flow.
NOTABLE = logging.INFO


def event(name: str, level: int = DEBUG, /, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (cheap when the level is off)."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join(f"{key}={value!r}" for key, value in fields.items())
    logger.log(level, "%s %s", name, text, extra={"squeal_event": name, **fields})


def put(topic: str, ids: Sequence[int | None], keys: Sequence[str | None], in_caller: bool) -> None:
    """``put`` for one put or put_many, and ``dedup_blocked`` for the keys that were dropped."""
    if not logger.isEnabledFor(DEBUG):
        return
    accepted = [i for i in ids if i is not None]
    blocked = [k for i, k in zip(ids, keys, strict=True) if i is None and k is not None]
    event(
        "put",
        topic=topic,
        message_ids=accepted,
        count=len(accepted),
        deduplicated=len(ids) - len(accepted),
        caller_transaction=in_caller,
    )
    if blocked:
        event("dedup_blocked", topic=topic, dedup_keys=blocked, count=len(blocked))


def claimed(topic: str, messages: Sequence[Leased]) -> None:
    """``claim`` for a get or get_many that leased something (empty polls are not logged)."""
    if messages and logger.isEnabledFor(DEBUG):
        event(
            "claim",
            topic=topic,
            message_ids=[m.id for m in messages],
            count=len(messages),
            attempts=[m.attempts for m in messages],
        )


def settled(name: str, messages: Sequence[Leased]) -> None:
    """``ack`` or ``release`` for a batch of messages, one event per topic."""
    if not logger.isEnabledFor(DEBUG):
        return
    for topic, group in _by_topic(messages).items():
        event(name, topic=topic, message_ids=[m.id for m in group], count=len(group))


def nacked(
    messages: Sequence[Leased], params: Sequence[Mapping[str, Any]], max_attempts: int
) -> None:
    """``nack`` per message (``params``: each one's ``delay_ms``), ``dead`` for the last try."""
    if not logger.isEnabledFor(NOTABLE):
        return
    every = logger.isEnabledFor(DEBUG)
    for msg, values in zip(messages, params, strict=True):
        delay_ms = values["delay_ms"]
        own = msg.max_attempts
        dead = msg.attempts >= (max_attempts if own is None else own)
        if every:
            event(
                "nack",
                topic=msg.topic,
                message_id=msg.id,
                attempts=msg.attempts,
                delay=None if dead else delay_ms / 1000,
                dead=dead,
            )
        if dead:
            event(
                "dead",
                NOTABLE,
                topic=msg.topic,
                message_id=msg.id,
                attempts=msg.attempts,
                reason="nack",
            )


def lease_lost(operation: str, messages: Sequence[Leased], message_id: int | None) -> None:
    """``lease_lost`` when ack, nack, release or touch raises LeaseLost."""
    if not logger.isEnabledFor(NOTABLE):
        return
    topic = next((m.topic for m in messages if m.id == message_id), None)
    event(
        "lease_lost",
        NOTABLE,
        operation=operation,
        topic=topic,
        message_id=message_id,
        count=len(messages),
    )


def _by_topic(messages: Sequence[Leased]) -> dict[str, list[Leased]]:
    groups: dict[str, list[Leased]] = {}
    for msg in messages:
        groups.setdefault(msg.topic, []).append(msg)
    return groups


__all__ = ["event", "logger"]
