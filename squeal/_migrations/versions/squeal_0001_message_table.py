"""The message table and its claim, due and dedup indexes.

Revision ID: squeal_0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from squeal.migrate import migration_prefix, migration_schema

revision = "squeal_0001"
down_revision = None
branch_labels = ("squeal",)
depends_on = None

# Frozen history: the column types as they were when this revision was written (not imported
# from squeal.schema, whose later changes must not rewrite it).


def _exact_text() -> sa.types.TypeEngine[Any]:
    """Topics and keys of up to 255 characters, compared byte for byte (MySQL: VARBINARY)."""
    return sa.String(255).with_variant(mysql.VARBINARY(1020), "mysql", "mariadb")


def _id() -> sa.types.TypeEngine[int]:
    """64-bit ids; SQLite's rowid alias must be spelled INTEGER."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _payload() -> sa.types.TypeEngine[bytes]:
    """Bytes up to at least 16 MiB everywhere (MySQL's BLOB stops at 64 KiB)."""
    return sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def upgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.create_table(
        f"{p}_message",
        sa.Column("id", _id(), nullable=False, autoincrement=True),
        sa.Column("topic", _exact_text(), nullable=False),
        sa.Column("neg_priority", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("visible_at", sa.BigInteger(), nullable=True),
        sa.Column("enqueued_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_token", sa.BigInteger(), nullable=True),
        sa.Column("dedup_key", _exact_text(), nullable=True),
        sa.Column("payload", _payload(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"{p}_message_pk"),
        sa.UniqueConstraint("topic", "dedup_key", name=f"{p}_message_dedup_uq"),
        sqlite_autoincrement=True,
        schema=s,
    )
    op.create_index(
        f"{p}_message_claim_ix",
        f"{p}_message",
        ["topic", "state", "neg_priority", "id"],
        schema=s,
    )
    op.create_index(f"{p}_message_due_ix", f"{p}_message", ["topic", "visible_at"], schema=s)


def downgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.drop_table(f"{p}_message", schema=s)
