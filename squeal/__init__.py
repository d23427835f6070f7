"""squeal: a message queue in the relational database you already run."""

from __future__ import annotations

from squeal.buffer import Buffer
from squeal.dialects.health import Finding
from squeal.errors import (
    AlreadyReleased,
    AlreadySettled,
    DatabaseBusy,
    DatabaseError,
    ForeignRevision,
    InvalidType,
    LeaseLost,
    ManagedElsewhere,
    OutcomeUnknown,
    PayloadTooLarge,
    PutOutcomeUnknown,
    SchemaError,
    SchemaMissing,
    SchemaOutOfDate,
    SquealError,
    UnsupportedDatabase,
    ValidationError,
)
from squeal.exchange import Binding
from squeal.limits import Limit
from squeal.message import DeadMessage, Message, PeekedMessage, TopicStats
from squeal.queue import Queue
from squeal.registry import WorkerInfo
from squeal.schedules import Schedule
from squeal.topic_lock import TopicLock
from squeal.version import __version__
from squeal.worker import Worker

__all__ = [
    "AlreadyReleased",
    "AlreadySettled",
    "Binding",
    "Buffer",
    "DatabaseBusy",
    "DatabaseError",
    "DeadMessage",
    "Finding",
    "ForeignRevision",
    "InvalidType",
    "LeaseLost",
    "Limit",
    "ManagedElsewhere",
    "Message",
    "OutcomeUnknown",
    "PayloadTooLarge",
    "PeekedMessage",
    "PutOutcomeUnknown",
    "Queue",
    "Schedule",
    "SchemaError",
    "SchemaMissing",
    "SchemaOutOfDate",
    "SquealError",
    "TopicLock",
    "TopicStats",
    "UnsupportedDatabase",
    "ValidationError",
    "Worker",
    "WorkerInfo",
    "__version__",
]
