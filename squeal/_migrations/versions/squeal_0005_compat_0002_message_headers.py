"""Message headers: a put's small string-to-string map, one nullable column (JSON text).

Only adds a nullable column (instant on PostgreSQL, MariaDB 10.6+ and MySQL 8; SQLite's ADD
COLUMN rewrites nothing), so squeal at squeal_0002 and later still runs on these tables
(``_compat_0002``); it neither writes nor returns headers, which only this version does.

Revision ID: squeal_0005_compat_0002
Revises: squeal_0004_compat_0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from squeal.migrate import migration_prefix, migration_schema

revision = "squeal_0005_compat_0002"
down_revision = "squeal_0004_compat_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.add_column(f"{p}_message", sa.Column("headers", sa.Text(), nullable=True), schema=s)


def downgrade() -> None:
    p, s = migration_prefix(), migration_schema()
    op.drop_column(f"{p}_message", "headers", schema=s)
