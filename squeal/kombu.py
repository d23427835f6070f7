"""A kombu transport on squeal: Celery's broker in the SQL database the application runs.

``broker_url = "squeal+postgresql+psycopg://user@host/db"`` (any URL squeal accepts, prefixed
``squeal+``) once this module is imported (importing it registers the ``squeal`` alias), or
``broker_transport = "squeal.kombu:Transport"`` with a URL whose scheme has no ``+`` (kombu
reads ``a+b://`` as transport ``a``): ``postgresql://...``, or the URL in the transport option
``url``.

A delivery is a squeal lease: ``basic_ack`` is squeal's ack (committed in batches), a
requeueing reject nacks without a delay (ready again at once, the attempt counted, so a task
that kills its worker ends dead after ``max_attempts``), a recover or a closing channel
releases (the attempt not counted), a reject without requeue deletes it (AMQP drops such a
message). Leases of the deliveries a worker holds are renewed
by a keeper thread, so a task may run for longer than ``visibility_timeout``; when a worker
dies its deliveries come back once their leases run out, so ``acks_late`` tasks survive
SIGKILL. Prefetch is kombu's QoS (Celery's ``worker_prefetch_multiplier``): a channel never
leases more than its QoS lets it hold. Queues are squeal topics. Bindings are squeal's
(``Queue.bind``, shared by every process): a fanout exchange (Celery's remote control and
broadcast queues) puts a copy into every bound queue in one transaction (``Queue.publish``);
a direct or topic exchange routes to the queues this process bound when one matches, else to
those bound anywhere. A queue declared with ``expires`` (x-expires) keeps its bindings only
while a process that bound it lives (renewed by its keeper thread); ``message_ttl``
(x-message-ttl) is each copy's ttl; an ``auto_delete`` queue is unbound and purged when the
channel that consumed it closes.

Transport options (``broker_transport_options``): ``url`` (the database's SQLAlchemy URL,
instead of the broker URL's), ``prefix`` (squeal's table prefix,
``"squeal"``), ``visibility_timeout`` (seconds, 60), ``create_tables`` (True: create or
upgrade squeal's tables on first use), ``wait`` (the longest a claim waits for a message on
a single queue, 1 s; several queues are polled every ``POLL`` seconds), ``engine_options`` (a
dict for :func:`sqlalchemy.create_engine`), ``publish_linger`` (None: each publish is stored
before it returns; seconds: publishes return at once and are stored together that long after
the first of them, by a :class:`squeal.linger.Linger` per connection, as a broker without
publisher confirms stores them; fanout publishes and those in :func:`in_transaction` are
stored at once; an ack, a reject and the end of each Celery task store what the process's
Lingers hold first).
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
from kombu.transport.base import to_rabbitmq_queue_arguments

from squeal.binding_keeper import BindingKeeper
from squeal.completer import Completer, InFlight
from squeal.errors import AlreadySettled, DatabaseError, LeaseLost, SquealError, ValidationError
from squeal.linger import Linger, close_all, flush_all
from squeal.message import Message
from squeal.queue import Queue
from squeal.validation import seconds

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
#: How long a drain waits for an ack or a reject to make room when every channel holds its
#: prefetch, before it returns (older Celery releases ack only between calls).
FULL_PAUSE = 0.02
#: Seconds between claims when a channel consumes several queues and all were empty.
POLL = 0.1
#: Acks are committed every SETTLE_EVERY seconds, or at once when SETTLE_BATCH wait.
SETTLE_EVERY, SETTLE_BATCH = 0.005, 200
#: How long a purge or a queue length waits for the acks given before it to commit.
ACKS_AWAITED = 2.0
#: Seconds before renewing leases again after a renewal failed.
RENEW_RETRY = 1.0


class Channel(virtual.Channel):
    """A kombu channel whose queues are squeal topics and whose deliveries are leases."""

    connection: Transport
    do_restore = True

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self._transport = connection
        self._next = 0  # round-robin start among the active queues
        #: Queues consumed without acks: a delivery from them is acked as it is handed out.
        self._noack_queues: set[str] = set()
        #: The delivery tags this channel handed out that may still be held (see close).
        self._tags: set[str] = set()
        #: The arguments each queue was declared with (x-expires, x-message-ttl, auto_delete).
        self._declared: dict[str, dict[str, Any]] = {}
        #: The queues this channel consumed (an auto_delete one goes when the channel closes).
        self._consumed: set[str] = set()

    @property
    def queue(self) -> Queue:
        return self._transport.queue

    # -- publishing ------------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        priority = self._get_message_priority(message)
        caller = _CALLERS.get()
        linger = None if caller is not None else self._transport.linger
        if linger is not None:
            linger.put(_encode(message), queue, priority=priority)
            return
        self._transport.flush_sends()  # after what this connection sent lingering
        self.queue.put(_encode(message), queue, priority=priority, connection=caller)

    def _put_fanout(
        self, exchange: str, message: dict[str, Any], routing_key: str, **_: Any
    ) -> None:
        """A copy into every queue bound to ``exchange``, in one transaction."""
        priority = self._get_message_priority(message)
        self._transport.flush_sends()  # after what this connection sent lingering
        self.queue.publish(_encode(message), exchange, priority=priority, connection=_CALLERS.get())

    # -- exchanges and bindings ----------------------------------------------------------------

    supports_fanout = True

    def prepare_queue_arguments(self, arguments: Any, **kwargs: Any) -> Any:
        """``expires`` and ``message_ttl`` as x-expires and x-message-ttl (milliseconds)."""
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: Any, queue: str) -> None:
        """Record the binding in squeal's table, where every process routes by it.

        An x-expires queue's binding (a consumer's mailbox) is bound with that lifetime and
        renewed while this process lives. Any other binding is written only if the table
        lacks it, so a producer declaring a worker's queue (Celery's ``.delay()``) only reads;
        if it cannot be written (a role without the GRANT, a declare inside
        :func:`in_transaction`, which must not lock a row shared by every sender for the
        caller's transaction), this process still routes by it and says so in a warning.
        """
        key = routing_key or ""
        arguments = self._declared.get(queue, {}).get("arguments") or {}
        ttl = _seconds(arguments.get("x-message-ttl"))
        expires = _seconds(arguments.get("x-expires"))
        binding = (exchange, key, queue)
        if expires is None:
            self._record(binding, ttl)
            return
        self._transport.bindings.keep(binding, ttl, expires)  # first: if this bind fails,
        try:  # a renewal binds it
            self.queue.bind(exchange, queue, key=key, ttl=ttl, expires=expires)
        except ValidationError:  # no renewal would do better
            self._transport.bindings.forget(binding)
            raise

    def _record(self, binding: tuple[str, str, str], ttl: float | None) -> None:
        exchange, key, queue = binding
        if _CALLERS.get() is not None:
            log.warning(
                "squeal: the binding of %r to %r, declared inside in_transaction, is not "
                "recorded (this process routes by it; consumers bind their own queues)",
                queue,
                exchange,
            )
            return
        try:
            for bound in self.queue.bindings(exchange):
                if (bound.key, bound.topic) == (key, queue):  # as it is (another process's
                    return  # own, perhaps with a lifetime it renews)
            self.queue.bind(exchange, queue, key=key, ttl=ttl)
        except DatabaseError as error:
            log.warning(
                "squeal: the binding of %r to %r was not recorded (this process routes by it): %s",
                queue,
                exchange,
                error,
            )

    def queue_unbind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        """Remove the binding here and from squeal's table."""
        exchange = exchange or "amq.direct"
        self._transport.bindings.unbind(self.queue, (exchange, routing_key or "", queue))
        self.state.binding_delete(queue, exchange, routing_key)
        meta = self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)
        _drop_local(self.state, (exchange, routing_key or "", queue), tuple(meta))

    def get_table(self, exchange: str) -> list[tuple[str, Any, str]]:
        """The exchange's bindings: this process's, then those of every process."""
        kind = self.typeof(exchange)
        table = list(self.state.exchanges.get(exchange, {}).get("table", []))
        for binding in self.queue.bindings(exchange):
            meta = kind.prepare_bind(binding.topic, exchange, binding.key, None)
            if meta not in table:
                table.append(meta)
        return table

    def _lookup(self, exchange: str, routing_key: str, default: Any = None) -> list[str]:
        """The queues a publish reaches. Direct and topic exchanges: those this process
        bound, when one matches (no database read when sending a task; bindings of other
        processes are then not looked at), else those bound anywhere. Fanout: every queue
        bound anywhere."""
        kind = self.typeof(exchange)
        if exchange and kind.type != "fanout" and exchange in self.state.exchanges:
            local = self.state.exchanges[exchange].get("table", [])
            found = kind.lookup(local, exchange, routing_key, None)
            if found:
                return list(found)
        return list(super()._lookup(exchange, routing_key, default))

    # -- consuming ---------------------------------------------------------------------------

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        if no_ack:
            self._noack_queues.add(queue)
        self._consumed.add(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        if queue is not None:
            self._noack_queues.discard(queue)
        return super().basic_cancel(consumer_tag)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            message = self.Message(self._get(queue, no_ack=no_ack), channel=self)
        except Empty:
            return None
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _get(
        self, queue: str, timeout: float | None = None, no_ack: bool = False
    ) -> dict[str, Any]:
        while got := self.queue.get_many(queue, 1):
            payload = self._delivery(got[0], no_ack or queue in self._noack_queues)
            if payload is not None:
                return payload
        raise Empty()

    def _get_many(self, queues: list[str], timeout: float | None = None) -> None:
        """Lease what kombu's QoS lets this channel take, from the first of ``queues`` (in
        turn) that has messages, and deliver it; raise Empty when none has any (after a
        claim that waited, or a pause of ``POLL`` seconds)."""
        room = self.qos.can_consume_max_estimate()
        most = MOST_PER_CLAIM if room is None else max(1, min(int(room), MOST_PER_CLAIM))
        order = queues[self._next :] + queues[: self._next]
        self._next = (self._next + 1) % max(1, len(queues))
        most_wait = self._transport.wait
        wait = most_wait if timeout is None else min(timeout, most_wait)
        for queue in order:
            got = self.queue.get_many(queue, most, wait=wait if len(queues) == 1 else 0.0)
            if got:
                self._hand_out(queue, got)
                return
        if len(queues) > 1:
            time.sleep(min(POLL, wait))
        raise Empty()

    def _hand_out(self, queue: str, got: list[Message]) -> None:
        """Deliver ``got`` to the queue's consumer; if a delivery raises, that message is
        nacked (the attempt counted) and the rest, never handed out, released."""
        no_ack = queue in self._noack_queues
        index, tag = 0, ""
        try:
            for index, message in enumerate(got):  # noqa: B007 - read after a failure
                tag = ""
                payload = self._delivery(message, no_ack)
                if payload is not None:
                    tag = payload["properties"]["delivery_tag"]
                    self._transport._deliver(payload, queue)
        except BaseException as error:
            failed = self._transport.take(tag) if tag else None
            if failed is not None:
                _nack(failed, f"its delivery failed: {type(error).__name__}: {error}")
            for message in got[index + 1 :]:
                _give_back(message)
            raise

    def _delivery(self, message: Message, no_ack: bool) -> dict[str, Any] | None:
        """kombu's message dict for a leased squeal message, with a delivery tag of its own
        (a redelivery is another delivery), held until it is settled; acked at once for a
        consumer without acks. None for a message that is not kombu's (put on the topic by
        something else, or damaged): nacked with the reason, so it dies after its attempts
        instead of stopping the consumer."""
        try:
            payload = _decoded(message.payload)
            self.Message(dict(payload), channel=self)  # what kombu will do with it
        except Exception as error:
            log.warning("squeal: message %d of %r is not kombu's", message.id, message.topic)
            _nack(message, f"not a kombu message: {type(error).__name__}: {error}")
            return None
        tag = uuid.uuid4().hex
        payload["properties"]["delivery_tag"] = tag
        redelivered = message.attempts > 1
        payload["redelivered"] = redelivered
        payload["properties"]["delivery_info"]["redelivered"] = redelivered
        if no_ack:
            self._transport.settle(message)
        else:
            self._transport.hold(tag, message)
            self._tags.add(tag)
        return payload

    # -- settling ----------------------------------------------------------------------------

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        _flush_all()  # what this process sent (a task's sends) is stored before the ack
        tags = [delivery_tag]
        if multiple:  # every delivery up to this one, in delivery order (AMQP)
            delivered = list(self.qos._delivered)
            if delivery_tag in delivered:
                tags = delivered[: delivered.index(delivery_tag) + 1]
        for tag in tags:
            self._tags.discard(tag)
            message = self._transport.take(tag)
            if message is not None:
                self._transport.settle(message)
            super().basic_ack(tag)
        self._transport.room.set()

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        _flush_all()  # as for an ack
        self._tags.discard(delivery_tag)
        message = self._transport.take(delivery_tag)
        try:
            if message is not None and requeue:
                _nack(message, "rejected with requeue", delay=0.0)
            elif message is not None:
                _settle(message, "ack")
        except SquealError as error:  # its lease runs out instead: redelivered
            log.warning("squeal: a rejected delivery was not settled: %s", error)
        finally:
            self.qos.reject(delivery_tag, requeue=False)
            self._transport.room.set()

    def _restore(self, message: Any) -> None:
        """Give back an unacked delivery (a recover, or the channel closing): released."""
        self._tags.discard(message.delivery_tag)
        held = self._transport.take(message.delivery_tag)
        if held is not None:
            _give_back(held)

    def _restore_at_beginning(self, message: Any) -> None:
        self._restore(message)

    # -- queues --------------------------------------------------------------------------------

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        """Topics need no declaring; the arguments are kept for the queue's bindings."""
        self._declared[queue] = kwargs

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        """Unbind the queue (kombu's queue_delete calls this once per binding, with
        ``exchange, routing_key, pattern, queue``) and delete its messages."""
        if args and args[0]:
            binding = (str(args[0]), str(args[1] or "") if len(args) > 1 else "", queue)
            self._transport.bindings.unbind(self.queue, binding)
            _drop_local(self.state, binding, tuple(args[1:]))
        self._purge(queue)

    def _purge(self, queue: str) -> int:
        """Delete the topic's messages: every one, leased and dead ones too (docs/celery.md)."""
        self._transport.flush_sends()
        self._transport.await_acks()
        return self.queue.purge(queue)

    def _size(self, queue: str) -> int:
        """Messages of the queue ready now (AMQP's message count: not those leased)."""
        self._transport.flush_sends()
        self._transport.await_acks()
        return self.queue.size(queue)

    def close(self) -> None:
        doomed: list[tuple[str, list[tuple[str, str, Any]]]] = []
        state = None
        if not self.closed:  # the auto_delete queues it consumed, and their bindings here
            state = self.state  # (typeof and state are gone after the close)
            doomed = [
                (
                    queue,
                    [
                        (
                            exchange,
                            key,
                            self.typeof(exchange).prepare_bind(queue, exchange, key, args),
                        )
                        for exchange, key, args in state.queue_bindings(queue)
                    ],
                )
                for queue in sorted(self._consumed)
                if self._declared.get(queue, {}).get("auto_delete")
            ]
        super().close()  # restores (releases) what is unacked
        for tag in list(self._tags):  # handed out, never tracked by the QoS
            held = self._transport.take(tag)
            if held is not None:
                _give_back(held)
        self._tags.clear()
        for queue, bindings in doomed:
            self._delete_queue(queue, bindings)
            if state is not None:
                for exchange, key, meta in bindings:
                    _drop_local(state, (exchange, key or "", queue), tuple(meta))
                state.queue_bindings_delete(queue)

    def _delete_queue(self, queue: str, bindings: list[tuple[str, str, Any]]) -> None:
        """An auto_delete queue whose consumer's channel closed (after it released what it
        held): unbound everywhere and purged, as AMQP deletes it with its last consumer.
        Name such queues per process, as Celery does (its mailboxes and reply queues)."""
        try:
            for exchange, routing_key, _ in bindings:
                binding = (exchange, routing_key or "", queue)
                self._transport.bindings.unbind(self.queue, binding)
            self._transport.flush_sends()
            self.queue.purge(queue)
        except SquealError as error:  # its bindings expire, if it declared x-expires
            log.warning("squeal: auto_delete queue %r was not deleted: %s", queue, error)


class Transport(virtual.Transport):
    """kombu's transport on squeal (see the module's documentation)."""

    Channel = Channel
    driver_type = "sql"
    driver_name = "squeal"
    can_parse_url = True
    #: A claim waits for messages itself (LISTEN on PostgreSQL; ``POLL`` for several queues).
    polling_interval = 0.0
    connection_errors = (*virtual.Transport.connection_errors, DatabaseError)  # type: ignore[assignment]
    channel_errors = (*virtual.Transport.channel_errors, DatabaseError)  # type: ignore[assignment]
    implements = virtual.Transport.implements.extend(
        exchange_type=frozenset(["direct", "topic", "fanout"])
    )
    default_options: ClassVar[dict[str, Any]] = {
        "prefix": "squeal",
        "visibility_timeout": 60.0,
        "create_tables": True,
        "wait": 1.0,
        "engine_options": {},
        "url": None,
        "publish_linger": None,
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
        linger = options["publish_linger"]
        self.publish_linger = None if linger is None else seconds(linger, "publish_linger")
        self._linger: Linger | None = None
        self._queue: Queue | None = None
        self._lock = threading.Lock()
        self._closed = False
        #: The squeal message behind each delivery held by any channel, by delivery tag.
        self._held: dict[str, Message] = {}
        #: Acks not committed yet (their leases still renewed), and what commits them.
        self._settling: set[InFlight] = set()
        self._completer: Completer | None = None
        self._completer_thread: threading.Thread | None = None
        self._keeper: threading.Thread | None = None
        self._stop_keeper = threading.Event()
        #: The bindings with a lifetime (x-expires) this process renews while it lives.
        self.bindings = BindingKeeper(lambda: self._queue)
        #: Set when an ack or a reject makes room in a channel's prefetch.
        self.room = threading.Event()

    @property
    def queue(self) -> Queue:
        """The squeal queue behind this connection (made at first use)."""
        with self._lock:
            if self._queue is None:
                engine = sa.create_engine(self._url, **self._engine_options)
                queue = Queue(
                    engine, prefix=self.prefix, visibility_timeout=self.visibility_timeout
                )
                if self._create:
                    queue.create()
                self._queue = queue
            return self._queue

    @property
    def linger(self) -> Linger | None:
        """What sends lingering publishes (``publish_linger``), made at first use; None
        when each publish is stored before it returns."""
        if self.publish_linger is None:
            return None
        queue = self.queue
        with self._lock:
            if self._linger is None and not self._closed:
                self._linger = Linger(queue, linger=self.publish_linger)
            return self._linger

    def flush_sends(self) -> None:
        """Store what this connection sent lingering (before anything that must follow it:
        a purge, a length, a send that is not lingering); not inside :func:`in_transaction`,
        whose transaction may hold locks the store needs (SQLite's write lock)."""
        with self._lock:
            linger = self._linger
        if linger is not None and _CALLERS.get() is None:
            linger.flush()

    # -- held deliveries and their leases ------------------------------------------------------

    def hold(self, tag: str, message: Message) -> None:
        """Keep ``message`` (delivery ``tag``) leased until it is settled."""
        with self._lock:
            self._held[tag] = message
            if self._keeper is None and not self._closed:
                self._keeper = threading.Thread(
                    target=self._keep, name="squeal-kombu-leases", daemon=True
                )
                self._keeper.start()

    def take(self, tag: str) -> Message | None:
        """The held message of delivery ``tag`` (no longer held), if any."""
        with self._lock:
            return self._held.pop(tag, None)

    def _keep(self) -> None:
        """Renew the leases of held deliveries and of acks not committed yet, every third of
        the visibility timeout (sooner again after a failure)."""
        every = self.visibility_timeout / 3
        while not self._stop_keeper.wait(every):
            with self._lock:
                queue = self._queue
                held = [*self._held.values()]
                held += [e.message for e in self._settling if not (e.settling or e.done)]
            held = [m for m in held if not (m.settled or m.pending)]
            if queue is None or not held:
                continue
            every = self.visibility_timeout / 3 if _renew(queue, held) else RENEW_RETRY

    # -- acks ----------------------------------------------------------------------------------

    def settle(self, message: Message) -> None:
        """Ack ``message`` at the completer's next flush (acks are committed in batches, as
        the squeal worker's: a crash before the flush costs a redelivery, never a loss)."""
        with self._lock:
            closed = self._closed
        queue = None if closed else self.queue
        entry = InFlight(message, renew_at=0.0)
        with self._lock:
            if queue is not None and not self._closed and self._completer is None:
                self._completer = Completer(
                    queue, self._settled, every=SETTLE_EVERY, batch=SETTLE_BATCH
                )
                self._completer_thread = threading.Thread(
                    target=self._completer.run, name="squeal-kombu-acks", daemon=True
                )
                self._completer_thread.start()
            completer = self._completer
            if completer is not None:
                self._settling.add(entry)
        if completer is None:  # closed: at once
            _settle(message, "ack")
        else:
            completer.add(entry)

    def _settled(self, entries: list[InFlight], acked: int, failed: int) -> None:
        with self._lock:
            self._settling.difference_update(entries)

    def await_acks(self, most: float = ACKS_AWAITED) -> None:
        """Wait (``most`` seconds at most) for the acks given so far to commit: a purge or a
        length then counts none of those messages."""
        deadline = time.monotonic() + most
        while time.monotonic() < deadline:
            with self._lock:
                if not self._settling:
                    return
            time.sleep(0.001)

    # -- the connection ------------------------------------------------------------------------

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver what the channels may take now, waiting up to ``timeout``. When no channel
        may take anything (each holds its prefetch), wait for an ack or a reject to make room
        (Celery 5.7 acks from the pool's threads, ``call_soon_ack``), and give up after a
        short pause if none does: the acks may be waiting for this call to return (older
        Celery runs the pool's acks between calls)."""
        started, cycle = time.monotonic(), self.cycle
        assert cycle is not None  # made in __init__
        while True:
            self.room.clear()  # before looking: an ack from now on wakes the wait below
            try:
                cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                full = not any(ch.qos.can_consume() for ch in self.channels if ch._consumers)
                if full and not self.room.wait(FULL_PAUSE) and timeout is not None:
                    raise TimeoutError() from None
                if timeout is not None and time.monotonic() - started >= timeout:
                    raise TimeoutError() from None

    def close_connection(self, connection: Any) -> None:
        super().close_connection(connection)  # the channels release what they hold
        with self._lock:
            self._closed = True
            linger, self._linger = self._linger, None
        if linger is not None:
            linger.close()  # stores what waits
        with self._lock:
            completer, thread = self._completer, self._completer_thread
            self._completer = self._completer_thread = None
            keeper, self._keeper = self._keeper, None
        if completer is not None and thread is not None:
            completer.close()  # commits the acks that wait
            thread.join()
        self._stop_keeper.set()
        self.bindings.close()
        if keeper is not None:
            keeper.join()
        with self._lock:
            queue, self._queue = self._queue, None
        if queue is not None:
            queue.close()
            queue.engine.dispose()


def _renew(queue: Queue, held: list[Message]) -> bool:
    """Extend ``held``'s leases; False when the database could not be asked (try again soon).
    A message settled meanwhile (by the completer, a reject) is not an error."""
    try:
        queue.touch_many(held)
    except AlreadySettled:
        for message in held:  # one by one: the settled ones are skipped
            with suppress(AlreadySettled, LeaseLost):
                if not message.settled:
                    queue.touch_many([message])
    except LeaseLost as lost:  # or acked meanwhile: a race the database settles
        log.info("squeal: %d held deliveries lost their leases", lost.lost)
    except SquealError as error:
        log.warning("squeal: renewing %d leases failed (tried again): %s", len(held), error)
        return False
    return True


def _drop_local(state: Any, binding: tuple[str, str, str], meta: tuple[Any, ...]) -> None:
    """Remove a binding's entry from kombu's routing table of its exchange, in place (the
    state holds the list); every copy of it (a queue declared again appends one)."""
    table = state.exchanges.get(binding[0], {}).get("table")
    if table is not None:
        table[:] = [m for m in table if tuple(m) != meta]


def _seconds(milliseconds: Any) -> float | None:
    """A queue argument in milliseconds (x-expires, x-message-ttl) as seconds."""
    return None if milliseconds is None else float(milliseconds) / 1000


def _decoded(raw: bytes) -> dict[str, Any]:
    """A kombu message dict as the transport stored it, its parts checked."""
    payload = json.loads(raw)
    if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
        raise ValueError("no kombu message body")
    properties = payload.setdefault("properties", {})
    if not isinstance(properties, dict):
        raise ValueError("its properties are not a mapping")
    if not isinstance(properties.setdefault("delivery_info", {}), dict):
        raise ValueError("its delivery_info is not a mapping")
    return payload


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


def _nack(message: Message, reason: str, delay: float | None = None) -> None:
    """Nack a delivery's message (its attempt counted), logging instead of raising."""
    try:
        message.nack(error=reason, delay=delay)
    except SquealError as error:
        log.warning("squeal: a delivery could not be nacked (its lease will run out): %s", error)


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


def _connect_celery_signals() -> None:
    """With Celery installed: after each task, store what it sent lingering (in the task's
    own process, before an ``acks_late`` ack can commit in the pool's parent), and close
    every Linger when a pool process ends (billiard ends them without ``atexit``)."""
    try:
        from celery import signals
    except ImportError:  # kombu without Celery
        return
    signals.task_postrun.connect(_flush_all, weak=False, dispatch_uid="squeal.kombu.linger")
    signals.worker_process_shutdown.connect(
        _process_ends, weak=False, dispatch_uid="squeal.kombu.linger"
    )


def _flush_all(**_: Any) -> None:
    """Store what every Linger of the process holds; not inside :func:`in_transaction` (see
    Transport.flush_sends). Also Celery's ``task_postrun`` receiver."""
    if _CALLERS.get() is None:
        flush_all()


def _process_ends(**_: Any) -> None:
    close_all()


_connect_celery_signals()

TRANSPORT_ALIASES["squeal"] = "squeal.kombu:Transport"

__all__ = ["Channel", "Transport", "in_transaction"]
