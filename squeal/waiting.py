"""How ``get(wait=...)`` waits: for a wake-up notification, or by polling with backoff.

PostgreSQL puts announce ready messages on a channel (see ``PostgreSQLStrategy.announced``);
a :class:`Listener` keeps one dedicated connection per queue that LISTENs on it. Notifications
only shorten the wait: a consumer re-checks at least every :data:`RECHECK` seconds, so a missed
notification (listener reconnecting, a put with ``notify=False``) delays a message, never loses
it. Databases without notifications use a :class:`Poller`.

Usage from a wait loop: take ``mark()`` *before* a claim that found nothing, then
``wait(mark, timeout)``; a notification that arrived since the mark returns at once.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import sqlalchemy as sa

from squeal.bridge import await_
from squeal.bridge import sleep as pause_for
from squeal.drivers.base import Driver

#: Longest pause between two claims while waiting (the fallback when notifications are missed).
RECHECK = 0.5
#: First pause of the polling backoff, doubled up to POLL_CAP.
FIRST_POLL = 0.01
#: Longest pause between two polls: a put is seen within 0.1 s (an empty claim is cheap).
POLL_CAP = 0.1


class Poller:
    """Waits by sleeping; the wait loop claims again after each pause."""

    first_pause: float = FIRST_POLL
    max_pause: float = POLL_CAP

    def mark(self) -> int:
        """A token for :meth:`wait` (polling has nothing to remember)."""
        return 0

    def wait(self, mark: int, timeout: float) -> None:
        """Sleep ``timeout`` seconds."""
        pause_for(timeout)

    def close(self) -> None:
        """Nothing to close."""


class Listener(Poller):
    """One LISTEN connection shared by every thread waiting on one queue.

    One thread at a time reads notifications from the connection; the others wait on a
    condition that the reader signals. Each notification bumps a generation counter, which is
    what :meth:`mark` returns.
    """

    first_pause: float = RECHECK
    max_pause: float = RECHECK

    def __init__(self, engine: sa.Engine, channel: str, driver: Driver) -> None:
        self._engine = engine
        self._channel = channel
        self._driver = driver
        self._cond = threading.Condition()
        self._reading = False
        self._generation = 0
        self._dbapi: Any = None
        self._pid = os.getpid()

    def mark(self) -> int:
        """The current generation; also starts listening, so later puts are not missed."""
        with self._cond:
            if self._dbapi is None or self._pid != os.getpid():
                self._connect()
            return self._generation

    def wait(self, mark: int, timeout: float) -> None:
        """Return when a notification came after ``mark``, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                remaining = deadline - time.monotonic()
                if self._generation != mark or remaining <= 0:
                    return
                if not self._reading and self._dbapi is not None:
                    self._reading = True
                    break
                if self._dbapi is None:
                    self._cond.wait(remaining)  # listener broken: plain polling until reopened
                    return
                self._cond.wait(remaining)
        woke = False
        try:
            woke = self._read(remaining)
        finally:
            with self._cond:
                self._reading = False
                if woke:
                    self._generation += 1
                self._cond.notify_all()

    def _read(self, timeout: float) -> bool:
        """True when at least one notification arrived within ``timeout``."""
        dbapi = self._dbapi
        try:
            return self._driver.notified(dbapi, timeout)
        except Exception:  # a broken listener: drop it; the wait loop keeps polling
            with self._cond:
                if self._dbapi is dbapi:
                    self._dbapi = None
            with suppress(Exception):
                dbapi.close()
        return False

    def _connect(self) -> None:
        if self._pid != os.getpid():
            self._dbapi = None  # a forked child must not read its parent's socket
            self._pid = os.getpid()
        try:
            fairy = self._engine.raw_connection()
            fairy.detach()
            dbapi: Any = fairy.dbapi_connection
            # A queue dropped without close() still closes its LISTEN connection.
            weakref.finalize(self, _close_quietly, dbapi, os.getpid())
            self._driver.autocommit(dbapi)
            quoted = '"' + self._channel.replace('"', '""') + '"'
            self._driver.listen(dbapi, quoted)
        except Exception:  # unreachable now: poll; the next mark() tries again
            return
        self._dbapi = dbapi

    def close(self) -> None:
        """Close the LISTEN connection (reopened by the next wait)."""
        with self._cond:
            dbapi, self._dbapi = self._dbapi, None
            self._cond.notify_all()
        if dbapi is not None and self._pid == os.getpid():
            with suppress(Exception):
                dbapi.close()


class AsyncListener(Poller):
    """One LISTEN connection per queue on an asyncio driver, used inside the bridge.

    The driver delivers each notification to a callback on the event loop (asyncpg's own
    listener; a reader task for psycopg); the callback bumps the generation and wakes every
    waiter, which awaits an ``asyncio.Event`` with the loop free meanwhile.
    """

    first_pause: float = RECHECK
    max_pause: float = RECHECK

    def __init__(self, engine: sa.Engine, channel: str, driver: Driver) -> None:
        self._engine = engine
        self._channel = channel
        self._driver = driver
        self._generation = 0
        self._dbapi: Any = None
        self._stop: Callable[[], None] | None = None
        self._woken: asyncio.Event | None = None

    def _notified(self) -> None:
        self._generation += 1
        if self._woken is not None:
            self._woken.set()
            self._woken = asyncio.Event()

    def mark(self) -> int:
        """The current generation; also starts listening, so later puts are not missed."""
        if self._dbapi is None:
            self._connect()
        return self._generation

    def wait(self, mark: int, timeout: float) -> None:
        """Return when a notification came after ``mark``, or after ``timeout`` seconds."""
        if self._generation != mark or timeout <= 0:
            return
        if self._woken is None:  # not listening (unreachable): plain polling
            pause_for(timeout)
            return
        with suppress(asyncio.TimeoutError):  # (Python 3.10: not the built-in one)
            await_(asyncio.wait_for(self._woken.wait(), timeout))

    def _connect(self) -> None:
        try:
            fairy = self._engine.raw_connection()
            fairy.detach()
            dbapi: Any = fairy.dbapi_connection
            self._driver.autocommit(dbapi)
            quoted = '"' + self._channel.replace('"', '""') + '"'
            self._woken = asyncio.Event()
            self._stop = self._driver.listen_async(dbapi, quoted, self._notified)
        except Exception:  # unreachable now: poll; the next mark() tries again
            self._woken = None
            return
        self._dbapi = dbapi

    def close(self) -> None:
        """Stop listening and close the connection (reopened by the next wait)."""
        dbapi, self._dbapi = self._dbapi, None
        stop, self._stop = self._stop, None
        if self._woken is not None:
            self._woken.set()
            self._woken = None
        if stop is not None:
            with suppress(Exception):
                stop()
        if dbapi is not None:
            with suppress(Exception):
                dbapi.close()


def _close_quietly(dbapi: Any, pid: int) -> None:
    if os.getpid() != pid:
        return  # a forked child: the connection is its parent's
    with suppress(Exception):
        dbapi.close()


def waiter_for(engine: sa.Engine, channel: str | None, driver: Driver) -> Poller:
    """A Listener when the database announces puts on ``channel`` and the driver can listen,
    else a Poller."""
    if channel is None or not driver.notifications:
        return Poller()
    if engine.dialect.is_async:
        return AsyncListener(engine, channel, driver)
    return Listener(engine, channel, driver)


__all__ = ["RECHECK", "AsyncListener", "Listener", "Poller", "waiter_for"]
