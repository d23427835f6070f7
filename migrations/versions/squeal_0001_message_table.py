"""The message table and its claim, due and dedup indexes.

Revision ID: squeal_0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from squeal.migrate import migration_prefix
from squeal.schema import exact_text_type, id_type, payload_type

revision = "squeal_0001"
down_revision = None
branch_labels = ("squeal",)
depends_on = None


def upgrade() -> None:
    p = migration_prefix()
    op.create_table(
        f"{p}_message",
        sa.Column("id", id_type(), nullable=False, autoincrement=True),
        sa.Column("topic", exact_text_type(), nullable=False),
        sa.Column("neg_priority", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("visible_at", sa.BigInteger(), nullable=True),
        sa.Column("enqueued_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_token", sa.BigInteger(), nullable=True),
        sa.Column("dedup_key", exact_text_type(), nullable=True),
        sa.Column("payload", payload_type(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=f"{p}_message_pk"),
        sa.UniqueConstraint("topic", "dedup_key", name=f"{p}_message_dedup_uq"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        f"{p}_message_claim_ix", f"{p}_message", ["topic", "state", "neg_priority", "id"]
    )
    op.create_index(f"{p}_message_due_ix", f"{p}_message", ["topic", "visible_at"])


def downgrade() -> None:
    p = migration_prefix()
    op.drop_table(f"{p}_message")
