"""Queue: the user-facing operations (semantics: README.md, docs/guarantees.md)."""

from __future__ import annotations

import dataclasses
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from squeal import log, observe
from squeal import validation as check
from squeal.admin import AdminStatements
from squeal.bridge import sync_engine
from squeal.claim_scope import ClaimScopes
from squeal.dialects import health_for, locking_for, resolve_schema, strategy_for, windows_for
from squeal.dialects.base import ClaimedRow, ClaimScope, in_claim_order
from squeal.dialects.dedup import SWEEP_EVERY
from squeal.dialects.health import Finding
from squeal.errors import DatabaseError, InvalidType, LeaseLost, ValidationError
from squeal.exchange import Binding, Exchanges
from squeal.executor import Executor
from squeal.flow import FlowStatements
from squeal.limits import UNSET, Limit, LimitStatements
from squeal.message import (
    DeadMessage,
    Message,
    PeekedMessage,
    StoredMessage,
    TopicStats,
    error_text,
    from_ms,
    parse_headers,
)
from squeal.registry import Registry, WorkerInfo
from squeal.schedules import BATCH as SCHEDULE_BATCH
from squeal.schedules import Schedule, ScheduleStatements, when
from squeal.schema import READY, WAITING, build_tables, text_value
from squeal.session import Session, wrap
from squeal.topic_lock import TopicLock, TopicLocks
from squeal.waiting import Poller, waiter_for

S = TypeVar("S", bound=StoredMessage)

#: Deliveries before a failing message is dead. With failure_base_delay=1 and
#: max_failure_delay=3600 the 24 backoffs add up to 10-13 hours (jittered): long enough to
#: outlast a dependency's overnight outage, short enough that a poison message or a crash loop
#: is dead within a day instead of retrying forever. River and Sidekiq use 25, Oban 20.
DEFAULT_MAX_ATTEMPTS = 25
#: Stands for "no limit" in SQL that compares attempts (max_attempts=None).
_UNLIMITED_ATTEMPTS = 2**31 - 1
#: Rows per INSERT statement, and payload bytes per statement (MySQL's max_allowed_packet).
_BATCH_ROWS = 1000
_BATCH_BYTES = 4 * 1024 * 1024


