"""The worker registry: one row per running worker, heartbeated (``Queue.workers``).

Only adds a table, so squeal at squeal_0002 and later still runs on these tables
(``_compat_0002``); its workers do not register, which only this version does.

Revision ID: squeal_0006_compat_0002
Revises: squeal_0005_compat_0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from squeal.migrate import migration_prefix, migration_schema

revision = "squeal_0006_compat_0002"
down_revision = "squeal_0005_compat_0002"
branch_labels = None
depends_on = None

# Frozen history: the column types as they were when this revision was written.


def _id() -> sa.types.TypeEngine[Any]:
    """64-bit ids; SQLite's rowid alias must be spelled INTEGER."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.create_table(
        f"{p}_worker",
        sa.Column("id", _id(), primary_key=True, autoincrement=True),
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
        sa.PrimaryKeyConstraint("id", name=f"{p}_worker_pk"),
        schema=s,
        sqlite_autoincrement=True,
    )
    op.create_index(f"{p}_worker_expiry_ix", f"{p}_worker", ["expires_at"], schema=s)


def downgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.drop_table(f"{p}_worker", schema=s)
