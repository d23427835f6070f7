"""squeal's tables, declared once with SQLAlchemy Core; the migrations produce exactly these."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from squeal.errors import ValidationError

#: The Alembic revision this version of squeal needs (a test checks it is the migrations' head).
SCHEMA_REVISION = "squeal_0008_compat_0002"

#: Longest suffix squeal appends to a prefix (``_alembic_version_pkc``, Alembic's pk name).
_LONGEST_SUFFIX = len("_alembic_version_pkc")
#: PostgreSQL truncates identifiers longer than 63 bytes; MySQL refuses more than 64.
_MAX_IDENTIFIER = 63
MAX_PREFIX_LENGTH = _MAX_IDENTIFIER - _LONGEST_SUFFIX
_PREFIX_RE = re.compile(r"[a-z][a-z0-9_]*\Z")

#: Message states stored in ``state``. WAITING covers delayed, leased and backing-off messages;
#: the claim promotes a WAITING row whose ``visible_at`` has passed. Only WAITING rows and
#: READY rows with a ttl (their expiry) have a ``visible_at``: the due index orders them by it.
READY, WAITING, DEAD = 0, 1, 2


def in_state(column: sa.ColumnElement[Any], state: int) -> sa.ColumnElement[bool]:
    """``column = <state>`` with the state inlined, so query plans can see which one."""
    return column == sa.literal_column(str(int(state)), sa.SmallInteger())


MAX_TEXT_LENGTH = 255


def _identifier(value: object, what: str, pattern: re.Pattern[str], most: int, rule: str) -> str:
    """``value`` if it is a str matching ``pattern`` of at most ``most`` characters, else raise."""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a str, not {type(value).__name__}")
    if not pattern.match(value) or len(value) > most:
        raise ValidationError(f"{what} {value!r} must be 1-{most} characters of {rule}")
    return value


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a safe, untruncated identifier stem, else raise."""
    return _identifier(
        prefix, "prefix", _PREFIX_RE, MAX_PREFIX_LENGTH, "a-z, 0-9 and _, starting with a letter"
    )


#: A schema (MySQL/MariaDB: a database) name squeal accepts: a plain identifier.
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_SCHEMA_LENGTH = 63


def validate_schema(schema: object) -> str | None:
    """Return ``schema`` (None: the connection's default) if it is a plain identifier."""
    if schema is None:
        return None
    return _identifier(
        schema,
        "schema",
        _SCHEMA_RE,
        MAX_SCHEMA_LENGTH,
        "letters, digits and _, not starting with a digit",
    )


class ExactText(sa.types.TypeDecorator[str]):
    """A string of up to 255 characters that compares byte for byte on every database.

    MySQL/MariaDB collations fold case and ignore trailing spaces, so there it is stored as
    VARBINARY (4 bytes per character), which compares exactly.
    """

    impl = sa.String(MAX_TEXT_LENGTH)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return exact_text_type()

    def bind_processor(self, dialect: sa.Dialect) -> Any:
        # Text stored as text needs no conversion: no per-value call on the hot path.
        if not self._stored_as_bytes:
            return self.impl_instance.bind_processor(dialect)
        return super().bind_processor(dialect)

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if isinstance(value, str) and self._stored_as_bytes:
            return value.encode("utf-8")
        return value

    @property
    def _stored_as_bytes(self) -> bool:
        try:
            return self.impl_instance.python_type is bytes
        except NotImplementedError:
            return False

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> str | None:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value).decode("utf-8")
        return value  # type: ignore[no-any-return]


def text_value(value: Any) -> str:
    """A text column read through a raw driver as str (MySQL returns VARBINARY as bytes)."""
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def exact_text_type() -> sa.types.TypeEngine[Any]:
    """The storage type behind :class:`ExactText` (the migrations use it directly)."""
    return sa.String(MAX_TEXT_LENGTH).with_variant(
        mysql.VARBINARY(4 * MAX_TEXT_LENGTH), "mysql", "mariadb"
    )


