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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa

#: Idle connections kept per kind; more are opened under load and closed when returned.
MAX_IDLE = 16


class ConnectionStash:
    """A small LIFO of detached, pre-configured DB-API connections for one queue."""

    def __init__(
        self, engine: sa.Engine, configure: Callable[[Any], None], *, max_idle: int = MAX_IDLE
    ) -> None:
        self._engine = engine
        self._configure = configure
        self._max_idle = max_idle
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # A queue that is dropped without close() still closes its connections.
        weakref.finalize(self, _close_all, self._idle)

    def _open(self) -> Any:
        fairy = self._engine.raw_connection()
        try:
            fairy.detach()
            dbapi = fairy.dbapi_connection
            self._configure(dbapi)
        except BaseException:
            fairy.invalidate()
            raise
        return dbapi

    def _take(self) -> Any:
        with self._lock:
            if self._pid != os.getpid():
                # A forked child must not share its parent's sockets: forget, don't close.
                self._idle.clear()
                self._pid = os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._open()

    def _give_back(self, dbapi: Any) -> None:
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self._max_idle:
                self._idle.append(dbapi)
                return
        _close_quietly(dbapi)

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A configured DB-API connection; on any error it is closed instead of reused."""
        dbapi = self._take()
        try:
            yield dbapi
        except BaseException:
            _close_quietly(dbapi)
            raise
        self._give_back(dbapi)

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            _close_all(self._idle)


def _close_all(idle: list[Any]) -> None:
    while idle:
        _close_quietly(idle.pop())


def _close_quietly(dbapi: Any) -> None:
    with suppress(Exception):
        dbapi.close()
