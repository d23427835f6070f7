"""Message lifetime and dead letters that say why: nullable columns of the message table.

A put's ttl (``expires_at``) and ``max_attempts``; when and why a message died (``died_at``,
``dead_reason``) and the last error a nack gave (``last_error``).

Only adds nullable columns (instant on PostgreSQL, MariaDB 10.6+ and MySQL 8; SQLite's ADD
COLUMN rewrites nothing), so squeal at squeal_0002 or squeal_0003 still runs on these tables
(``_compat_0002``); it does not enforce what they record, which only this version does.

Revision ID: squeal_0004_compat_0002
Revises: squeal_0003_compat_0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from squeal.migrate import migration_prefix, migration_schema

revision = "squeal_0004_compat_0002"
down_revision = "squeal_0003_compat_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.add_column(f"{p}_message", sa.Column("expires_at", sa.BigInteger(), nullable=True), schema=s)
    op.add_column(f"{p}_message", sa.Column("max_attempts", sa.Integer(), nullable=True), schema=s)
    op.add_column(f"{p}_message", sa.Column("died_at", sa.BigInteger(), nullable=True), schema=s)
    op.add_column(f"{p}_message", sa.Column("dead_reason", sa.String(32), nullable=True), schema=s)
    op.add_column(f"{p}_message", sa.Column("last_error", sa.Text(), nullable=True), schema=s)


def downgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    # A plain DROP COLUMN everywhere (SQLite has it since 3.35, squeal's oldest): a batch
    # rebuild of the message table would copy every message.
    for column in ("last_error", "dead_reason", "died_at", "max_attempts", "expires_at"):
        op.drop_column(f"{p}_message", column, schema=s)
