"""SQLite: the due index and the dedup keys' unique index hold only the rows that need them.

Every ready message has NULL in ``visible_at`` and, unless put with a dedup key, in
``dedup_key``; SQLite indexes NULLs, so each put wrote an entry in both indexes that no query
reads (and each ack removed its dedup entry). Both become partial (``WHERE visible_at IS NOT NULL``,
``WHERE dedup_key IS NOT NULL``): the due walk's ``visible_at <= now`` implies the first, and
uniqueness of (topic, dedup_key) never concerned NULL keys (docs/performance.md). The unique
constraint is part of the table's definition, so the table is rebuilt (its rows copied).

PostgreSQL and MariaDB are left as they are (MariaDB has no partial indexes). Statements do
not name these indexes, so squeal at squeal_0002 and later still runs on these tables
(``_compat_0002``). The rebuild copies squeal's own definition: indexes or views a user added
on the message table are not carried over (a view makes the upgrade fail and roll back).

Revision ID: squeal_0008_compat_0002
Revises: squeal_0007_compat_0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import context, op
from alembic.operations import BatchOperations

from squeal.migrate import migration_prefix, migration_schema

revision = "squeal_0008_compat_0002"
down_revision = "squeal_0007_compat_0002"
branch_labels = None
depends_on = None


def _sqlite() -> bool:
    """Whether this runs on SQLite; if so, online, within a transaction that holds the write
    lock from its first statement on (squeal's own migrations run in one; under another
    env.py pysqlite may run each DDL statement outside any), so the rebuild is one change."""
    if op.get_context().dialect.name != "sqlite":
        return False
    if not context.is_offline_mode():
        bind = op.get_bind()
        if not getattr(bind.connection.dbapi_connection, "in_transaction", True):
            bind.exec_driver_sql("BEGIN IMMEDIATE")
    return True


def _message(p: str, s: str | None, *, unique: bool) -> sa.Table:
    """The message table on SQLite as squeal_0007 left it (frozen history), without the due
    index, and with the dedup constraint if ``unique``: what the rebuild copies from (so
    that ``squeal migrate --sql`` needs no table to reflect)."""
    return sa.Table(
        f"{p}_message",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("neg_priority", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("visible_at", sa.BigInteger(), nullable=True),
        sa.Column("enqueued_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_token", sa.BigInteger(), nullable=True),
        sa.Column("dedup_key", sa.String(255), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("died_at", sa.BigInteger(), nullable=True),
        sa.Column("dead_reason", sa.String(32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("headers", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"{p}_message_pk"),
        sa.Index(f"{p}_message_claim_ix", "topic", "state", "neg_priority", "id"),
        *([sa.UniqueConstraint("topic", "dedup_key", name=f"{p}_message_dedup_uq")] * unique),
        sqlite_autoincrement=True,
        schema=s,
    )


@contextmanager
def _rebuild(table: sa.Table) -> Iterator[BatchOperations]:
    """Rebuild ``table`` with the batch's changes, keeping its AUTOINCREMENT counter: ids
    are never reused, even those of messages deleted before the rebuild (a copy alone would
    restart the counter at the largest id left). Plain SQL, so ``--sql`` prints it too."""
    name, schema = table.name, table.schema
    seq = f'"{schema}".sqlite_sequence' if schema else "sqlite_sequence"
    target = f'"{schema}"."{name}"' if schema else f'"{name}"'
    op.execute("DROP TABLE IF EXISTS temp.squeal_0008_seq")
    op.execute(f"CREATE TEMP TABLE squeal_0008_seq AS SELECT seq FROM {seq} WHERE name = '{name}'")
    with op.batch_alter_table(
        name,
        schema=schema,
        recreate="always",
        copy_from=table,
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch:
        yield batch
    op.execute(f"DELETE FROM {seq} WHERE name = '{name}'")
    op.execute(
        f"INSERT INTO {seq} (name, seq) SELECT '{name}', top FROM (SELECT max(seq) AS top "
        f"FROM (SELECT seq FROM temp.squeal_0008_seq UNION ALL SELECT max(id) FROM {target})) "
        "WHERE top IS NOT NULL"
    )
    op.execute("DROP TABLE temp.squeal_0008_seq")


def upgrade() -> None:
    if not _sqlite():
        return
    p, s = migration_prefix(), migration_schema()
    table = f"{p}_message"
    op.drop_index(f"{p}_message_due_ix", table_name=table, schema=s)
    with _rebuild(_message(p, s, unique=True)) as batch:
        batch.drop_constraint(f"{p}_message_dedup_uq", type_="unique")
    op.create_index(
        f"{p}_message_due_ix",
        table,
        ["topic", "visible_at"],
        schema=s,
        sqlite_where=sa.text("visible_at IS NOT NULL"),
    )
    op.create_index(
        f"{p}_message_dedup_uq",
        table,
        ["topic", "dedup_key"],
        unique=True,
        schema=s,
        sqlite_where=sa.text("dedup_key IS NOT NULL"),
    )


def downgrade() -> None:
    if not _sqlite():
        return
    p, s = migration_prefix(), migration_schema()
    table = f"{p}_message"
    op.drop_index(f"{p}_message_dedup_uq", table_name=table, schema=s)
    op.drop_index(f"{p}_message_due_ix", table_name=table, schema=s)
    with _rebuild(_message(p, s, unique=False)) as batch:
        batch.create_unique_constraint(f"{p}_message_dedup_uq", ["topic", "dedup_key"])
    op.create_index(f"{p}_message_due_ix", table, ["topic", "visible_at"], schema=s)
