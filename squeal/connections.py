"""DB-API connections that squeal manages itself, for the hot path.

Each connection is opened through the application's engine (its URL, connect arguments and pool
events all apply), then detached from the engine's pool and kept by squeal, set up once for how
squeal uses it (for example autocommit). Reusing it costs no pool checkout and no reset-on-return
ROLLBACK, which on a loopback server is a round trip per operation.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import weakref
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import sqlalchemy as sa

#: Idle connections kept per queue; more are opened under load and closed when returned.
MAX_IDLE = 16
#: A TCP connection of squeal's whose peer stopped acknowledging data or keepalive probes for
#: this long is ended by the kernel, so a call blocked on a dead network path fails instead of
#: hanging (see :func:`detect_dead_peer`). 0 turns it off.
DEAD_PEER_SECONDS = 30.0


class Link:
    """One connection squeal keeps, with the cursor it reuses for every statement and its
    socket's descriptor (None where the driver's adapter cannot find it)."""

    __slots__ = ("cursor", "dbapi", "fileno")

    def __init__(self, dbapi: Any, fileno: int | None = None) -> None:
        self.dbapi = dbapi
        self.cursor = dbapi.cursor()
        self.fileno = fileno

    def hung_up(self) -> bool:
        """Whether the server closed this idle connection (or sent it something unasked,
        which leaves it as unusable): a restart, a failover, ``wait_timeout``, a killed
        session. One poll, no round trip. Used before a unit of work, so that a write is not
        sent on a connection that cannot answer, which would hide whether it committed."""
        if self.fileno is None:
            return False
        poller = select.poll()
        poller.register(self.fileno, select.POLLIN | select.POLLPRI)
        try:
            return bool(poller.poll(0))
        except InterruptedError:
            return False

    def close(self) -> None:
        """Close the connection, ignoring errors (it is being thrown away)."""
        with suppress(Exception):
            self.dbapi.close()


class ConnectionStash:
    """A small LIFO of detached, pre-configured DB-API connections for one queue."""

    def __init__(
        self,
        engine: sa.Engine,
        configure: Callable[[Any], None],
        *,
        socket_of: Callable[[Any], int | None] = lambda dbapi: None,
        max_idle: int = MAX_IDLE,
    ) -> None:
        self._engine = engine
        self._configure = configure
        self._socket_of = socket_of
        self._max_idle = max_idle
        self._idle: list[Link] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        # A queue that is dropped without close() still closes its connections; in a forked
        # child (whose finalizers run at its exit) never: they are its parent's sockets.
        weakref.finalize(self, _close_all, self._idle, self._pid)

    def _open(self) -> Link:
        fairy = self._engine.raw_connection()
        try:
            fairy.detach()
            dbapi = fairy.dbapi_connection
            self._configure(dbapi)
            return Link(dbapi, self._socket_of(dbapi))
        except BaseException:
            fairy.invalidate()
            raise

    def take(self) -> Link:
        """An idle connection the server has not closed, or a new one."""
        while True:
            with self._lock:
                if self._pid != os.getpid():
                    # A forked child must not share its parent's sockets: forget, don't close.
                    self._idle.clear()
                    self._pid = os.getpid()
                if not self._idle:
                    break
                link = self._idle.pop()
            if not link.hung_up():
                return link
            link.close()
        return self._open()

    def give_back(self, link: Link) -> None:
        """Keep ``link`` for the next unit of work (its transaction must be finished)."""
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self._max_idle:
                self._idle.append(link)
                return
        link.close()

    def close(self) -> None:
        """Close every idle connection (in a forked child: forget its parent's). They are
        closed outside the lock: a close may wait (in the asyncio bridge, for the loop, whose
        other tasks must still take and give back connections meanwhile)."""
        with self._lock:
            idle = self._idle[:]
            self._idle.clear()
        _close_all(idle, self._pid)


def detect_dead_peer(fileno: int) -> None:
    """Bound how long the TCP socket ``fileno`` survives a peer that no longer answers.

    ``TCP_USER_TIMEOUT`` ends the connection when sent data stays unacknowledged; keepalive
    probes notice a path that died while squeal waited for a reply. Both cost nothing per
    statement. Unix sockets and systems without these options are left alone.
    """
    seconds = DEAD_PEER_SECONDS
    user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
    if seconds <= 0 or user_timeout is None:
        return
    sock = socket.socket(fileno=fileno)
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.IPPROTO_TCP, user_timeout, int(seconds * 1000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # Idle for half the time, then 3 probes in the other half.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(seconds / 2)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(seconds / 6)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass
    finally:
        sock.detach()  # the driver owns the descriptor


def _close_all(idle: list[Link], pid: int) -> None:
    """Close the connections opened by process ``pid``; another process only forgets them."""
    if os.getpid() != pid:
        idle.clear()
        return
    while idle:
        idle.pop().close()