class Queue:
    """A message queue stored in the tables of ``prefix`` in ``engine``'s database.

    Args:
        engine: the application's SQLAlchemy Engine (PostgreSQL, MySQL/MariaDB or SQLite).
        prefix: table-name prefix; lowercase letters, digits and ``_``.
        schema: the schema (MySQL/MariaDB: database) of the tables; default: what the engine's
            ``schema_translate_map`` maps unqualified tables to, else the connection's default.
            SQLite has none.
        visibility_timeout: seconds a claimed message stays leased before it is redelivered.
        new_message_delay: default seconds before a new message becomes visible.
        failure_base_delay: backoff after the first failed attempt; doubles per attempt.
        max_failure_delay: upper bound of the backoff.
        max_attempts: deliveries before a failing message becomes dead (default 25: with the
            default backoff about half a day of retries); None means unlimited.
        max_payload_size: largest payload in bytes (default 1 MiB, at most 512 MiB).
        notify: PostgreSQL only: puts send a wake-up notification and ``get(wait=...)``
            listens for it on a dedicated connection (False: plain polling, no NOTIFY).
        topic_lock_timeout: seconds a topic lock (:meth:`acquire_topic`) lasts unless touched (900).
        dedup_window: seconds a put's ``dedup_key`` keeps blocking puts of that key in its
            topic, even after its message is acked (docs/dedup.md); None or 0: only while the
            message lives. Give every queue object of one prefix the same window.

    Raises:
        ValueError / TypeError (squeal.ValidationError / squeal.InvalidType): a bad option.
        UnsupportedDatabase: the engine's dialect is not supported.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        prefix: str = "squeal",
        schema: str | None = None,
        visibility_timeout: float = 60.0,
        new_message_delay: float = 0.0,
        failure_base_delay: float = 1.0,
        max_failure_delay: float = 3600.0,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        max_payload_size: int = 1_048_576,
        notify: bool = True,
        topic_lock_timeout: float = 900.0,
        dedup_window: float | None = None,
    ) -> None:
        engine = sync_engine(engine, instead="squeal.aio.AsyncQueue", used_now=False)
        self._tables = build_tables(prefix, resolve_schema(engine, schema))
        self.visibility_timeout = check.seconds(
            visibility_timeout, "visibility_timeout", positive=True
        )
        self.new_message_delay = check.seconds(new_message_delay, "new_message_delay")
        self.failure_base_delay = check.seconds(failure_base_delay, "failure_base_delay")
        self.max_failure_delay = check.seconds(max_failure_delay, "max_failure_delay")
        self.max_attempts = (
            None if max_attempts is None else check.count(max_attempts, "max_attempts")
        )
        self.max_payload_size = check.count(
            max_payload_size, "max_payload_size", maximum=check.MAX_PAYLOAD_LIMIT
        )
        self.topic_lock_timeout = check.seconds(
            topic_lock_timeout, "topic_lock_timeout", positive=True
        )
        self._strategy = strategy_for(engine, self._tables, notify=bool(notify))
        self._admin = AdminStatements(self._tables, self._strategy.topic_scan)
        self._flow = FlowStatements(self._strategy, self._tables)
        self._limits = LimitStatements(self._flow, self._tables)
        #: Topics this object found limited: claimed under their limit (squeal.limits).
        self._limited: set[str] = set()
        self._schedules = ScheduleStatements(self._strategy, self._tables)
        self._session = Session(engine, self._strategy, self._tables)
        self._registry = Registry(self._session, self._strategy, self._tables)
        self._exchanges = Exchanges(self._strategy, self._tables)
        locking = locking_for(
            engine.dialect, self._tables, self._admin.ready_kinds, self._strategy.topic_scan
        )
        self._topic_locks = TopicLocks(self, self._session, locking)
        self._settler = _Settlement(self)
        self._scopes = ClaimScopes()
        self._waiter: Poller | None = None
        self._waiter_lock = threading.Lock()
        window = None if dedup_window is None else check.seconds(dedup_window, "dedup_window")
        self.dedup_window = window or None
        self._windows = windows_for(engine.dialect, self._tables)
        #: Keys recorded by this object's windowed puts, for sweeping expired ones now and then.
        self._window_keys = 0

    # -- identity -------------------------------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """The engine this queue stores its messages through."""
        return self._session.engine

    @property
    def prefix(self) -> str:
        """The table-name prefix."""
        return self._tables.prefix

    @property
    def schema(self) -> str | None:
        """The schema of the tables (None: the connection's default)."""
        return self._tables.schema

    @property
    def _max_attempts(self) -> int:
        return _UNLIMITED_ATTEMPTS if self.max_attempts is None else self.max_attempts

    def __repr__(self) -> str:
        where = "" if self.schema is None else f" schema={self.schema!r}"
        return f"<Queue prefix={self.prefix!r}{where} {self.engine.url.render_as_string()}>"

    def close(self) -> None:
        """Close the database connections this queue keeps (it reopens them if used again).

        Topic locks stay held until they run out; call :meth:`release_topics` first to free
        them at once.
        """
        self._session.close()
        with self._waiter_lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.close()

    # -- schema ---------------------------------------------------------------------------------

    def create(self) -> None:
        """Create or upgrade squeal's tables, running the same migrations as ``alembic upgrade``.

        Raises:
            UnsupportedDatabase: the server is too old (checked before any DDL).
            DatabaseError: the migration failed (for example, missing privileges).
        """
        from squeal import migrate

        self._migrating(
            lambda: migrate.upgrade(self.engine, prefix=self.prefix, schema=self.schema), "create"
        )

    def destroy(self) -> None:
        """Drop every table squeal created for this prefix, messages included.

        Raises:
            DatabaseError: the migration failed (for example, missing privileges).
        """
        from squeal import migrate

        self._migrating(
            lambda: migrate.downgrade(
                self.engine,
                prefix=self.prefix,
                schema=self.schema,
                revision="base",
                drop_version_table=True,
            ),
            "destroy",
        )

    def _migrating(self, run: Callable[[], object], action: str) -> None:
        try:
            run()
        except sa.exc.SQLAlchemyError as error:
            failure = wrap(error, f"Queue.{action}()")
        else:
            self._session.forget_schema()
            # Tables made afresh restart their ids: floors remembered from the old ones would
            # hide the new messages from this object's next claims.
            self._scopes = ClaimScopes()
            return
        raise failure  # outside the except block: no original error in __context__

    # -- producing ------------------------------------------------------------------------------

    def put(
        self,
        payload: bytes,
        topic: str = "default",
        *,
        priority: int = 0,
        delay: float | None = None,
        dedup_key: str | None = None,
        ttl: float | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        connection: sa.Connection | None = None,
    ) -> int | None:
        """Enqueue one message.

        Args:
            payload: bytes-like, at most ``max_payload_size`` bytes.
            topic: 1-255 characters, compared exactly.
            priority: signed 32-bit int; higher is delivered first.
            delay: seconds before it becomes visible (default ``new_message_delay``).
            dedup_key: when a live message of this topic has the same key, or the key's
                ``dedup_window`` has not run out, nothing is enqueued.
            ttl: seconds the message may wait to be claimed once it is visible (after any
                ``delay``); not claimed by then, it dies unclaimed: it is never delivered and
                is listed by :meth:`dead` (docs/state_machine.md). None: no limit.
            max_attempts: deliveries before it dies when it keeps failing, instead of the
                queue's ``max_attempts`` (None: the queue's).
            headers: a small map of str to str stored with it and returned on the Message
                (``msg.headers``): correlation ids, content types, trace context; names of
                1-255 characters, at most 8 KiB as stored (JSON).
            connection: a Connection inside the caller's transaction: the message exists only
                if the caller commits.

        Returns:
            The new message's id, or None when ``dedup_key`` deduplicated it.

        Raises:
            ValueError / TypeError: invalid input; nothing was sent to the database.
            PutOutcomeUnknown: the connection dropped after the put was sent, so it may have
                been stored (not tried again without a ``dedup_key``: that could store it twice).
        """
        shared = self._shared(
            topic, priority, delay, ttl=ttl, max_attempts=max_attempts, headers=headers
        )
        data = check.payload(payload, self.max_payload_size)
        key = check.optional_text(dedup_key, "dedup_key")
        conn = check.connection(connection)
        window = self.dedup_window
        if window is not None and key is not None:
            msg_id = self._put_windowed(shared, [data], [key], conn, window)[0]
        else:
            insert = self._strategy.insert
            msg_id = self._session.write(
                lambda ex: insert(ex, shared, [data], [key]), conn, idempotent=key is not None
            )[0]
        log.put(shared["topic"], [msg_id], [key], conn is not None)
        return msg_id

    def put_many(
        self,
        payloads: Sequence[bytes],
        topic: str = "default",
        *,
        priority: int = 0,
        delay: float | None = None,
        dedup_keys: Sequence[str | None] | None = None,
        ttl: float | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        connection: sa.Connection | None = None,
    ) -> list[int | None]:
        """Enqueue several messages of one topic, all or nothing (the options as for
        :meth:`put`, shared by every message).

        Returns:
            One id per payload, in order; None where a dedup key deduplicated it (against a
            live message, the key's dedup window, or an earlier payload of the same batch).

        Raises:
            ValueError / TypeError: invalid input anywhere in the batch; nothing was written.
            PutOutcomeUnknown: as for :meth:`put` (all of the batch or none of it is stored).
        """
        items = check.sequence(payloads, "payloads")
        limit = self.max_payload_size
        data = [check.payload(p, limit) for p in items]
        if dedup_keys is None:
            keys: list[str | None] = [None] * len(data)
        else:
            keys = [
                check.optional_text(k, "dedup_key")
                for k in check.sequence(dedup_keys, "dedup_keys")
            ]
            if len(keys) != len(data):
                raise ValidationError(
                    f"dedup_keys has {len(keys)} entries for {len(data)} payloads"
                )
        shared = self._shared(
            topic, priority, delay, ttl=ttl, max_attempts=max_attempts, headers=headers
        )
        conn = check.connection(connection)
        if not data:
            return []
        # The first payload of each key goes in; later ones of the same key are duplicates.
        first: list[bool] | None = None
        unique_data, unique_keys = data, keys
        if any(k is not None for k in keys):
            seen: set[str] = set()
            first = []
            for k in keys:
                first.append(k is None or k not in seen)
                if k is not None:
                    seen.add(k)
            unique_data = [p for p, ok in zip(data, first, strict=True) if ok]
            unique_keys = [k for k, ok in zip(keys, first, strict=True) if ok]
        window = self.dedup_window
        if window is not None and first is not None:
            ids = self._put_windowed(shared, unique_data, unique_keys, conn, window)
        else:
            ids = self._session.write(
                lambda ex: self._insert_chunks(ex, shared, unique_data, unique_keys),
                conn,
                atomic=not self._one_statement(unique_data),
                idempotent=None not in unique_keys,
            )
        inserted = iter(ids)
        result = ids if first is None else [next(inserted) if ok else None for ok in first]
        log.put(shared["topic"], result, keys, conn is not None)
        return result

    def _put_windowed(
        self,
        shared: dict[str, Any],
        payloads: list[bytes],
        keys: list[str | None],
        conn: sa.Connection | None,
        window: float,
    ) -> list[int | None]:
        """Insert messages (keys unique among them) whose keys win their dedup window.

        One transaction: claim the keys' windows (see squeal/dialects/dedup.py), insert the
        messages of the keys won and of those without a key, and give back the windows of
        keys a live message still holds. Returns one id or None per message.
        """
        topic, windows = shared["topic"], self._windows
        window_ms = check.to_ms(window)
        claimed = [k for k in keys if k is not None]

        def put(ex: Executor) -> list[int | None]:
            won = windows.claim(ex, topic, claimed, window_ms)
            admit = [k is None or k in won for k in keys]
            in_data = [p for p, ok in zip(payloads, admit, strict=True) if ok]
            in_keys = [k for k, ok in zip(keys, admit, strict=True) if ok]
            ids = self._insert_chunks(ex, shared, in_data, in_keys) if in_data else []
            by_row = iter(ids)
            result = [next(by_row) if ok else None for ok in admit]
            # A live message holds these keys, so their puts were not accepted after all.
            held = [k for k, ok, i in zip(keys, admit, result, strict=True) if ok and i is None]
            if held:
                ex.count(windows.forget, {"dedup_topic": topic, "dedup_keys": held})
            return result

        result = self._session.write(put, conn, atomic=True)
        if conn is None:
            self._count_window_keys(len(claimed))
        return result

    def _insert_chunks(
        self, ex: Executor, shared: dict[str, Any], payloads: list[bytes], keys: list[str | None]
    ) -> list[int | None]:
        """Insert in statements of bounded size (``_chunks``); one id or None per message."""
        insert = self._strategy.insert
        if _fits_one_insert(payloads):
            return insert(ex, shared, payloads, keys)
        ids: list[int | None] = []
        for start, end in _chunks(payloads):
            ids.extend(insert(ex, shared, payloads[start:end], keys[start:end]))
        return ids

    def _one_statement(self, payloads: list[bytes]) -> bool:
        """True when one INSERT statement stores all of ``payloads`` (else: a transaction)."""
        return _fits_one_insert(payloads) and self._strategy.insert_statements(len(payloads)) == 1

    def _count_window_keys(self, n: int) -> None:
        """Sweep expired dedup rows after every SWEEP_EVERY keys recorded (on our connection)."""
        before = self._window_keys
        self._window_keys = after = before + n
        if after // SWEEP_EVERY == before // SWEEP_EVERY:
            return
        try:
            swept = self._session.write(
                self._windows.sweep, None, atomic=self._windows.sweep_is_atomic
            )
        except DatabaseError as error:  # housekeeping: the put itself has committed
            log.event("dedup_sweep_failed", log.WARNING, error=str(error))
            return
        log.event("dedup_sweep", deleted=swept)

    def _shared(
        self,
        topic: object,
        priority: object,
        delay: object,
        *,
        ttl: object = None,
        max_attempts: object = None,
        headers: object = None,
        putting: bool = True,
    ) -> dict[str, Any]:
        """The validated columns every message of one put or put_many shares; told to the
        claim scopes unless ``putting`` is False (validation alone: nothing goes to that
        topic)."""
        delay_s = self.new_message_delay if delay is None else check.seconds(delay, "delay")
        delay_ms = check.to_ms(delay_s)
        ttl_ms = None
        if ttl is not None:
            ttl_ms = check.to_ms(check.seconds(ttl, "ttl", positive=True))
            if ttl_ms < 1:
                raise ValidationError("ttl must be at least 0.001 seconds")
        own_max = None
        if max_attempts is not None:
            own_max = check.count(max_attempts, "max_attempts", maximum=_UNLIMITED_ATTEMPTS)
        topic, neg_priority = check.text(topic, "topic"), -check.priority(priority)
        if putting:
            self._scopes.put(topic, neg_priority)
        return {
            "topic": topic,
            "neg_priority": neg_priority,
            "state": WAITING if delay_ms > 0 else READY,
            "delay_ms": delay_ms,
            "ttl_ms": ttl_ms,
            "msg_max_attempts": own_max,
            "headers": check.headers(observe.stamped(topic, headers)),
        }

    # -- consuming ------------------------------------------------------------------------------

    def get(
        self,
        topic: str = "default",
        *,
        visibility_timeout: float | None = None,
        wait: float = 0.0,
    ) -> Message | None:
        """Lease the next message of ``topic``: highest priority first, then oldest.

        Args:
            visibility_timeout: seconds of lease for this message (default: the queue's).
            wait: seconds to wait for a message when none is ready (0: return at once).

        Returns:
            The message, or None when nothing was ready within ``wait``.
        """
        found = self.get_many(topic, 1, visibility_timeout=visibility_timeout, wait=wait)
        return found[0] if found else None

    def get_many(
        self,
        topic: str = "default",
        limit: int = 10,
        *,
        visibility_timeout: float | None = None,
        wait: float = 0.0,
    ) -> list[Message]:
        """Lease up to ``limit`` messages of ``topic`` in priority, then id, order.

        Returns:
            Between 0 and ``limit`` messages (0 only after ``wait`` passed with nothing ready).
        """
        topic = check.text(topic, "topic")
        limit = check.count(limit, "limit", maximum=10_000)
        vt = (
            self.visibility_timeout
            if visibility_timeout is None
            else check.seconds(visibility_timeout, "visibility_timeout", positive=True)
        )
        vt_ms = check.to_ms(vt)
        wait = check.seconds(wait, "wait")
        deadline = time.monotonic() + wait
        waiter = self._waiting() if wait > 0 else None
        pause = 0.0 if waiter is None else waiter.first_pause
        while True:
            mark = 0 if waiter is None else waiter.mark()
            messages = self._claim(topic, limit, vt_ms)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0 or waiter is None:
                return messages
            waiter.wait(mark, min(pause, remaining))
            pause = min(pause * 2, waiter.max_pause)

    def _waiting(self) -> Poller:
        """How this queue waits for messages (a LISTEN connection on PostgreSQL)."""
        with self._waiter_lock:
            if self._waiter is None:
                self._waiter = waiter_for(
                    self.engine, self._strategy.wake_channel, self._session.driver
                )
            return self._waiter

    def _claim(self, topic: str, limit: int, vt_ms: int) -> list[Message]:
        token = secrets.randbits(63)
        started = time.monotonic()
        scope, rows, short = self._claim_in_scope(topic, limit, vt_ms, token)
        if not scope.sweep and short:
            # Short without sweeping: sweep now for the rest (squeal.claim_scope).
            _, more, _ = self._claim_in_scope(topic, limit - len(rows), vt_ms, token)
            rows = in_claim_order([*rows, *more])
        if observe.active():
            observe.claimed(topic, len(rows), time.monotonic() - started)
        settler = self._settler
        messages = [
            Message(
                settler,
                id_,
                topic,
                bytes(payload),
                -neg_priority,
                attempts,
                enqueued,
                token,
                most,
                headers,
            )
            for id_, payload, neg_priority, attempts, enqueued, most, headers in rows
        ]
        log.claimed(topic, messages)
        return messages

    def _claim_in_scope(
        self, topic: str, limit: int, vt_ms: int, token: int
    ) -> tuple[ClaimScope, list[ClaimedRow], bool]:
        """One claim, where this queue object's memory of the topic says to look; and whether
        it came back short of what it could take (its limit's allowance, squeal.limits)."""
        started = time.monotonic()
        scope = self._scopes.scope(topic, started)
        strategy = self._strategy
        asked = limit

        def claim(ex: Executor, wanted: int, *, limited: bool = False) -> list[ClaimedRow]:
            return strategy.claim(
                ex,
                topic=topic,
                limit=wanted,
                vt_ms=vt_ms,
                token=token,
                max_attempts=self._max_attempts,
                scope=scope,
                limited=limited,
            )

        def under_limit(ex: Executor) -> list[ClaimedRow] | None:
            nonlocal asked
            allowance = self._limits.allowance(ex, topic, limit)
            if allowance is None:  # no limit any more
                self._limited.discard(topic)
                return claim(ex, limit, limited=True)
            asked = allowance.allowed
            if not asked:
                return None  # nothing claimed, nothing looked at
            rows = claim(ex, asked, limited=True)
            self._limits.spend(ex, topic, allowance, len(rows))
            return rows

        if topic in self._limited:
            found = self._session.claim(under_limit, atomic=True)
        else:
            found = self._session.claim(lambda ex: claim(ex, limit))
            # An unlimited claim gives nothing of a limited topic: is it one now?
            if not found and self._session.read(lambda ex: self._limits.limited(ex, topic)):
                self._limited.add(topic)
                found = self._session.claim(under_limit, atomic=True)
        if found is None:
            return scope, [], False
        self._scopes.claimed(
            topic, scope, started=started, finished=time.monotonic(), rows=found, asked=asked
        )
        return scope, found, len(found) < asked

    # -- settling -------------------------------------------------------------------------------

    def ack_many(
        self, messages: Sequence[Message], *, connection: sa.Connection | None = None
    ) -> None:
        """Ack several messages in one transaction (see :meth:`Message.ack`).

        Raises:
            LeaseLost: some leases were lost; the others are acked (``lost`` counts them,
                ``message_id`` names the first of the batch). With ``connection=``, roll back
                to undo them all.
        """
        conn = check.connection(connection)
        batch = _unsettled(messages)
        self._ack(batch, conn)
        _all_done(batch, conn)

    def nack_many(
        self,
        messages: Sequence[Message],
        *,
        delay: float | None = None,
        error: BaseException | str | None = None,
        connection: sa.Connection | None = None,
    ) -> None:
        """Nack several messages (see :meth:`Message.nack`)."""
        conn = check.connection(connection)
        batch = _unsettled(messages)
        self._nack(batch, delay, conn, error_text(error))
        _all_done(batch, conn)

    def touch_many(
        self, messages: Sequence[Message], *, visibility_timeout: float | None = None
    ) -> None:
        """Extend several leases (see :meth:`Message.touch`)."""
        self._touch(_unsettled(messages), visibility_timeout)

    def _ack(self, messages: Sequence[Message], connection: sa.Connection | None) -> None:
        if not messages:
            return
        s = self._strategy
        # A batch deletes per lease token (get_many hands out one token per call).
        by_token: dict[int, list[int]] = {}
        if len(messages) > 1:
            for msg in messages:
                by_token.setdefault(msg.lease_token, []).append(msg.id)

        def ack(ex: Executor) -> None:
            if not by_token:
                msg = messages[0]
                done = ex.count(s.ack, {"msg_id": msg.id, "token": msg.lease_token})
                _expect(done, messages)
                return
            done = sum(
                ex.count(s.ack_batch, {"token": token, "ids": ids})
                for token, ids in by_token.items()
            )
            if done != len(messages):
                raise LeaseLost(
                    f"lost the lease of {len(messages) - done} of {len(messages)} messages",
                    message_id=messages[0].id,
                    lost=len(messages) - done,
                )

        try:
            self._session.write(ack, connection, atomic=len(by_token) > 1, commit_on=LeaseLost)
        except LeaseLost as lost:
            log.lease_lost("ack", messages, lost.message_id)
            observe.lease_lost("ack", messages, lost.message_id)
            raise
        log.settled("ack", messages)
        observe.settled(observe.ACKED, messages)

    def _nack(
        self,
        messages: Sequence[Message],
        delay: float | None,
        connection: sa.Connection | None,
        error: str | None = None,
    ) -> None:
        fixed = None if delay is None else check.seconds(delay, "delay")
        params = [
            {
                "msg_id": m.id,
                "token": m.lease_token,
                "error": error,
                "attempts_limit": self._max_attempts,
                "delay_ms": check.to_ms(self._backoff(m.attempts) if fixed is None else fixed),
            }
            for m in messages
        ]
        for topic in {m.topic for m in messages}:
            self._scopes.reopen(topic)
        self._update_each(self._strategy.nack, params, messages, "nack", connection)
        log.nacked(messages, params, self._max_attempts)
        observe.nacked(messages, self._max_attempts)

    def _release(self, messages: Sequence[Message], connection: sa.Connection | None) -> None:
        params = [{"msg_id": m.id, "token": m.lease_token} for m in messages]
        for topic in {m.topic for m in messages}:
            self._scopes.reopen(topic)
        self._update_each(self._strategy.release, params, messages, "release", connection)
        log.settled("release", messages)
        observe.settled(observe.RELEASED, messages)

    def _touch(self, messages: Sequence[Message], visibility_timeout: float | None) -> None:
        vt = (
            self.visibility_timeout
            if visibility_timeout is None
            else check.seconds(visibility_timeout, "visibility_timeout", positive=True)
        )
        params = [
            {"msg_id": m.id, "token": m.lease_token, "vt_ms": check.to_ms(vt)} for m in messages
        ]
        self._update_each(self._strategy.touch, params, messages, "touch")

    def _update_each(
        self,
        stmt: sa.Update,
        params: list[dict[str, Any]],
        messages: Sequence[Message],
        operation: str,
        connection: sa.Connection | None = None,
    ) -> None:
        """Run a lease-fenced UPDATE per message in one transaction (the caller's, with
        ``connection``); LeaseLost if any missed."""
        if not messages:
            return

        def run(ex: Executor) -> None:
            lost = [m for m, p in zip(messages, params, strict=True) if ex.count(stmt, p) != 1]
            if lost:
                raise LeaseLost(
                    f"lost the lease of {len(lost)} of {len(messages)} message(s), "
                    f"first id {lost[0].id}",
                    message_id=lost[0].id,
                    lost=len(lost),
                )

        try:
            self._session.write(run, connection, atomic=len(messages) > 1, commit_on=LeaseLost)
        except LeaseLost as lost:
            log.lease_lost(operation, messages, lost.message_id)
            observe.lease_lost(operation, messages, lost.message_id)
            raise

    def _resolve(self, messages: Sequence[Message]) -> None:
        """Settle each pending message whose lease the database shows is gone: the settle in
        the caller's transaction committed. (A lease that still holds: it rolled back, or is
        still open; either way the message stays this handle's.)"""
        pending = [m for m in messages if m.pending]
        if not pending:
            return
        ids = {"ids": [m.id for m in pending]}
        rows = self._session.read(lambda ex: ex.rows(self._strategy.leases, ids))
        holding = {(int(id_), int(token)) for id_, token in rows if token is not None}
        for msg in pending:
            if (msg.id, msg.lease_token) not in holding:
                msg._settled = True

    def _backoff(self, attempts: int) -> float:
        """``failure_base_delay * 2**(attempts-1)``, capped, with up to 25% jitter below it."""
        exponent = min(max(attempts - 1, 0), 62)
        delay = min(self.max_failure_delay, self.failure_base_delay * 2.0**exponent)
        return delay * (1.0 - 0.25 * random.random())

    # -- topic locks ----------------------------------------------------------------------------

    def acquire_topic(self, *, exclude: Iterable[str] = ()) -> TopicLock | None:
        """Lock one topic with a ready message for this consumer alone: topics are tried in
        name order, starting after the one this object acquired last (round robin).

        The lock lasts ``topic_lock_timeout`` seconds unless touched; a lock that ran out may
        be taken over by anybody. Locks are cooperative: ``get`` ignores them, so a consumer
        should only ``get`` from topics whose lock it holds.

        Args:
            exclude: topics not to lock (for example the ones this consumer already holds).

        Returns:
            The lock, or None when every topic with ready messages is locked (by anybody, this
            queue included) or excluded, or no message is ready.

        Raises:
            ValueError / TypeError: a bad ``exclude`` (a lone str is refused).
        """
        return self._topic_locks.acquire(exclude, self._max_attempts)

    def held_topics(self) -> list[TopicLock]:
        """The topic locks this Queue object acquired and has not released (nor seen lost)."""
        return self._topic_locks.held()

    def release_topics(self) -> int:
        """Release every lock of :meth:`held_topics`, skipping lost ones; return how many."""
        return self._topic_locks.release_all()

    # -- looking and repairing ------------------------------------------------------------------

    def size(self, topic: str = "default") -> int:
        """Messages of ``topic`` ready to be delivered now (not delayed, leased or dead)."""
        params = {"in_topic": check.text(topic, "topic"), "attempts_limit": self._max_attempts}
        return int(self._session.read(lambda ex: ex.rows(self._admin.size, params))[0][0])

    def topics(self) -> dict[str, int]:
        """Ready messages per topic, for every topic that has some."""
        return {name: s.ready for name, s in self.stats().items() if s.ready}

    def stats(self, limit: int | None = None) -> dict[str, TopicStats]:
        """Per topic: ready, delayed, leased and dead counts, the oldest ready message's age,
        and whether it is paused (a paused topic is listed even with no message).

        With ``limit``, the read costs at most about ``limit`` index entries per topic and
        stored state (ready, waiting, dead) instead of a pass over every message: a state
        holding more is counted as ``limit`` — a lower bound, into ``ready``, ``delayed`` or
        ``dead`` — and its topic is marked :attr:`TopicStats.estimated`. Below the limit the
        counts are exact.
        """
        params: dict[str, Any] = {"attempts_limit": self._max_attempts}
        admin = self._admin
        if limit is not None:
            params["count_limit"] = check.count(limit, "limit")

        def read(ex: Executor) -> tuple[Sequence[Sequence[Any]], list[str]]:
            if limit is None:
                return ex.rows(admin.stats, params), self._flow.paused(ex)
            return admin.counted_within(ex, params), self._flow.paused(ex)

        rows, paused = self._session.read(read)
        stats = {
            text_value(topic): TopicStats(
                ready=int(ready),
                delayed=int(delayed),
                leased=int(leased),
                dead=int(dead),
                oldest_ready_age=None if oldest is None else (now - oldest) / 1000,
                paused=text_value(topic) in paused,
                estimated=bool(estimated and estimated[0]),
            )
            for topic, ready, delayed, leased, dead, oldest, now, *estimated in rows
        }
        for topic in paused:
            if topic not in stats:
                stats[topic] = TopicStats(0, 0, 0, 0, None, paused=True)
        return dict(sorted(stats.items()))

    def dead(self, topic: str = "default", limit: int = 100) -> list[DeadMessage]:
        """Dead messages of ``topic``, oldest first."""
        params = {
            "in_topic": check.text(topic, "topic"),
            "limit": check.count(limit, "limit"),
            "attempts_limit": self._max_attempts,
        }
        rows = self._session.read(lambda ex: ex.rows(self._admin.dead_list, params))
        stored = _stored(DeadMessage, [row[:7] for row in rows])
        return [
            dataclasses.replace(
                message,
                died_at=None if died is None else from_ms(int(died)),
                reason=None if reason is None else str(reason),
                last_error=None if error is None else str(error),
            )
            for message, (died, reason, error) in zip(stored, [r[7:] for r in rows], strict=True)
        ]

    def redrive(
        self, topic: str = "default", limit: int | None = None, *, ids: Sequence[int] | None = None
    ) -> int:
        """Make dead messages of ``topic`` ready again, attempts reset; return how many.

        ``ids``: only these (those of them that are dead messages of ``topic``).
        """
        topic = check.text(topic, "topic")
        if ids is not None:
            chosen = _ids(ids)
            params = {"in_topic": topic, "limit": len(chosen) or 1, "ids": chosen}
            params["attempts_limit"] = self._max_attempts

            def redrive_ids(ex: Executor) -> int:
                found = [row[0] for row in ex.rows(self._admin.dead_ids_among, params)]
                if found:
                    ex.count(self._admin.redrive, {"ids": found})
                return len(found)

            if not chosen:
                return 0
            moved = self._session.write(redrive_ids, None, atomic=True)
            self._scopes.reopen(topic)
            return int(moved)
        wanted = None if limit is None else check.count(limit, "limit")
        total = 0
        while wanted is None or total < wanted:
            step = 1000 if wanted is None else min(1000, wanted - total)
            params = {"in_topic": topic, "limit": step, "attempts_limit": self._max_attempts}

            def redrive(ex: Executor, params: dict[str, Any] = params) -> int:
                ids = [row[0] for row in ex.rows(self._admin.dead_ids, params)]
                if ids:
                    ex.count(self._admin.redrive, {"ids": ids})
                return len(ids)

            moved = self._session.write(redrive, None, atomic=True)
            self._scopes.reopen(topic)
            total += moved
            if moved < step:
                break
        return total

    def health(self) -> list[Finding]:
        """Check what keeps this queue fast over months, as the server reports it.

        PostgreSQL: autovacuum, dead rows and size of squeal's tables, the oldest snapshot held
        on the server (which holds back vacuum); MySQL/MariaDB: InnoDB's history list, the
        oldest open transaction, table sizes; SQLite: free pages and the write-ahead log. Each
        :class:`~squeal.Finding` has a status (``ok``, ``warning``, ``action``, ``unknown``)
        and, unless all is well, advice. Reads only; changes nothing.
        """
        checks = health_for(self.engine.dialect, self._tables)
        try:
            with self.engine.connect() as conn:
                return checks.findings(conn)
        except sa.exc.SQLAlchemyError as error:
            failure = wrap(error, "squeal (checking its health)")
        raise failure

    def peek(self, topic: str = "default", limit: int = 10) -> list[PeekedMessage]:
        """The next ready messages of ``topic`` in delivery order, without claiming them."""
        params = {
            "in_topic": check.text(topic, "topic"),
            "limit": check.count(limit, "limit", maximum=10_000),
            "attempts_limit": self._max_attempts,
        }
        return _stored(
            PeekedMessage, self._session.read(lambda ex: ex.rows(self._admin.peek, params))
        )

    def delete(self, message_id: int) -> bool:
        """Delete one message that is not leased (ready, delayed, backing off, dead, or whose
        lease ran out); whether it did. A message leased now is left alone: its consumer
        settles it (``False``)."""
        params = {"msg_id": check.count(message_id, "message_id", maximum=2**63 - 1)}
        deleted = bool(self._session.write(lambda ex: ex.count(self._admin.delete_one, params)))
        if deleted:
            log.event("deleted", log.NOTABLE, message_id=params["msg_id"])
        return deleted

    def purge(
        self,
        topic: str = "default",
        *,
        dead_only: bool = False,
        ids: Sequence[int] | None = None,
    ) -> int:
        """Delete every message of ``topic`` (or only its dead ones); return how many.

        ``ids``: only these (those of them in ``topic``; with ``dead_only``, the dead ones),
        whatever their state, as the whole-topic purge. Purging the whole topic also forgets
        its dedup windows (see :meth:`dedup_override`).
        """
        params = {"in_topic": check.text(topic, "topic"), "attempts_limit": self._max_attempts}
        if ids is not None:
            chosen = _ids(ids)
            if not chosen:
                return 0
            purge_ids = self._admin.purge_dead_ids if dead_only else self._admin.purge_ids
            values = {**params, "ids": chosen}
            return int(self._session.write(lambda ex: ex.count(purge_ids, values)))
        if dead_only:
            return int(self._session.write(lambda ex: ex.count(self._admin.purge_dead, params)))

        def purge(ex: Executor) -> int:
            ex.count(self._windows.purge, {"in_topic": params["in_topic"]})
            return ex.count(self._admin.purge_all, params)

        return int(self._session.write(purge, None, atomic=True))

    # -- flow control (squeal/flow.py) -----------------------------------------------------------

    def pause(self, topic: str) -> None:
        """Stop deliveries of ``topic`` for every consumer of every process until
        :meth:`resume`: claims skip it (a waiting ``get`` keeps waiting), as do topic locks
        and Buffers; puts still land, and ``size``, ``topics`` and ``stats`` count as before.
        A claim already running when the pause commits may still deliver (docs/flow_control.md).
        """
        topic = check.text(topic, "topic")
        self._session.write(lambda ex: self._flow.pause(ex, topic), None, atomic=True)
        log.event("topic_paused", log.NOTABLE, topic=topic)

    def resume(self, topic: str) -> None:
        """Let ``topic`` be delivered again (nothing if it was not paused)."""
        topic = check.text(topic, "topic")
        self._session.write(lambda ex: self._flow.resume(ex, topic))
        log.event("topic_resumed", log.NOTABLE, topic=topic)

    def paused(self) -> list[str]:
        """The paused topics, in name order."""
        return self._session.read(self._flow.paused)

    def set_limit(
        self,
        topic: str,
        *,
        concurrency: int | None = UNSET,
        rate: int | None = UNSET,
        per: float | None = UNSET,
    ) -> Limit:
        """Limit how ``topic`` is delivered, for every consumer of every process; return its
        limits now. An argument not given leaves that limit as it is; None removes it.

        Args:
            concurrency: at most this many messages of the topic leased at once.
            rate: at most ``rate`` messages claimed per ``per`` seconds (default 1), by a
                token bucket of ``rate`` tokens: an idle topic can take one burst of ``rate``
                at once. A new rate or window starts with a full bucket.

        Claims enforce both in the database (squeal.limits): a ``get_many(100)`` gets what
        they allow. Leases already taken count but are not revoked. A limited topic's claims
        take turns on its row, and the claims cost more (docs/flow_control.md).
        """
        topic = check.text(topic, "topic")
        changes: dict[str, Any] = {}
        if concurrency is not UNSET:
            changes["concurrency"] = _optional_count(concurrency, "concurrency")
        if rate is not UNSET:
            changes["rate"] = _optional_count(rate, "rate")
        if per is not UNSET:
            if per is None:
                raise ValidationError("per must be a number of seconds (rate=None removes a rate)")
            per_ms = check.to_ms(check.seconds(per, "per", positive=True))
            if per_ms < 1:
                raise ValidationError("per must be at least 0.001 seconds")
            changes["per_ms"] = per_ms
            if changes.get("rate", 0) is None:
                raise ValidationError("per applies to a rate: give a rate, or leave per out")

        def store(ex: Executor) -> Limit:
            limit = self._limits.set(ex, topic, changes)
            if "per_ms" in changes and limit.rate is None:
                raise ValidationError(f"per applies to a rate, and topic {topic!r} has none")
            return limit

        limit = self._session.write(store, None, atomic=True)
        if limit.concurrency is not None or limit.rate is not None:
            self._limited.add(topic)
        log.event(
            "limit_set",
            log.NOTABLE,
            topic=topic,
            concurrency=limit.concurrency,
            rate=limit.rate,
            per=limit.per,
        )
        return limit

    def limits(self) -> list[Limit]:
        """Every topic with a limit (:meth:`set_limit`), in name order."""
        return self._session.read(self._limits.listed)

    # -- exchanges (squeal/exchange.py) ----------------------------------------------------------

    def bind(
        self,
        exchange: str,
        topic: str,
        *,
        key: str = "",
        ttl: float | None = None,
        expires: float | None = None,
        connection: sa.Connection | None = None,
    ) -> None:
        """Bind ``topic`` to ``exchange``: what is published to the exchange (:meth:`publish`)
        is also put into ``topic``, for every process. Binding again changes ``ttl`` and
        renews ``expires``.

        Args:
            key: the binding key: a publish with a key reaches the topics bound with it; a
                publish without one reaches every topic bound (under any key).
            ttl: each copy's ``ttl`` (as :meth:`put`'s; the shorter one wins when the publish
                gives one too). None: the publish's.
            expires: seconds the binding lasts unless bound again (a consumer that renews it
                while it runs stops receiving copies once it has died). None: until
                :meth:`unbind`.
            connection: a Connection inside the caller's transaction: the binding exists
                only if the caller commits.
        """
        exchange, topic = check.text(exchange, "exchange"), check.text(topic, "topic")
        key = _binding_key(key)
        ttl_ms = None if ttl is None else _positive_ms(ttl, "ttl")
        lifetime_ms = None if expires is None else _positive_ms(expires, "expires")
        conn = check.connection(connection)
        exchanges = self._exchanges
        self._session.write(
            lambda ex: exchanges.bind(
                ex, exchange, topic, key=key, ttl_ms=ttl_ms, lifetime_ms=lifetime_ms
            ),
            conn,
        )
        if conn is None:  # housekeeping, each delete on its own (never in a caller's work)
            self._session.write(lambda ex: exchanges.prune(ex, exchange))

    def unbind(
        self,
        exchange: str,
        topic: str,
        *,
        key: str | None = None,
        connection: sa.Connection | None = None,
    ) -> int:
        """Unbind ``topic`` from ``exchange`` (under ``key``; None: under every key); the
        number of bindings removed. Messages already published stay in the topic.
        ``connection``: as for :meth:`bind`."""
        exchange, topic = check.text(exchange, "exchange"), check.text(topic, "topic")
        key = None if key is None else _binding_key(key)
        conn = check.connection(connection)
        exchanges = self._exchanges
        return self._session.write(lambda ex: exchanges.unbind(ex, exchange, topic, key), conn)

    def bindings(self, exchange: str | None = None) -> list[Binding]:
        """The live bindings of ``exchange`` (None: of every exchange), by exchange, key and
        topic."""
        name = None if exchange is None else check.text(exchange, "exchange")
        return self._session.read(lambda ex: self._exchanges.bindings(ex, name))

    def publish(
        self,
        payload: bytes,
        exchange: str,
        *,
        key: str | None = None,
        priority: int = 0,
        delay: float | None = None,
        ttl: float | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        connection: sa.Connection | None = None,
    ) -> dict[str, int]:
        """Put a copy of ``payload`` into every topic bound to ``exchange`` (:meth:`bind`) —
        with ``key``, those bound with that key — in one transaction: every copy or none.
        The options are :meth:`put`'s, for every copy. A copy's message is its own (its own
        id, lease and attempts).

        Returns:
            The id of each copy by topic; empty when no topic is bound (nothing is stored).

        Raises:
            ValueError / TypeError: invalid input; nothing was sent to the database.
            PutOutcomeUnknown: as for :meth:`put`.
        """
        exchange = check.text(exchange, "exchange")
        key = None if key is None else _binding_key(key)
        data = check.payload(payload, self.max_payload_size)
        options: dict[str, Any] = {
            "priority": priority,
            "delay": delay,
            "ttl": ttl,
            "max_attempts": max_attempts,
            "headers": headers,
        }
        self._shared(exchange, **options, putting=False)  # validates before anything is sent
        conn = check.connection(connection)
        insert, exchanges = self._strategy.insert, self._exchanges

        def publish(ex: Executor) -> dict[str, int]:
            ids: dict[str, int] = {}
            for target in exchanges.targets(ex, exchange, key):
                shared = self._shared(target.topic, **options)
                if target.ttl_ms is not None:
                    own = shared["ttl_ms"]
                    shared["ttl_ms"] = target.ttl_ms if own is None else min(own, target.ttl_ms)
                msg_id = insert(ex, shared, [data], [None])[0]
                if msg_id is not None:
                    ids[target.topic] = msg_id
            return ids

        ids = self._session.write(publish, conn, atomic=True, idempotent=False)
        for topic, msg_id in ids.items():
            log.put(topic, [msg_id], [None], conn is not None)
        return ids

    # -- workers (squeal/registry.py) -----------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        """The running workers of this queue (:class:`Worker`, ``AsyncWorker``, ``squeal
        worker``), each as its last heartbeat recorded it, oldest first. A worker that died
        without stopping is listed until its row expires (six heartbeats after its last)."""
        return self._registry.workers()

    # -- schedules (squeal/schedules.py) ---------------------------------------------------------

    def schedule(
        self,
        name: str,
        *,
        topic: str,
        payload: bytes = b"",
        cron: str | None = None,
        every: float | None = None,
        priority: int = 0,
        timezone: str = "UTC",
    ) -> Schedule:
        """Put ``payload`` on ``topic`` at every tick of ``cron`` (read in ``timezone``) or
        every ``every`` seconds, once per tick across every process that runs
        :meth:`run_schedules` (workers do, at most once a second; or ``squeal scheduler``).

        Defining a schedule again under the same name replaces it; an unchanged definition
        keeps its next run. A changed one, and a new one, fire first at their first tick after
        now. After downtime a schedule fires once, not once per missed tick.

        Returns:
            The schedule as stored, with its next run.

        Raises:
            ValueError / TypeError: a bad argument (an invalid cron expression, an unknown
                time zone, neither or both of ``cron`` and ``every``); nothing was stored.
        """
        name = check.text(name, "name")
        timing = when(cron, every, timezone)
        shared = self._shared(topic, priority, None)
        row = {
            "name": name,
            "topic": shared["topic"],
            "payload": check.payload(payload, self.max_payload_size),
            "neg_priority": shared["neg_priority"],
        }
        self._session.write(lambda ex: self._schedules.define(ex, row, timing), None, atomic=True)
        log.event("schedule_defined", name=name, topic=row["topic"])
        return next(s for s in self.schedules() if s.name == name)

    def unschedule(self, name: str) -> bool:
        """Delete the schedule ``name``; whether there was one."""
        name = check.text(name, "name")
        removed = bool(self._session.write(lambda ex: self._schedules.remove(ex, name)))
        if removed:
            log.event("schedule_removed", log.NOTABLE, name=name)
        return removed

    def schedules(self) -> list[Schedule]:
        """Every schedule, the next to fire first."""
        return self._session.read(self._schedules.listed)

    def run_schedules(self) -> int:
        """Put the message of every schedule that is due; how many were put.

        Each due tick is put once across every process that calls this: the schedule's next
        run moves on by a compare-and-set in the same transaction as the put.
        """
        fired = 0
        while True:
            due = self._session.read(self._schedules.due)
            for schedule, timing, was, now in due:
                if self._fire(schedule, was, timing.next_after_missed(was, now)):
                    fired += 1
                    log.event("schedule_fired", name=schedule.name, topic=schedule.topic)
            if len(due) < SCHEDULE_BATCH:
                return fired

    def _fire(self, schedule: Schedule, was: int, next_run: int) -> bool:
        """Move ``schedule`` on from its tick ``was`` and put its message, in one transaction;
        False when another process moved it on first."""
        shared = self._shared(schedule.topic, schedule.priority, None)

        def fire(ex: Executor) -> bool:
            if not self._schedules.advance(ex, schedule.name, was, next_run):
                return False
            self._insert_chunks(ex, shared, [schedule.payload], [None])
            return True

        return bool(self._session.write(fire, None, atomic=True))

    def dedup_override(
        self, keys: Iterable[str], topic: str = "default", *, window: float | None
    ) -> None:
        """Set the dedup window of ``keys`` in ``topic`` to ``window`` seconds from now.

        A key with a window blocks puts of that key through queues that have a
        ``dedup_window`` until it runs out, whether or not it blocks now. A live message with
        the key still blocks it as well; this changes only the window.

        Args:
            keys: dedup keys (an iterable of str; a lone str is refused).
            window: seconds from now, replacing any current window; None or 0 clears the
                windows of ``keys`` at once.

        Raises:
            ValueError / TypeError: a bad argument; nothing was sent to the database.
        """
        chosen = check.texts(keys, "keys")
        topic = check.text(topic, "topic")
        seconds = None if window is None else check.seconds(window, "window")
        if not chosen:
            return
        windows = self._windows
        if seconds:
            window_ms = check.to_ms(seconds)
            self._session.write(
                lambda ex: windows.override(ex, topic, chosen, window_ms), None, atomic=True
            )
        else:
            forget = {"dedup_topic": topic, "dedup_keys": chosen}
            self._session.write(lambda ex: ex.count(windows.forget, forget))


def _stored(cls: type[S], rows: list[Any]) -> list[S]:
    return [
        cls(
            id=id_,
            topic=text_value(topic),
            payload=bytes(payload),
            priority=-neg_priority,
            attempts=attempts,
            enqueued_at=from_ms(enqueued_at),
            headers=parse_headers(headers),
        )
        for id_, topic, payload, neg_priority, attempts, enqueued_at, headers in rows
    ]


class _Settlement:
    """The queue's side of :class:`~squeal.message.Settler`: what its messages call."""

    __slots__ = ("_queue",)

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    def ack(self, messages: Sequence[Message], connection: sa.Connection | None) -> None:
        self._queue._ack(messages, connection)

    def nack(
        self,
        messages: Sequence[Message],
        delay: float | None,
        connection: sa.Connection | None,
        error: str | None = None,
    ) -> None:
        self._queue._nack(messages, delay, connection, error)

    def release(self, messages: Sequence[Message], connection: sa.Connection | None) -> None:
        self._queue._release(messages, connection)

    def resolve(self, messages: Sequence[Message]) -> None:
        self._queue._resolve(messages)

    def touch(self, messages: Sequence[Message], visibility_timeout: float | None) -> None:
        self._queue._touch(messages, visibility_timeout)


