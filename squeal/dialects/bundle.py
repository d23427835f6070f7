"""What squeal knows about one database, named together so that a database is one entry.

Its claim strategy, topic locks, dedup windows, migration lock and health checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from squeal.dialects.base import Strategy
from squeal.dialects.dedup import Windows
from squeal.dialects.health import Health
from squeal.dialects.locking import Locking
from squeal.dialects.migration_lock import MigrationLock


@dataclass(frozen=True)
class Bundle:
    """One database's statement sets, each built and compiled once per queue."""

    #: The SQLAlchemy dialect names this bundle serves (``engine.dialect.name``).
    dialects: tuple[str, ...]
    strategy: type[Strategy]
    locking: type[Locking]
    windows: type[Windows]
    migration_lock: type[MigrationLock]
    health: type[Health]
    #: Why tables cannot live in a schema other than the connection's (None: they can).
    no_schemas: str | None = None


__all__ = ["Bundle"]
