"""Flow control and schedules: the topic and schedule tables.

Only adds (two tables), so squeal at squeal_0002 still runs on these tables (``_compat_0002``);
it does not enforce what they record (pauses), which only this version does.

Revision ID: squeal_0003_compat_0002
Revises: squeal_0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from squeal.migrate import migration_prefix, migration_schema

revision = "squeal_0003_compat_0002"
down_revision = "squeal_0002"
branch_labels = None
depends_on = None

# Frozen history: the column types as they were when this revision was written (not imported
# from squeal.schema, whose later changes must not rewrite it).


def _exact_text() -> sa.types.TypeEngine[Any]:
    """Topics and names of up to 255 characters, compared byte for byte (MySQL: VARBINARY)."""
    return sa.String(255).with_variant(mysql.VARBINARY(1020), "mysql", "mariadb")


def _payload() -> sa.types.TypeEngine[bytes]:
    """Bytes up to at least 16 MiB everywhere (MySQL's BLOB stops at 64 KiB)."""
    return sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def upgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.create_table(
        f"{p}_topic",
        sa.Column("topic", _exact_text(), nullable=False),
        sa.Column("paused", sa.SmallInteger(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=True),
        sa.Column("rate", sa.Integer(), nullable=True),
        sa.Column("per_ms", sa.BigInteger(), nullable=True),
        sa.Column("tokens", sa.Float(), nullable=True),
        sa.Column("refilled_at", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", name=f"{p}_topic_pk"),
        schema=s,
    )
    op.create_table(
        f"{p}_schedule",
        sa.Column("name", _exact_text(), nullable=False),
        sa.Column("topic", _exact_text(), nullable=False),
        sa.Column("payload", _payload(), nullable=False),
        sa.Column("neg_priority", sa.BigInteger(), nullable=False),
        sa.Column("cron", sa.String(255), nullable=True),
        sa.Column("every_ms", sa.BigInteger(), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("next_run_at", sa.BigInteger(), nullable=False),
        sa.Column("last_run_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=f"{p}_schedule_pk"),
        schema=s,
    )
    op.create_index(f"{p}_schedule_due_ix", f"{p}_schedule", ["next_run_at"], schema=s)


def downgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.drop_table(f"{p}_schedule", schema=s)
    op.drop_table(f"{p}_topic", schema=s)
