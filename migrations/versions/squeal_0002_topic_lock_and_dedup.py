"""Topic locks and dedup windows: the topic_lock and dedup tables.

Revision ID: squeal_0002
Revises: squeal_0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from squeal.migrate import migration_prefix
from squeal.schema import exact_text_type

revision = "squeal_0002"
down_revision = "squeal_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    p = migration_prefix()
    op.create_table(
        f"{p}_topic_lock",
        sa.Column("topic", exact_text_type(), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", name=f"{p}_topic_lock_pk"),
    )
    op.create_table(
        f"{p}_dedup",
        sa.Column("topic", exact_text_type(), nullable=False),
        sa.Column("dedup_key", exact_text_type(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "dedup_key", name=f"{p}_dedup_pk"),
    )
    op.create_index(f"{p}_dedup_expiry_ix", f"{p}_dedup", ["expires_at"])


def downgrade() -> None:
    p = migration_prefix()
    op.drop_table(f"{p}_dedup")
    op.drop_table(f"{p}_topic_lock")