def id_type() -> sa.types.TypeEngine[int]:
    """64-bit ids; SQLite's rowid alias must be spelled INTEGER."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def payload_type() -> sa.types.TypeEngine[bytes]:
    """Bytes up to at least 16 MiB everywhere (MySQL's BLOB stops at 64 KiB)."""
    return sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


@dataclass(frozen=True)
class Tables:
    """The tables of one prefix."""

    prefix: str
    #: The schema (MySQL/MariaDB: database) they live in; None: the connection's default.
    schema: str | None
    metadata: sa.MetaData
    message: sa.Table
    #: One row per topic held by a consumer (``Queue.acquire_topic``); the row outlives its
    #: lease until another consumer takes it over, so ``expires_at`` decides who holds it.
    topic_lock: sa.Table
    #: Dedup keys kept for a window (``Queue(dedup_window=...)``, ``Queue.dedup_override``):
    #: a key blocks puts of that key in its topic until ``expires_at``.
    dedup: sa.Table
    #: Flow control per topic (``Queue.pause``): a row exists once a topic was paused; the
    #: claim statements skip a topic whose row says ``paused``. The limit columns are for
    #: concurrency and rate limits.
    topic: sa.Table
    #: Recurring messages (``Queue.schedule``): each row's next run, claimed by a
    #: compare-and-set on ``next_run_at`` so a tick is enqueued once across processes.
    schedule: sa.Table
    #: One row per running worker (``Queue.workers``), heartbeated; a row whose
    #: ``expires_at`` passed belongs to a worker that died without leaving.
    worker: sa.Table
    #: Topics bound to exchanges (``Queue.bind``): a publish to an exchange puts a copy into
    #: every topic bound to it; a row whose ``expires_at`` passed is no longer bound.
    binding: sa.Table


def _dedup_unique(prefix: str, dialect: str | None) -> sa.Index | sa.UniqueConstraint:
    """At most one message per (topic, dedup key): on SQLite a unique index of the rows that
    have a key (squeal_0008); elsewhere a unique constraint (NULL keys never collide)."""
    name = f"{prefix}_message_dedup_uq"
    if dialect == "sqlite":
        where = sa.text("dedup_key IS NOT NULL")
        return sa.Index(name, "topic", "dedup_key", unique=True, sqlite_where=where)
    return sa.UniqueConstraint("topic", "dedup_key", name=name)


def build_tables(prefix: str, schema: str | None = None, dialect: str | None = None) -> Tables:
    """Declare squeal's tables for ``prefix`` (in ``schema``) on a fresh MetaData, as they
    are on ``dialect`` (its name; the dedup keys' uniqueness differs on SQLite)."""
    prefix = validate_prefix(prefix)
    schema = validate_schema(schema)
    metadata = sa.MetaData(schema=schema)
    message = sa.Table(
        f"{prefix}_message",
        metadata,
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("topic", ExactText(), nullable=False),
        # Stored negated so that "priority DESC, id ASC" is one ascending index walk on every
        # database (MariaDB before 10.8 ignores DESC in index definitions).
        sa.Column("neg_priority", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("visible_at", sa.BigInteger(), nullable=True),
        sa.Column("enqueued_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_token", sa.BigInteger(), nullable=True),
        sa.Column("dedup_key", ExactText(), nullable=True),
        sa.Column("payload", payload_type(), nullable=False),
        # A put's ttl: the time (epoch ms) by which a message never claimed must be, or it
        # dies; a READY row with one keeps it in visible_at too, so the due index finds it.
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        # A put's max_attempts, overriding the queue's for this message (None: the queue's).
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        # Why a dead message died, and when (set as it dies; docs/state_machine.md).
        sa.Column("died_at", sa.BigInteger(), nullable=True),
        sa.Column("dead_reason", sa.String(32), nullable=True),
        # The error the last nack gave (type and message, cut to ERROR_LIMIT characters).
        sa.Column("last_error", sa.Text(), nullable=True),
        # A put's headers: a JSON object of strings (NULL: none); squeal.validation.headers.
        sa.Column("headers", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"{prefix}_message_pk"),
        sa.Index(f"{prefix}_message_claim_ix", "topic", "state", "neg_priority", "id"),
        # Only WAITING rows and READY rows with a ttl have a visible_at: on SQLite, which
        # indexes NULLs, the others stay out of the index (squeal_0008).
        sa.Index(
            f"{prefix}_message_due_ix",
            "topic",
            "visible_at",
            sqlite_where=sa.text("visible_at IS NOT NULL"),
        ),
        _dedup_unique(prefix, dialect),
        sqlite_autoincrement=True,
    )
    topic_lock = sa.Table(
        f"{prefix}_topic_lock",
        metadata,
        sa.Column("topic", ExactText(), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", name=f"{prefix}_topic_lock_pk"),
    )
    dedup = sa.Table(
        f"{prefix}_dedup",
        metadata,
        sa.Column("topic", ExactText(), nullable=False),
        sa.Column("dedup_key", ExactText(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "dedup_key", name=f"{prefix}_dedup_pk"),
        sa.Index(f"{prefix}_dedup_expiry_ix", "expires_at"),
    )
    topic = sa.Table(
        f"{prefix}_topic",
        metadata,
        sa.Column("topic", ExactText(), nullable=False),
        sa.Column("paused", sa.SmallInteger(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("rate", sa.Integer(), nullable=True),
        sa.Column("per_ms", sa.BigInteger(), nullable=True),
        sa.Column("tokens", sa.Float(), nullable=True),
        sa.Column("refilled_at", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", name=f"{prefix}_topic_pk"),
    )
    schedule = sa.Table(
        f"{prefix}_schedule",
        metadata,
        sa.Column("name", ExactText(), nullable=False),
        sa.Column("topic", ExactText(), nullable=False),
        sa.Column("payload", payload_type(), nullable=False),
        sa.Column("neg_priority", sa.BigInteger(), nullable=False),
        sa.Column("cron", sa.String(255), nullable=True),
        sa.Column("every_ms", sa.BigInteger(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("next_run_at", sa.BigInteger(), nullable=False),
        sa.Column("last_run_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=f"{prefix}_schedule_pk"),
        sa.Index(f"{prefix}_schedule_due_ix", "next_run_at"),
    )
    worker = sa.Table(
        f"{prefix}_worker",
        metadata,
        sa.Column("id", id_type(), primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("topics", sa.Text(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("beat_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("acked", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("released", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"{prefix}_worker_pk"),
        sa.Index(f"{prefix}_worker_expiry_ix", "expires_at"),
        # Ids never come back (SQLite would reuse the largest once its row is deleted).
        sqlite_autoincrement=True,
    )
    binding = sa.Table(
        f"{prefix}_binding",
        metadata,
        sa.Column("exchange", ExactText(), nullable=False),
        sa.Column("binding_key", ExactText(), nullable=False),
        sa.Column("topic", ExactText(), nullable=False),
        # Each copy's ttl (ms; None: the publish's), and when the binding ends unless renewed.
        sa.Column("ttl_ms", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("bound_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("exchange", "binding_key", "topic", name=f"{prefix}_binding_pk"),
    )
    return Tables(
        prefix=prefix,
        schema=schema,
        metadata=metadata,
        message=message,
        topic_lock=topic_lock,
        dedup=dedup,
        topic=topic,
        schedule=schedule,
        worker=worker,
        binding=binding,
    )
