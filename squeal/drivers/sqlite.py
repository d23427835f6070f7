"""SQLite's driver: the standard library's sqlite3 (``sqlite://``, SQLAlchemy's pysqlite)."""

from __future__ import annotations

from typing import Any, ClassVar

from squeal.drivers.base import Code, Driver


class Sqlite3(Driver):
    """sqlite3: no implicit BEGIN, so squeal's own ``BEGIN IMMEDIATE`` decides."""

    name: ClassVar[str] = "pysqlite"
    extra: ClassVar[str] = ""
    dead_peer_detection: ClassVar[bool] = False  # a file, not a socket

    def autocommit(self, dbapi: Any) -> None:
        dbapi.isolation_level = None

    def rollback(self, dbapi: Any, cursor: Any) -> None:
        # sqlite3 asks SQLite whether a transaction is open (an error may have ended it).
        dbapi.rollback()

    def code(self, error: BaseException) -> Code:
        code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
        return code if isinstance(code, int) else None


__all__ = ["Sqlite3"]
