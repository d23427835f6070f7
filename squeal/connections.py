"""DB-API connections that squeal manages itself, for the hot path.

Each connection is opened through the application's engine (its URL, connect arguments and pool
events all apply), then detached from the engine's pool and kept by squeal, set up once for how
squeal uses it (for example autocommit). Reusing it costs no pool checkout and no reset-on-return
ROLLBACK, which on a loopback server is a round trip per operation.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import sqlalchemy as sa

#: Idle connections kept per kind; more are opened under load and closed when returned.
MAX_IDLE = 16


class Link:
    """One connection squeal keeps, with the cursor it reuses for every statement."""

    __slots__ = ("cursor", "dbapi")

    def __init__(self, dbapi: Any) -> None:
        self.dbapi = dbapi
        self.cursor = dbapi.cursor()

    def close(self) -> None:
        """Close the connection, ignoring errors (it is being thrown away)."""
        with suppress(Exception):
            self.dbapi.close()


class ConnectionStash:
    """A small LIFO of detached, pre-configured DB-API connections for one queue."""

    def __init__(
        self, engine: sa.Engine, configure: Callable[[Any], None], *, max_idle: int = MAX_IDLE
    ) -> None:
        self._engine = engine
        self._configure = configure
        self._max_idle = max_idle
        self._idle: list[Link] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # A queue that is dropped without close() still closes its connections.
        weakref.finalize(self, _close_all, self._idle)

    def _open(self) -> Link:
        fairy = self._engine.raw_connection()
        try:
            fairy.detach()
            dbapi = fairy.dbapi_connection
            self._configure(dbapi)
            return Link(dbapi)
        except BaseException:
            fairy.invalidate()
            raise

    def take(self) -> Link:
        """An idle connection, or a new one."""
        with self._lock:
            if self._pid != os.getpid():
                # A forked child must not share its parent's sockets: forget, don't close.
                self._idle.clear()
                self._pid = os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._open()

    def give_back(self, link: Link) -> None:
        """Keep ``link`` for the next unit of work (its transaction must be finished)."""
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self._max_idle:
                self._idle.append(link)
                return
        link.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            _close_all(self._idle)


def _close_all(idle: list[Link]) -> None:
    while idle:
        idle.pop().close()
