"""Topic locks and dedup windows: the topic_lock and dedup tables.

Revision ID: squeal_0002
Revises: squeal_0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from squeal.migrate import migration_prefix, migration_schema

revision = "squeal_0002"
down_revision = "squeal_0001"
branch_labels = None
depends_on = None

# Frozen history: the column types as they were when this revision was written (not imported
# from squeal.schema, whose later changes must not rewrite it).


def _exact_text() -> sa.types.TypeEngine[Any]:
    """Topics and keys of up to 255 characters, compared byte for byte (MySQL: VARBINARY)."""
    return sa.String(255).with_variant(mysql.VARBINARY(1020), "mysql", "mariadb")


def upgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.create_table(
        f"{p}_topic_lock",
        sa.Column("topic", _exact_text(), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", name=f"{p}_topic_lock_pk"),
        schema=s,
    )
    op.create_table(
        f"{p}_dedup",
        sa.Column("topic", _exact_text(), nullable=False),
        sa.Column("dedup_key", _exact_text(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "dedup_key", name=f"{p}_dedup_pk"),
        schema=s,
    )
    op.create_index(f"{p}_dedup_expiry_ix", f"{p}_dedup", ["expires_at"], schema=s)


def downgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.drop_table(f"{p}_dedup", schema=s)
    op.drop_table(f"{p}_topic_lock", schema=s)
