"""Exchanges: topics bound to an exchange receive a copy of what is published to it
(``Queue.bind``, ``Queue.publish``; kombu's fanout exchanges).

Only adds a table, so squeal at squeal_0002 and later still runs on these tables
(``_compat_0002``); only this version publishes to exchanges.

Revision ID: squeal_0007_compat_0002
Revises: squeal_0006_compat_0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from squeal.migrate import migration_prefix, migration_schema

revision = "squeal_0007_compat_0002"
down_revision = "squeal_0006_compat_0002"
branch_labels = None
depends_on = None

# Frozen history: the column types as they were when this revision was written.


def _exact_text() -> sa.types.TypeEngine[Any]:
    """Names of up to 255 characters, compared byte for byte (MySQL: VARBINARY)."""
    return sa.String(255).with_variant(mysql.VARBINARY(1020), "mysql", "mariadb")


def upgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.create_table(
        f"{p}_binding",
        sa.Column("exchange", _exact_text(), nullable=False),
        sa.Column("binding_key", _exact_text(), nullable=False),
        sa.Column("topic", _exact_text(), nullable=False),
        sa.Column("ttl_ms", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("bound_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("exchange", "binding_key", "topic", name=f"{p}_binding_pk"),
        schema=s,
    )


def downgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.drop_table(f"{p}_binding", schema=s)
