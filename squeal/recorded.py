"""Where squeal's revision is recorded: its own version table, or the application's.

Isolated (``squeal migrate``, ``Queue.create``, ``alembic`` on squeal's own script location):
``{prefix}_alembic_version``. Integrated (the application's Alembic runs squeal's branch beside
its own): the application's ``alembic_version``, among the application's revisions. Every
reader of the revision (the queue's schema check, ``squeal migrate``, ``squeal.alembic``) asks
here, so the modes never disagree about whether the tables exist.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import sqlalchemy as sa

#: The application's own version table (Alembic's default name).
APPLICATION_VERSION_TABLE = "alembic_version"
#: Every squeal revision id starts with this (and no revision of anyone else's may).
REVISION_PREFIX = "squeal_"


#: A squeal revision id: ``squeal_NNNN``, or ``squeal_NNNN_compat_MMMM`` for a revision whose
#: tables the code written for revision MMMM (and every later one) still runs on: it only
#: adds (a table, an index, a nullable column) what older code never reads.
_REVISION_ID = re.compile(r"squeal_(\d{4})(?:_compat_(\d{4}))?")


class Fit(enum.Enum):
    """How tables at one revision fit code written for another (see :func:`fit`)."""

    #: The revision the code was written for.
    CURRENT = "current"
    #: A later revision, marked compatible with the code's own: the code runs on it.
    COMPATIBLE = "compatible"
    #: An earlier revision (or none, or several): migrate.
    BEHIND = "behind"
    #: A later revision the code cannot run on: run the squeal that migrated the tables.
    AHEAD = "ahead"


def _number(revision: str) -> tuple[int, int | None] | None:
    match = _REVISION_ID.fullmatch(revision)
    if match is None:
        return None
    compat = match.group(2)
    return int(match.group(1)), None if compat is None else int(compat)


def fit(found: tuple[str, ...], own: str) -> Fit:
    """How tables recorded at ``found`` fit code written for revision ``own``.

    This is what lets workers of the previous version keep running (and restart) after a
    rolling upgrade migrated the tables: a revision that only adds says so in its id.
    """
    if found == (own,):
        return Fit.CURRENT
    mine = _number(own)
    theirs = _number(found[0]) if len(found) == 1 else None
    if mine is None or theirs is None or theirs[0] <= mine[0]:
        return Fit.BEHIND
    compat = theirs[1]
    return Fit.COMPATIBLE if compat is not None and compat <= mine[0] else Fit.AHEAD


def version_table(prefix: str) -> str:
    """The table where squeal records its revision for ``prefix`` when isolated."""
    return f"{prefix}_alembic_version"


@dataclass(frozen=True)
class Recorded:
    """squeal's revisions as the database records them for one prefix."""

    #: The version table they are in (None: no table for them exists).
    table: str | None
    revisions: tuple[str, ...]

    @property
    def integrated(self) -> bool:
        """Whether the application's Alembic records squeal's branch in its own table."""
        return self.table == APPLICATION_VERSION_TABLE

    @property
    def revision(self) -> str | None:
        """The one revision recorded (None: none, or more than one)."""
        return self.revisions[0] if len(self.revisions) == 1 else None


def recorded(conn: sa.Connection, prefix: str, schema: str | None = None) -> Recorded:
    """Read squeal's revision for ``prefix`` in ``schema``: its own table first, then the
    application's."""
    inspector = sa.inspect(conn)
    own = version_table(prefix)
    has_own = inspector.has_table(own, schema=schema)
    if has_own and (versions := _versions(conn, own, schema)):
        return Recorded(own, versions)
    if inspector.has_table(APPLICATION_VERSION_TABLE, schema=schema):
        ours = tuple(
            v
            for v in _versions(conn, APPLICATION_VERSION_TABLE, schema)
            if v.startswith(REVISION_PREFIX)
        )
        if ours:
            return Recorded(APPLICATION_VERSION_TABLE, ours)
    return Recorded(own if has_own else None, ())


def _versions(conn: sa.Connection, table: str, schema: str | None) -> tuple[str, ...]:
    version = sa.table(table, sa.column("version_num", sa.String()), schema=schema)
    return tuple(str(v) for v in conn.execute(sa.select(version.c.version_num)).scalars())
