"""A kombu transport on squeal: Celery's broker in the SQL database the application runs.

``broker_url = "squeal+postgresql+psycopg://user@host/db"`` (any URL squeal accepts, prefixed
``squeal+``) once this module is imported (importing it registers the ``squeal`` alias), or
``broker_transport = "squeal.kombu:Transport"`` with a URL whose scheme has no ``+`` (kombu
reads ``a+b://`` as transport ``a``): ``postgresql://...``, or the URL in the transport option
``url``.

A delivery is a squeal lease: ``basic_ack`` is squeal's ack, a requeueing reject or a recover
releases the message (ready again at once, the attempt not counted), a reject without requeue
deletes it (AMQP drops such a message). Leases of the deliveries a worker holds are renewed
by a keeper thread, so a task may run for longer than ``visibility_timeout``; when a worker
dies its deliveries come back once their leases run out, so ``acks_late`` tasks survive
SIGKILL. Prefetch is kombu's QoS (Celery's ``worker_prefetch_multiplier``): a channel never
leases more than its QoS lets it hold. Queues are squeal topics; direct and topic exchanges
route in the publishing process (kombu's virtual exchanges), fanout exchanges are not
supported (Celery's remote control and broadcast queues need them).

Transport options (``broker_transport_options``): ``url`` (the database's SQLAlchemy URL,
instead of the broker URL's), ``prefix`` (squeal's table prefix,
``"squeal"``), ``visibility_timeout`` (seconds, 60), ``create_tables`` (True: create or
upgrade squeal's tables on first use), ``wait`` (the longest a claim waits for a message on
a single queue, 1 s), ``engine_options`` (a dict for :func:`sqlalchemy.create_engine`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from queue import Empty
from typing import Any, ClassVar

import sqlalchemy as sa
from kombu.transport import TRANSPORT_ALIASES, virtual

from squeal.completer import Completer, InFlight
from squeal.errors import DatabaseError, LeaseLost, SquealError, ValidationError
from squeal.message import Message
from squeal.queue import Queue

log = logging.getLogger("squeal.kombu")

#: The caller's connection that publishes go through (see :func:`in_transaction`).
_CALLERS: ContextVar[sa.Connection | None] = ContextVar("squeal_kombu_connection", default=None)


@contextmanager
def in_transaction(connection: sa.Connection) -> Iterator[None]:
    """Within the block, what this thread (or task) publishes through squeal's transport is
    put in ``connection``'s transaction: a Celery task sent in it exists only if the caller
    commits, so no task is ever sent for a write that rolled back.

    ``connection`` must be on the broker's database (and tables); squeal cannot check that
    it is. Example::

        with engine.begin() as conn, squeal.kombu.in_transaction(conn):
            conn.execute(orders.insert().values(id=7))
            send_receipt.delay(7)
    """
    token = _CALLERS.set(connection)
    try:
        yield
    finally:
        _CALLERS.reset(token)


#: The most messages one claim takes when kombu's QoS sets no prefetch limit.
MOST_PER_CLAIM = 100
#: How long a drain waits when every channel holds its prefetch, before it returns.
FULL_PAUSE = 0.02
#: Acks are committed every SETTLE_EVERY seconds, or at once when SETTLE_BATCH wait.
SETTLE_EVERY, SETTLE_BATCH = 0.005, 200
#: How long a purge or a queue length waits for the acks given before it to commit.
ACKS_AWAITED = 2.0


class Channel(virtual.Channel):
    """A kombu channel whose queues are squeal topics and whose deliveries are leases."""

    connection: Transport
    do_restore = True

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        #: The squeal message behind each delivery this channel holds, by delivery tag.
        self._held: dict[str, Message] = {}
        self._lock = threading.Lock()
        self._next = 0  # round-robin start among the active queues
        self._transport = connection
        connection.keeper.watch(self)

    @property
    def queue(self) -> Queue:
        return self._transport.queue

    # -- publishing ------------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        priority = self._get_message_priority(message)
        self.queue.put(_encode(message), queue, priority=priority, connection=_CALLERS.get())

    # -- consuming ---------------------------------------------------------------------------

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        while got := self.queue.get_many(queue, 1):
            payload = self._delivery(got[0])
            if payload is not None:
                return payload
        raise Empty()

    def _get_many(self, queues: list[str], timeout: float | None = None) -> None:
        """Lease what kombu's QoS lets this channel take, from the first of ``queues`` (in
        turn) that has messages, and deliver it; raise Empty when none has any."""
        room = self.qos.can_consume_max_estimate()
        most = MOST_PER_CLAIM if room is None else max(1, min(int(room), MOST_PER_CLAIM))
        order = queues[self._next :] + queues[: self._next]
        self._next = (self._next + 1) % max(1, len(queues))
        most_wait = self._transport.wait
        wait = most_wait if timeout is None else min(timeout, most_wait)
        for queue in order:
            got = self.queue.get_many(queue, most, wait=wait if len(queues) == 1 else 0.0)
            delivered = 0
            try:
                for message in got:
                    payload = self._delivery(message)
                    delivered += 1
                    if payload is not None:
                        self._transport._deliver(payload, queue)
            finally:
                # A callback that raised: the rest were never handed over, so not held either.
                for message in got[delivered:]:
                    _give_back(message)
            if got:
                return
        raise Empty()

    def _delivery(self, message: Message) -> dict[str, Any] | None:
        """kombu's message dict for a leased squeal message, with a delivery tag of its own
        (a redelivery is another delivery); None for a message that is not kombu's (put on
        the topic by something else): nacked with the reason, so it dies after its attempts
        instead of stopping the consumer."""
        try:
            payload: dict[str, Any] = json.loads(message.payload)
            if not isinstance(payload, dict) or "body" not in payload:
                raise ValueError("no kombu message body")
        except ValueError as error:
            log.warning(
                "squeal: message %d of %r is not a kombu message", message.id, message.topic
            )
            with suppress(SquealError):
                message.nack(error=f"not a kombu message: {error}")
            return None
        tag = uuid.uuid4().hex
        properties = payload.setdefault("properties", {})
        properties["delivery_tag"] = tag
        redelivered = message.attempts > 1
        payload["redelivered"] = redelivered
        properties.setdefault("delivery_info", {})["redelivered"] = redelivered
        with self._lock:
            self._held[tag] = message
        return payload

    def _take(self, delivery_tag: str) -> Message | None:
        with self._lock:
            return self._held.pop(delivery_tag, None)

    def held(self) -> list[Message]:
        """The messages of the deliveries this channel holds now (for the keeper)."""
        with self._lock:
            return list(self._held.values())

    # -- settling ----------------------------------------------------------------------------

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        tags = [delivery_tag]
        if multiple:  # every delivery up to this one, in delivery order (AMQP)
            delivered = list(self.qos._delivered)
            if delivery_tag in delivered:
                tags = delivered[: delivered.index(delivery_tag) + 1]
        for tag in tags:
            message = self._take(tag)
            if message is not None:
                self._transport.settle(message)
            super().basic_ack(tag)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        message = self._take(delivery_tag)
        if message is not None:
            _settle(message, "release" if requeue else "ack")
        self.qos.reject(delivery_tag, requeue=False)

    def _restore(self, message: Any) -> None:
        """Give back an unacked delivery (a recover, or the channel closing): released."""
        held = self._take(message.delivery_tag)
        if held is not None:
            _give_back(held)

    def _restore_at_beginning(self, message: Any) -> None:
        self._restore(message)

    # -- queues --------------------------------------------------------------------------------

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        """Topics need no declaring."""

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.queue.purge(queue)

    def _purge(self, queue: str) -> int:
        self._transport.await_acks()
        return self.queue.purge(queue)

    def _size(self, queue: str) -> int:
        self._transport.await_acks()
        stats = self.queue.stats().get(queue)
        return 0 if stats is None else stats.ready + stats.delayed

    def close(self) -> None:
        super().close()  # restores (releases) what is unacked
        self._transport.keeper.forget(self)
        with self._lock:
            left, self._held = list(self._held.values()), {}
        for message in left:
            _give_back(message)


class _Keeper:
    """Renews the leases of every delivery the transport's channels hold, every third of
    the visibility timeout, on a daemon thread started with the first channel."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._channels: list[Channel] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, channel: Channel) -> None:
        with self._lock:
            self._channels.append(channel)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="squeal-kombu-leases", daemon=True
                )
                self._thread.start()

    def forget(self, channel: Channel) -> None:
        with self._lock, suppress(ValueError):
            self._channels.remove(channel)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        every = self._transport.visibility_timeout / 3
        while not self._stop.wait(every):
            with self._lock:
                channels = list(self._channels)
            held = [m for channel in channels for m in channel.held()]
            held += self._transport.settling()
            if not held:
                continue
            try:
                self._transport.queue.touch_many(held)
            except LeaseLost as lost:  # or acked meanwhile: a race the database settles
                log.info("squeal: %d held deliveries lost their leases", lost.lost)
            except SquealError as error:
                log.warning("squeal: renewing %d leases failed: %s", len(held), error)