def _expect(done: int, messages: Sequence[Message]) -> None:
    if done != len(messages):
        raise LeaseLost(
            f"message {messages[0].id}: lease lost (re-claimed by another consumer, or gone)",
            message_id=messages[0].id,
        )


def _ids(value: object) -> list[int]:
    """Message ids: a list or tuple of distinct positive ints."""
    return list(
        dict.fromkeys(
            check.count(i, "an id", maximum=2**63 - 1) for i in check.sequence(value, "ids")
        )
    )


def _binding_key(value: object) -> str:
    """A binding key: "" (none) or 1-255 characters."""
    return "" if value == "" else check.text(value, "key")


def _positive_ms(value: object, what: str) -> int:
    """Positive seconds as whole milliseconds (at least one)."""
    ms = check.to_ms(check.seconds(value, what, positive=True))
    if ms < 1:
        raise ValidationError(f"{what} must be at least 0.001 seconds")
    return ms


def _optional_count(value: object, what: str) -> int | None:
    """None, or a count of at least 1 that fits the column (an int of 32 bits)."""
    return None if value is None else check.count(value, what, maximum=2**31 - 1)


def _unsettled(messages: Sequence[Message]) -> list[Message]:
    """``messages`` as a list, each checked as its own settle checks it (``Message._settle``),
    which only a settled or pending handle needs: the common one costs no call."""
    batch = list(messages)
    for msg in batch:
        if not isinstance(msg, Message):
            raise InvalidType(f"expected Message objects, not {type(msg).__name__}")
        if msg._is_settled or msg._pending:
            msg._settle()
    return batch


def _all_done(batch: list[Message], connection: sa.Connection | None) -> None:
    """``Message._done`` for each of ``batch``; a handle nobody watches is marked settled
    without the setter's call."""
    if connection is not None:
        for msg in batch:
            msg._done(connection)
        return
    for msg in batch:
        if msg._on_settle is None:
            msg._is_settled = True
        else:
            msg._settled = True


def _fits_one_insert(payloads: list[bytes]) -> bool:
    """True when ``payloads`` are within one INSERT's bounds (see ``_chunks``)."""
    return len(payloads) <= _BATCH_ROWS and sum(map(len, payloads)) <= _BATCH_BYTES


def _chunks(payloads: list[bytes]) -> list[tuple[int, int]]:
    """(start, end) of each INSERT statement: bounded row count and payload bytes."""
    bounds: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, payload in enumerate(payloads):
        if i > start and (i - start >= _BATCH_ROWS or size + len(payload) > _BATCH_BYTES):
            bounds.append((start, i))
            start, size = i, 0
        size += len(payload)
    bounds.append((start, len(payloads)))
    return bounds


__all__ = ["Queue"]
