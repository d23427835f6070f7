"""Every exception squeal raises: one root; each docstring is the default message."""

from __future__ import annotations


class SquealError(Exception):
    """A squeal operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ValidationError(SquealError, ValueError):
    """An argument was rejected before any SQL ran."""


class InvalidType(SquealError, TypeError):
    """An argument has the wrong type; nothing was sent to the database."""


class PayloadTooLarge(ValidationError):
    """The payload is larger than the queue's max_payload_size."""


class LeaseLost(SquealError):
    """The message's lease was taken over by another consumer, or the message is gone.

    ``lost``: how many of the messages settled at once had lost their leases (1 for one)."""

    def __init__(
        self, message: str | None = None, *, message_id: int | None = None, lost: int = 1
    ) -> None:
        super().__init__(message)
        self.message_id = message_id
        self.lost = lost


class OutcomeUnknown(LeaseLost):
    """The connection was lost while an earlier try of this settlement may have committed,
    and after reconnecting its lease is gone: it took effect then, or the lease ran out and
    another consumer has the message. Either way it is no longer this consumer's."""


class AlreadySettled(SquealError, RuntimeError):
    """This message was already acked, nacked or released by this consumer."""


class AlreadyReleased(AlreadySettled):
    """This topic lock was already released by this holder."""


class SchemaError(SquealError):
    """squeal's tables are not at the revision this version of squeal needs."""

    def __init__(self, message: str | None = None, *, command: str = "") -> None:
        super().__init__(message)
        self.command = command


class SchemaMissing(SchemaError):
    """squeal's tables do not exist in this database."""


class SchemaOutOfDate(SchemaError):
    """squeal's tables are at another revision than this version of squeal needs."""


class ManagedElsewhere(SchemaError):
    """squeal's branch is recorded in the application's Alembic (integrated): migrate it there."""


class ForeignRevision(SchemaError):
    """A revision that is not squeal's sits in squeal's versions folder."""


class UnsupportedDatabase(SquealError):
    """This database or server version cannot run squeal."""


class DatabaseError(SquealError):
    """The database reported an error (bound parameters are never included in the text)."""

    def __init__(self, message: str | None = None, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class DatabaseBusy(DatabaseError):
    """The database stayed locked or deadlocked after squeal retried; try again later."""


class PutOutcomeUnknown(DatabaseError):
    """The connection was lost after a put was sent: it may or may not have been stored.

    squeal does not try such a put again, since a second try could store the message twice.
    Trying it again yourself is safe where a duplicate is (at-least-once), or with a
    ``dedup_key``: squeal tries those puts again by itself, the key catching a second copy.
    """


__all__ = [
    "AlreadyReleased",
    "AlreadySettled",
    "DatabaseBusy",
    "DatabaseError",
    "InvalidType",
    "LeaseLost",
    "OutcomeUnknown",
    "PayloadTooLarge",
    "PutOutcomeUnknown",
    "SchemaError",
    "SchemaMissing",
    "SchemaOutOfDate",
    "SquealError",
    "UnsupportedDatabase",
    "ValidationError",
]