class Transport(virtual.Transport):
    """kombu's transport on squeal (see the module's documentation)."""

    Channel = Channel
    driver_type = "sql"
    driver_name = "squeal"
    can_parse_url = True
    #: A claim on a single queue waits for messages itself (LISTEN on PostgreSQL).
    polling_interval = 0.0
    connection_errors = (*virtual.Transport.connection_errors, DatabaseError)  # type: ignore[assignment]
    channel_errors = (*virtual.Transport.channel_errors, DatabaseError)  # type: ignore[assignment]
    implements = virtual.Transport.implements.extend(exchange_type=frozenset(["direct", "topic"]))
    default_options: ClassVar[dict[str, Any]] = {
        "prefix": "squeal",
        "visibility_timeout": 60.0,
        "create_tables": True,
        "wait": 1.0,
        "engine_options": {},
        "url": None,
    }

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        options = {**self.default_options, **client.transport_options}
        self.prefix = str(options["prefix"])
        self.visibility_timeout = float(options["visibility_timeout"])
        self.wait = float(options["wait"])
        self._create = bool(options["create_tables"])
        self._engine_options = dict(options["engine_options"])
        self._url = options["url"] or _database_url(client)
        self._queue: Queue | None = None
        self._queue_lock = threading.Lock()
        self.keeper = _Keeper(self)
        #: Acks not committed yet (their leases still renewed), and what commits them.
        self._settling: set[InFlight] = set()
        self._completer: Completer | None = None
        self._completer_thread: threading.Thread | None = None

    @property
    def queue(self) -> Queue:
        """The squeal queue behind this connection (made at first use)."""
        with self._queue_lock:
            if self._queue is None:
                engine = sa.create_engine(self._url, **self._engine_options)
                queue = Queue(
                    engine, prefix=self.prefix, visibility_timeout=self.visibility_timeout
                )
                if self._create:
                    queue.create()
                self._queue = queue
            return self._queue

    def settle(self, message: Message) -> None:
        """Ack ``message`` at the completer's next flush (acks are committed in batches, as
        the squeal worker's: a crash before the flush costs a redelivery, never a loss)."""
        entry = InFlight(message, renew_at=0.0)
        queue = self.queue
        with self._queue_lock:
            if self._completer is None:
                self._completer = Completer(
                    queue, self._settled, every=SETTLE_EVERY, batch=SETTLE_BATCH
                )
                self._completer_thread = threading.Thread(
                    target=self._completer.run, name="squeal-kombu-acks", daemon=True
                )
                self._completer_thread.start()
            self._settling.add(entry)
            completer = self._completer
        completer.add(entry)

    def _settled(self, entries: list[InFlight], acked: int, failed: int) -> None:
        with self._queue_lock:
            self._settling.difference_update(entries)

    def await_acks(self, most: float = ACKS_AWAITED) -> None:
        """Wait (``most`` seconds at most) for the acks given so far to commit: a purge or a
        length then counts none of those messages."""
        deadline = time.monotonic() + most
        while time.monotonic() < deadline:
            with self._queue_lock:
                if not self._settling:
                    return
            time.sleep(0.001)

    def settling(self) -> list[Message]:
        """The messages whose acks wait for a flush (for the keeper)."""
        with self._queue_lock:
            return [e.message for e in self._settling if not (e.settling or e.done)]

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver what the channels may take now, waiting up to ``timeout``; when no channel
        may take anything (each holds its prefetch) give up after a short pause instead: the
        acks that would make room may be waiting for this call to return (Celery runs the
        pool's pending acks between calls)."""
        started, cycle = time.monotonic(), self.cycle
        assert cycle is not None  # made in __init__
        while True:
            try:
                cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                full = not any(ch.qos.can_consume() for ch in self.channels if ch._consumers)
                if full:
                    time.sleep(FULL_PAUSE)
                if timeout is not None and (full or time.monotonic() - started >= timeout):
                    raise TimeoutError() from None

    def close_connection(self, connection: Any) -> None:
        super().close_connection(connection)
        with self._queue_lock:
            completer, thread = self._completer, self._completer_thread
            self._completer = self._completer_thread = None
        if completer is not None and thread is not None:
            completer.close()  # commits the acks that wait
            thread.join()
        self.keeper.stop()
        with self._queue_lock:
            queue, self._queue = self._queue, None
        if queue is not None:
            queue.close()
            queue.engine.dispose()


def _database_url(client: Any) -> str:
    """The SQLAlchemy URL of a kombu connection: ``squeal+URL`` arrives as ``URL``."""
    url = str(client.hostname or "").removeprefix("squeal+")
    if "://" not in url:
        raise ValidationError(
            "squeal's kombu transport needs a database URL, e.g. "
            "'squeal+postgresql+psycopg://user@host/db', or the transport option 'url'"
        )
    return url


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def _give_back(message: Message) -> None:
    """Release a delivery's message; if that fails, its lease runs out instead (nothing is
    lost either way), so the failure is logged, not raised."""
    try:
        _settle(message, "release")
    except SquealError as error:
        log.warning("squeal: a delivery could not be released (its lease will run out): %s", error)


def _settle(message: Message, how: str) -> None:
    """Ack or release a delivery's message; a lease lost meanwhile is logged, not raised
    (the message went to another consumer: at-least-once)."""
    try:
        if how == "ack":
            message.ack()
        else:
            message.release()
    except LeaseLost as lost:
        log.warning("squeal: a delivery's lease was lost before its %s: %s", how, lost)


TRANSPORT_ALIASES["squeal"] = "squeal.kombu:Transport"

__all__ = ["Channel", "Transport", "in_transaction"]
