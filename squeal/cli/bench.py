"""``squeal bench``: squeal against the raw-driver floors, side by side in one run.

For each database, squeal and the floor (``squeal.cli.floor``: the same work written by
hand against the driver) run the same rows, interleaved round by round on the same tables,
and the medians and their ratio (squeal / floor) are printed, written as JSON and optionally
drawn as a PNG. The lean floor (``squeal.cli.floor_lean``: a hand-written queue on a table of
its own with two indexes) runs in the same rounds on the single-process rows, and each of those
rows prints its ratio too (squeal / lean). See docs/performance.md for what each row measures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import random
import resource
import secrets
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from squeal.schema import validate_prefix

if TYPE_CHECKING:
    from squeal.cli.floor import Floor

#: The rows, in the order they run and print; ``--only`` picks among them.
ROWS = (
    "put",
    "get_ack",
    "batch",
    "bulk",
    "backlog",
    "ahead",
    "limited",
    "worker",
    "drain",
    "latency",
    "memory",
)
#: The rows the lean floor takes part in: every single-process row (in the worker row, with
#: its own one-message loop). The rows with consumer
#: processes (drain, latency, memory) compare squeal with the floor alone.
LEAN_ROWS = frozenset(
    {
        "put",
        "get_ack",
        "batch",
        "bulk_put",
        "bulk_drain",
        "bulk",
        "backlog_small",
        "backlog_large",
        "ahead",
        "limited",
        "limited_batch",
        "worker",
    }
)
#: squeal's limits on its ``limited`` topics: never reached, so the row measures what claiming
#: under a limit costs (squeal.limits), not the limit itself.
_UNREACHED_CONCURRENCY, _UNREACHED_RATE = 1_000_000, 1_000_000_000
#: Lease length of every claim in the bench (long enough never to expire during a run).
VT_MS = 300_000
PAYLOAD = bytes(range(64))
BATCH = 100


@dataclass(frozen=True)
class Sizes:
    """How much work each row does per side and round."""

    rounds: int
    put: int
    get_ack: int
    batches: int
    #: Messages put with put_many, then drained with get_many + ack_many (the bulk rows).
    bulk: int
    backlogs: tuple[int, int]
    slice: int
    ahead: int
    drain: int
    latency: int
    memory: int


FULL = Sizes(
    rounds=3,
    put=1000,
    get_ack=600,
    batches=20,
    bulk=20_000,
    backlogs=(1_000, 100_000),
    slice=300,
    ahead=10_000,
    drain=3000,
    latency=30,
    memory=30_000,
)
QUICK = Sizes(
    rounds=1,
    put=20,
    get_ack=20,
    batches=2,
    bulk=200,
    backlogs=(100, 1_000),
    slice=20,
    ahead=200,
    drain=60,
    latency=3,
    memory=1_000,
)
CONSUMERS = (2, 8)
#: Longest --prefix stem: a prefix has at most 43 characters, and the bench appends 9.
_MAX_STEM = 34


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- the sides ----------------------------------------------------------------------------------


class _Side:
    """One implementation under test: the same operations, squeal's way or a floor's."""

    name = ""

    def put(self, topic: str, payload: bytes = PAYLOAD) -> None:
        raise NotImplementedError

    def get_ack(self, topic: str) -> bool:
        """Claim one message and ack it; False when none was ready."""
        raise NotImplementedError

    def batch(self, topic: str, n: int) -> int:
        """put_many n, then claim up to n and ack them together; how many were acked."""
        raise NotImplementedError

    def put_many(self, topic: str, n: int) -> None:
        """put_many n messages."""
        raise NotImplementedError

    def get_many_ack(self, topic: str, n: int) -> int:
        """Claim up to n messages and ack them together; how many."""
        raise NotImplementedError

    def wait_get_ack(self, topic: str, timeout: float) -> bytes | None:
        """Wait up to ``timeout`` for a message, ack it and return its payload."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Squeal(_Side):
    name = "squeal"

    def __init__(self, url: sa.URL, prefix: str) -> None:
        from squeal import Queue

        self.engine = sa.create_engine(url)
        self.queue = Queue(self.engine, prefix=prefix, visibility_timeout=VT_MS / 1000)

    def put(self, topic: str, payload: bytes = PAYLOAD) -> None:
        self.queue.put(payload, topic)

    def get_ack(self, topic: str) -> bool:
        msg = self.queue.get(topic)
        if msg is None:
            return False
        msg.ack()
        return True

    def batch(self, topic: str, n: int) -> int:
        q = self.queue
        q.put_many([PAYLOAD] * n, topic)
        messages = q.get_many(topic, n)
        q.ack_many(messages)
        return len(messages)

    def put_many(self, topic: str, n: int) -> None:
        self.queue.put_many([PAYLOAD] * n, topic)

    def get_many_ack(self, topic: str, n: int) -> int:
        messages = self.queue.get_many(topic, n)
        if messages:
            self.queue.ack_many(messages)
        return len(messages)

    def wait_get_ack(self, topic: str, timeout: float) -> bytes | None:
        msg = self.queue.get(topic, wait=timeout)
        if msg is None:
            return None
        msg.ack()
        return msg.payload

    def close(self) -> None:
        self.queue.close()
        self.engine.dispose()


class _Floor(_Side):
    name = "floor"

    def __init__(self, floor: Floor) -> None:
        self.floor = floor

    def put(self, topic: str, payload: bytes = PAYLOAD) -> None:
        self.floor.put(payload, topic)

    def get_ack(self, topic: str) -> bool:
        token, rows = self.floor.claim(topic, 1, VT_MS)
        if not rows:
            return False
        self.floor.ack(rows[0][0], token)
        return True

    def batch(self, topic: str, n: int) -> int:
        self.floor.put_many([PAYLOAD] * n, topic)
        return self.get_many_ack(topic, n)

    def put_many(self, topic: str, n: int) -> None:
        self.floor.put_many([PAYLOAD] * n, topic)

    def get_many_ack(self, topic: str, n: int) -> int:
        token, rows = self.floor.claim(topic, n, VT_MS)
        if rows:
            self.floor.ack_many([row[0] for row in rows], token)
        return len(rows)

    def wait_get_ack(self, topic: str, timeout: float) -> bytes | None:
        token, rows = self.floor.wait_claim(topic, VT_MS, timeout)
        if not rows:
            return None
        self.floor.ack(rows[0][0], token)
        return bytes(rows[0][1])

    def close(self) -> None:
        self.floor.close()


class _Lean(_Floor):
    """The lean floor (``squeal.cli.floor_lean``): the floor's operations on its own table."""

    name = "lean"


def _sides(url: sa.URL, prefix: str, *, lean: bool = False) -> dict[str, _Side]:
    """squeal and the floor (and, with ``lean``, the lean floor), each connected."""
    from squeal.cli.floor import floor_for

    sides: dict[str, _Side] = {
        "squeal": _Squeal(url, prefix),
        "floor": _Floor(floor_for(url, prefix)),
    }
    if lean:
        from squeal.cli.floor_lean import lean_for

        sides["lean"] = _Lean(lean_for(url, prefix))
    return sides


# -- consumer processes -------------------------------------------------------------------------


def _rss_kib() -> int:
    """This process's resident memory in KiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _drain(side: _Side, topic: str) -> tuple[int, float, float]:
    start = time.monotonic()
    count = 0
    while side.get_ack(topic):
        count += 1
    return count, start, time.monotonic()


def _latencies(side: _Side, topic: str, n: int, pipe: Connection) -> list[float]:
    side.wait_get_ack(topic, 0.05)  # opens the LISTEN connection before the first put
    pipe.send(("ready",))
    found: list[float] = []
    while len(found) < n:
        payload = side.wait_get_ack(topic, 10.0)
        if payload is None:
            break
        (sent,) = struct.unpack_from("!d", payload)
        found.append(time.monotonic() - sent)
    return found


def _memory(side: _Squeal | _Floor, topic: str) -> tuple[int, int, int]:
    """Drain ``topic`` in batches; (messages, RSS KiB after the first 10 batches, RSS at end)."""
    count = batches = 0
    early = 0
    while True:
        if isinstance(side, _Squeal):
            messages = side.queue.get_many(topic, BATCH)
            if messages:
                side.queue.ack_many(messages)
            n = len(messages)
        else:
            token, rows = side.floor.claim(topic, BATCH, VT_MS)
            if rows:
                side.floor.ack_many([row[0] for row in rows], token)
            n = len(rows)
        if not n:
            break
        count += n
        batches += 1
        if batches == 10:
            early = _rss_kib()
    return count, early or _rss_kib(), _rss_kib()


def _worker(url_text: str, prefix: str, pipe: Connection) -> None:
    """A consumer process: connects both sides once, then runs the parent's commands."""
    sides: dict[str, _Side] = {}
    try:
        sides = _sides(sa.make_url(url_text), prefix)
        for side in sides.values():
            side.get_ack("warmup.none")  # connects and checks the schema before any timing
        pipe.send(("ready",))
        while True:
            command, *args = pipe.recv()
            if command == "stop":
                break
            side = sides[args[0]]
            if command == "drain":
                pipe.send(("ok", _drain(side, args[1])))
            elif command == "latency":
                pipe.send(("ok", _latencies(side, args[1], args[2], pipe)))
            elif command == "memory":
                assert isinstance(side, _Squeal | _Floor)
                pipe.send(("ok", _memory(side, args[1])))
    except BaseException as exc:
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        for side in sides.values():
            side.close()


class _Consumers:
    """Consumer processes (spawned, each with its own connections) driven over pipes."""

    def __init__(self, url: sa.URL, prefix: str, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[Any] = []
        text = url.render_as_string(hide_password=False)
        for _ in range(count):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(text, prefix, theirs), daemon=True)
            proc.start()
            theirs.close()
            self._pipes.append(mine)
            self._procs.append(proc)
        for pipe in self._pipes:
            self._receive(pipe)

    @staticmethod
    def _receive(pipe: Connection, timeout: float = 600.0) -> Any:
        if not pipe.poll(timeout):
            raise RuntimeError("a bench consumer process did not answer")
        kind, *value = pipe.recv()
        if kind == "error":
            raise RuntimeError(f"a bench consumer process failed: {value[0]}")
        return value[0] if value else None

    def all(self, *command: Any) -> list[Any]:
        """Send ``command`` to every consumer at once; their answers."""
        for pipe in self._pipes:
            pipe.send(command)
        return [self._receive(pipe) for pipe in self._pipes]

    def first(self) -> Connection:
        """The pipe of the first consumer."""
        return self._pipes[0]

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# -- measuring ----------------------------------------------------------------------------------


def _rate(count: int, work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


def _repeat(n: int, step: Callable[..., object], *args: Any) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            step(*args)

    return run


def _get_acks(side: _Side, topic: str, n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            if not side.get_ack(topic):
                raise RuntimeError(f"{side.name}: {topic} ran out of messages")

    return run


def _topic(row: str, side: str) -> str:
    """The topic of ``row`` for ``side``: the side's name first.

    Each side's topics are then neighbours in every index, in the same order. With the row
    first, one side's topic sat before the other side's (or a just-emptied one) in the index,
    and on MariaDB a claim on an emptied topic, whose range ends at the next topic's purged
    entries, measured 30 % slower for whichever side had the unlucky neighbour.
    """
    return f"{side}.{row}"


def _getter(stem: str) -> Callable[[_Side, int], Callable[[], None]]:
    """get + ack ``n`` times from the side's topic ``stem.<side>``."""
    return lambda side, n: _get_acks(side, _topic(stem, side.name), n)


def _batches(stem: str) -> Callable[[_Side, int], Callable[[], None]]:
    """``n // BATCH`` batches (put_many, get_many, ack_many) on the side's topic ``stem``."""
    return lambda side, n: _repeat(n // BATCH, side.batch, _topic(stem, side.name), BATCH)


#: The bulk row's topic (``bulk.<side>``): filled by put_many, then drained.
_BULK = "bulk"


def _bulk_puts(side: _Side, n: int) -> Callable[[], None]:
    """put_many ``n`` messages in batches into the side's bulk topic."""
    return _repeat(n // BATCH, side.put_many, _topic(_BULK, side.name), BATCH)


def _bulk_drains(side: _Side, n: int) -> Callable[[], None]:
    """Drain ``n`` messages in full batches (get_many + ack_many) from the side's bulk topic."""
    topic = _topic(_BULK, side.name)

    def run() -> None:
        for _ in range(n // BATCH):
            if side.get_many_ack(topic, BATCH) != BATCH:
                raise RuntimeError(f"{side.name}: {topic} ran out of messages")

    return run


class _Bench:
    """One database: its sides, its private tables and the results per row."""

    def __init__(
        self, url: sa.URL, sizes: Sizes, rounds: int, rows: Sequence[str], stem: str = "bench"
    ) -> None:
        self.url = url
        self.sizes = sizes
        self.rounds = rounds
        self.rows = rows
        self.prefix = f"{stem}_{secrets.token_hex(4)}"
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.extra: dict[str, dict[str, Any]] = {}
        #: The database and the driver measured, e.g. ``postgresql+psycopg2``.
        self.label = f"{url.get_backend_name()}+{url.get_driver_name()}"

    def note(self, row: str, side: str, value: float) -> None:
        self.samples.setdefault(row, {}).setdefault(side, []).append(value)

    def run(self) -> dict[str, Any]:
        from squeal import migrate
        from squeal.cli.floor_lean import create_lean, drop_lean

        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        migrate.upgrade(engine, prefix=self.prefix)
        sides: dict[str, _Side] = {}
        pools: dict[int, _Consumers] = {}
        try:
            create_lean(engine, self.prefix)
            sides = _sides(self.url, self.prefix, lean=True)
            #: Each side's own table, filled and emptied through a floor (not measured).
            self.fills = {
                name: side.floor if isinstance(side, _Floor) else self._floor(sides)
                for name, side in sides.items()
            }
            settings = self.fills["floor"].settings()
            _say(f"{self.label}: {', '.join(f'{k}={v}' for k, v in settings.items())}")
            self._prepare(sides)
            if "drain" in self.rows or "latency" in self.rows or "memory" in self.rows:
                needed = CONSUMERS if "drain" in self.rows else (1,)
                for n in needed:
                    _say(f"{self.label}: starting {n} consumer processes")
                    pools[n] = _Consumers(self.url, self.prefix, n)
            for r in range(self.rounds):
                order = [sides["floor"], sides["squeal"], sides["lean"]]
                if r % 2:
                    order.reverse()
                _say(f"{self.label}: round {r + 1}/{self.rounds}")
                self._round(order, pools)
            if "memory" in self.rows:
                self._memory(pools[min(pools)])
        finally:
            for pool in pools.values():
                pool.close()
            for side in sides.values():
                side.close()
            drop_lean(engine, self.prefix)
            migrate.downgrade(engine, prefix=self.prefix, revision="base", drop_version_table=True)
            engine.dispose()
        return {
            "database": self.label,
            "prefix": self.prefix,
            "settings": settings,
            "rows": self._results(),
        }

    @staticmethod
    def _floor(sides: dict[str, _Side]) -> Floor:
        floor = sides["floor"]
        assert isinstance(floor, _Floor)
        return floor.floor

    def _memory(self, pool: _Consumers) -> None:
        """One consumer process drains a long queue in batches; its RSS early and at the end."""
        _say(f"{self.label}: consumer memory over a drain of {self.sizes.memory:,} messages")
        extra = self.extra.setdefault("memory", {})
        pipe = pool.first()
        for side in ("floor", "squeal"):
            topic = _topic("memory", side)
            self.fills[side].fill(topic, PAYLOAD, self.sizes.memory)
            pipe.send(("memory", side, topic))
            count, early, end = pool._receive(pipe)
            if count != self.sizes.memory:
                raise RuntimeError(f"{side}: drained {count} of {self.sizes.memory}")
            self.note("memory", side, end / 1024)
            extra[f"{side}_rss_early_mib"] = round(early / 1024, 1)
            extra[f"{side}_rss_end_mib"] = round(end / 1024, 1)

    def _prepare(self, sides: dict[str, _Side]) -> None:
        """Warm the sides up and fill the standing backlogs (not measured)."""
        s = self.sizes
        for name, side in sides.items():
            fill = self.fills[name]
            if "limited" in self.rows and isinstance(side, _Squeal):
                for stem in ("limited", "limited_batch"):
                    side.queue.set_limit(
                        _topic(stem, name), concurrency=_UNREACHED_CONCURRENCY, rate=_UNREACHED_RATE
                    )
            # First uses open connections, check the schema and prepare statements.
            topic = _topic("warmup", name)
            for _ in range(20):
                side.put(topic)
            _get_acks(side, topic, 20)()
            side.batch(topic, BATCH)
            if "backlog" in self.rows:
                for size in s.backlogs:
                    _say(f"{self.label}: filling a backlog of {size:,} for {name}")
                    fill.fill(_topic(f"backlog{size}", name), PAYLOAD, size)
            if "ahead" in self.rows:
                _say(f"{self.label}: {s.ahead:,} leased/delayed messages ahead for {name}")
                fill.fill_waiting(_topic("ahead", name), PAYLOAD, s.ahead, priority=10)
                fill.fill(_topic("ahead", name), PAYLOAD, s.slice)

    def _round(self, order: list[_Side], pools: dict[int, _Consumers]) -> None:
        s = self.sizes
        names = [side.name for side in order]

        def fill(stem: str, count: int) -> None:
            for name in names:
                self.fills[name].fill(_topic(stem, name), PAYLOAD, count)

        def empty(stem: str) -> None:
            for name in names:
                self.fills[name].delete_topic(_topic(stem, name))

        if "put" in self.rows:
            _say(f"{self.label}:   put")
            self._paired(
                "put", order, s.put, lambda side, n: _repeat(n, side.put, _topic("put", side.name))
            )
            empty("put")
        if "get_ack" in self.rows:
            _say(f"{self.label}:   get_ack")
            fill("get", s.get_ack)
            self._paired("get_ack", order, s.get_ack, _getter("get"))
        if "batch" in self.rows:
            _say(f"{self.label}:   batch")
            self._paired("batch", order, s.batches * BATCH, _batches("batch"), chunk=BATCH)
            empty("batch")
        if "bulk" in self.rows:
            _say(f"{self.label}:   bulk")
            self._bulk(order)
        if "backlog" in self.rows:
            _say(f"{self.label}:   backlog")
            for which, size in zip(("small", "large"), s.backlogs, strict=True):
                self._paired(f"backlog_{which}", order, s.slice, _getter(f"backlog{size}"))
                fill(f"backlog{size}", s.slice)
        if "ahead" in self.rows:
            _say(f"{self.label}:   ahead")
            self._paired("ahead", order, s.slice, _getter("ahead"))
            fill("ahead", s.slice)
        if "limited" in self.rows:
            _say(f"{self.label}:   limited")
            fill("limited", s.get_ack)
            self._paired("limited", order, s.get_ack, _getter("limited"))
            self._paired(
                "limited_batch", order, s.batches * BATCH, _batches("limited_batch"), chunk=BATCH
            )
            empty("limited_batch")
        if "worker" in self.rows:
            _say(f"{self.label}:   worker")
            self._worker(order)
        self._with_processes(order, pools)

    def _with_processes(self, order: list[_Side], pools: dict[int, _Consumers]) -> None:
        """The rows with consumer processes: drain and latency."""
        s = self.sizes
        for side in order:
            if isinstance(side, _Lean):
                continue  # the rows with consumer processes compare squeal with the floor
            if "drain" in self.rows:
                _say(f"{self.label}:   drain, {side.name}")
                for n in CONSUMERS:
                    topic = _topic(f"drain{n}", side.name)
                    self.fills[side.name].fill(topic, PAYLOAD, s.drain)
                    done = pools[n].all("drain", side.name, topic)
                    total = sum(count for count, _, _ in done)
                    span = max(end for _, _, end in done) - min(start for _, start, _ in done)
                    if total != s.drain:
                        raise RuntimeError(f"{side.name}: drained {total} of {s.drain}")
                    self.note(f"drain_{n}", side.name, total / span)
            if "latency" in self.rows:
                _say(f"{self.label}:   latency, {side.name}")
                self._latency(side, pools[min(pools)])

    def _bulk(self, order: list[_Side]) -> None:
        """put_many a backlog of ``sizes.bulk`` in batches, then drain it in batches.

        Three rows: the puts, the drain, and both (the messages over the time of both phases).
        The sides alternate every 10 batches, so each side's backlog grows and shrinks alike.
        """
        total = self.sizes.bulk
        self._paired("bulk_put", order, total, _bulk_puts, chunk=10 * BATCH)
        self._paired("bulk_drain", order, total, _bulk_drains, chunk=10 * BATCH)
        for side in order:
            put, drain = (self.samples[row][side.name][-1] for row in ("bulk_put", "bulk_drain"))
            self.note("bulk", side.name, 1 / (1 / put + 1 / drain))

    def _worker(self, order: list[_Side]) -> None:
        """A Worker with a one-message handler (squeal's side, over squeal's own get + ack loop
        on the same topic, ``loop``) against the floor's one-message loop."""
        from squeal.cli.bench_worker import loop_seconds, worker_seconds

        count = self.sizes.drain
        for side in order:
            topic = _topic("worker", side.name)
            if isinstance(side, _Squeal):
                self.fills[side.name].fill(topic, PAYLOAD, count)
                self.note("worker", "loop", count / loop_seconds(side.queue, topic, count))
                self.fills[side.name].fill(topic, PAYLOAD, count)
                self.note("worker", side.name, count / worker_seconds(side.queue, topic, count))
            elif isinstance(side, _Floor):
                self.fills[side.name].fill(topic, PAYLOAD, count)
                step = _getter("worker")(side, count)
                start = time.perf_counter()
                step()
                self.note("worker", side.name, count / (time.perf_counter() - start))

    def _paired(
        self,
        row: str,
        order: list[_Side],
        total: int,
        work: Callable[[_Side, int], Callable[[], None]],
        *,
        chunk: int = 50,
    ) -> None:
        """Time ``total`` operations per side, alternating sides every ``chunk`` operations.

        Alternating in small chunks (ABBA order) spreads the machine's load swings over both
        sides, so their ratio stays meaningful on a busy machine.
        """
        spent = dict.fromkeys((side.name for side in order), 0.0)
        done = 0
        while done < total:
            n = min(chunk, total - done)
            turn = order if (done // chunk) % 2 == 0 else order[::-1]
            for side in turn:
                step = work(side, n)
                start = time.perf_counter()
                step()
                spent[side.name] += time.perf_counter() - start
            done += n
        for name, seconds in spent.items():
            self.note(row, name, total / seconds)

    def _latency(self, side: _Side, pool: _Consumers) -> None:
        topic = _topic("latency", side.name)
        pipe = pool.first()
        pipe.send(("latency", side.name, topic, self.sizes.latency))
        pool._receive(pipe)  # the consumer is waiting
        for _ in range(self.sizes.latency):
            time.sleep(random.uniform(0.03, 0.07))
            payload = struct.pack("!d", time.monotonic()).ljust(len(PAYLOAD), b"\0")
            side.put(topic, payload)
        found = pool._receive(pipe)
        self.samples.setdefault("latency", {}).setdefault(side.name, []).extend(
            1000 * x for x in found
        )

    def _results(self) -> dict[str, dict[str, Any]]:
        results: dict[str, dict[str, Any]] = {}
        for row, label, unit in _row_labels(self.sizes):
            data = self.samples.get(row)
            if not data or not {"squeal", "floor"} <= set(data):
                continue
            entry: dict[str, Any] = {"label": label, "unit": unit}
            if row == "latency":
                for side, values in data.items():
                    entry[side] = _percentile(values, 50)
                    entry[f"{side}_p95"] = _percentile(values, 95)
                    entry[f"{side}_p99"] = _percentile(values, 99)
                    entry[f"{side}_samples"] = len(values)
                entry["ratio"] = entry["floor"] / entry["squeal"]
            else:
                for side, values in data.items():
                    entry[side] = statistics.median(values)
                    entry[f"{side}_rounds"] = [round(v, 1) for v in values]
                entry["ratio"] = None if row == "memory" else entry["squeal"] / entry["floor"]
                if "lean" in data:
                    entry["lean_ratio"] = entry["squeal"] / entry["lean"]
            entry.update(self.extra.get(row, {}))
            results[row] = entry
        small, large = "backlog_small", "backlog_large"
        for key, size in zip((small, large), self.sizes.backlogs, strict=True):
            if key in results:
                results[key]["backlog"] = size
        if small in results and large in results:
            results[large]["large_over_small"] = _over(results[large], results[small])
            if "ahead" in results:
                results["ahead"]["vs_small_backlog"] = _over(results["ahead"], results[small])
        if "drain_2" in results and "drain_8" in results:
            results["drain_8"]["eight_over_two"] = {
                side: results["drain_8"][side] / results["drain_2"][side]
                for side in ("squeal", "floor")
            }
        return results


def _over(entry: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """Each side's rate in ``entry`` over its rate in ``base`` (the sides both rows have)."""
    sides = [side for side in ("squeal", "floor", "lean") if side in entry and side in base]
    return {side: entry[side] / base[side] for side in sides}


def _percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def _row_labels(sizes: Sizes) -> list[tuple[str, str, str]]:
    small, large = sizes.backlogs
    return [
        ("put", "put, one at a time", "msg/s"),
        ("get_ack", "get + ack, one at a time", "msg/s"),
        ("batch", f"put_many {BATCH} + get_many {BATCH} + ack_many", "msg/s"),
        ("bulk_put", f"put_many {BATCH} into a backlog of {sizes.bulk:,}", "msg/s"),
        ("bulk_drain", f"drain {sizes.bulk:,}: get_many {BATCH} + ack_many", "msg/s"),
        ("bulk", f"put_many {sizes.bulk:,}, then drain them", "msg/s"),
        ("backlog_small", f"get + ack at a {small:,} backlog", "msg/s"),
        ("backlog_large", f"get + ack at a {large:,} backlog", "msg/s"),
        ("ahead", f"get + ack, {sizes.ahead:,} leased/delayed ahead", "msg/s"),
        ("limited", "get + ack, one at a time, limited topic", "msg/s"),
        ("limited_batch", f"put_many {BATCH} + get_many {BATCH} + ack_many, limited", "msg/s"),
        ("worker", "worker, one-message handler (floor: get + ack loop)", "msg/s"),
        (f"drain_{CONSUMERS[0]}", f"drain, {CONSUMERS[0]} consumer processes", "msg/s"),
        (f"drain_{CONSUMERS[1]}", f"drain, {CONSUMERS[1]} consumer processes", "msg/s"),
        ("latency", "put -> receive, consumer waiting (ms)", "ms"),
        ("memory", f"consumer RSS after draining {sizes.memory:,} (MiB)", "MiB"),
    ]


# -- output ---------------------------------------------------------------------------------------


def _fmt(value: float, unit: str) -> str:
    if unit == "msg/s":
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _note(row: str, entry: dict[str, Any]) -> str:
    def pair(key: str) -> str:
        return ", ".join(f"{side} {value:.2f}" for side, value in entry[key].items())

    if "large_over_small" in entry:
        return "large/small backlog: " + pair("large_over_small")
    if "vs_small_backlog" in entry:
        return "vs small backlog: " + pair("vs_small_backlog")
    if "eight_over_two" in entry:
        return "8/2: " + pair("eight_over_two")
    if "vs_pgqueuer" in entry:
        against = "pgqueuer/squeal" if row == "latency" else "squeal/pgqueuer"
        return (
            f"pgqueuer {_fmt(entry['pgqueuer'], entry['unit'])}: {against} "
            f"{entry['vs_pgqueuer']:.2f}"
        )
    if row == "latency" and "squeal_p95" in entry:
        return (
            f"p95/p99 squeal {entry['squeal_p95']:.1f}/{entry['squeal_p99']:.1f}, "
            f"floor {entry['floor_p95']:.1f}/{entry['floor_p99']:.1f}; ratio = floor/squeal p50"
        )
    if row == "worker" and "loop" in entry:
        return (
            f"squeal get + ack loop {_fmt(entry['loop'], entry['unit'])}: worker/loop "
            f"{entry['squeal'] / entry['loop']:.2f}"
        )
    if row == "memory":
        return "RSS after 10 batches -> end: " + ", ".join(
            f"{side} {entry[f'{side}_rss_early_mib']:.1f} -> {entry[f'{side}_rss_end_mib']:.1f}"
            for side in ("squeal", "floor")
        )
    return ""


def report(result: dict[str, Any]) -> str:
    """The plain-text table of one database's results."""
    from squeal.cli.output import table

    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    cells = []
    for row, entry in result["rows"].items():
        ratio = entry["ratio"]
        lean = entry.get("lean")
        cells.append(
            [
                entry["label"],
                _fmt(entry["squeal"], entry["unit"]),
                _fmt(entry["floor"], entry["unit"]),
                "-" if ratio is None else f"{ratio:.2f}",
                "-" if lean is None else _fmt(lean, entry["unit"]),
                "-" if lean is None else f"{entry['lean_ratio']:.2f}",
                _note(row, entry),
            ]
        )
    heads = ["row", "squeal", "floor", "ratio", "lean", "lean ratio", "notes"]
    for column in (1, 2, 3, 4, 5):  # numbers right-aligned
        width = max([len(r[column]) for r in cells] + [len(heads[column])])
        heads[column] = heads[column].rjust(width)
        for r in cells:
            r[column] = r[column].rjust(width)
    body = table(heads, cells)
    return f"{result['database']}: {settings}\n{body}"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in (
        "squeal",
        "sqlalchemy",
        "psycopg",
        "psycopg2-binary",
        "pg8000",
        "pymysql",
        "mysqlclient",
        "mysql-connector-python",
        "mariadb",
        "greenlet",
        "asyncpg",
        "aiomysql",
        "asyncmy",
        "aiosqlite",
        "pgqueuer",
    ):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    import sqlite3

    found["sqlite3 library"] = sqlite3.sqlite_version
    return found


def _machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "system": platform.platform()}


def draw(results: list[dict[str, Any]], path: Path) -> bool:
    """Draw the ratios per row and database as a bar chart; False without matplotlib."""
    from squeal.cli.output import pyplot

    plt = pyplot()
    if plt is None:
        return False
    names = [row for result in results for row in result["rows"]]
    rows = [r for r in dict.fromkeys(names) if r != "memory"]
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 1.1 * len(rows)), 8), sharex=True)
    width = 0.8 / max(1, len(results))
    panels = (("ratio", "floor", "the raw-driver floor"), ("lean_ratio", "lean", "the lean floor"))
    for ax, (key, short, title) in zip(axes, panels, strict=True):
        for i, result in enumerate(results):
            ratios = [(result["rows"].get(r) or {}).get(key) or 0.0 for r in rows]
            x = [x + i * width for x in range(len(rows))]
            ax.bar(x, ratios, width, label=result["database"])
        ax.axhline(0.8, color="grey", linestyle="--", linewidth=1, label="target 0.8")
        ax.set_ylabel(f"squeal / {short} (higher is better)")
        ax.set_title(f"squeal against {title}")
        ax.legend()
    axes[-1].set_xticks([x + width * (len(results) - 1) / 2 for x in range(len(rows))])
    axes[-1].set_xticklabels(rows, rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- the command ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``squeal bench``."""
    # Under ``squeal``, the subparser already has the global single --url: a group created with
    # conflict_handler "resolve" replaces it with this repeatable one.
    parser.conflict_handler = "resolve"
    group = parser.add_argument_group("bench options")
    group.add_argument(
        "--url",
        action="append",
        default=argparse.SUPPRESS,
        help="database URL to measure; repeat for several (default: a temporary SQLite file)",
    )
    group.add_argument(
        "--prefix",
        default="bench",
        help="stem of the bench's table prefix: its tables are PREFIX_<8 random characters>_*, "
        "dropped at the end (default: bench)",
    )
    group.add_argument(
        "--rounds", type=int, default=None, help=f"rounds per row (default {FULL.rounds})"
    )
    group.add_argument(
        "--quick", action="store_true", help="tiny counts and one round: a smoke run for CI"
    )
    group.add_argument("--json", metavar="PATH", type=Path, help="write the results as JSON")
    group.add_argument(
        "--png", metavar="PATH", type=Path, help="draw the ratios (needs squeal[bench])"
    )
    group.add_argument(
        "--only", action="append", choices=ROWS, help="run only this row (repeatable)"
    )
    group.add_argument(
        "--galera",
        metavar="SECONDS",
        type=float,
        default=None,
        help="measure squeal on a private 3-node MariaDB Galera cluster, by topology, SECONDS "
        "per topology (needs mariadbd, galera-4 and rsync; docs/scaling.md)",
    )
    group.add_argument(
        "--celery",
        metavar="TASKS",
        type=int,
        default=None,
        help="measure Celery tasks/s end to end instead of the rows: squeal and kombu's "
        "SQLAlchemy transport on each --url, and each --celery-broker (needs squeal[celery])",
    )
    group.add_argument(
        "--celery-broker",
        metavar="URL",
        action="append",
        default=[],
        help="another Celery broker to measure beside squeal (repeatable), e.g. "
        "amqp://guest:guest@127.0.0.1:5672// or redis://127.0.0.1:6379/15",
    )
    soak = parser.add_argument_group("soak options (docs/operations.md)")
    soak.add_argument(
        "--soak",
        metavar="MINUTES",
        type=float,
        help="instead of the rows: a sustained mix for MINUTES, the rate and the table's state "
        "per window",
    )
    soak.add_argument(
        "--window", metavar="SECONDS", type=float, default=10.0, help="soak window (default 10)"
    )
    soak.add_argument(
        "--private-postgresql",
        action="store_true",
        help="soak a private PostgreSQL server started at its default settings (needs the "
        "server programs: initdb, pg_ctl), beside any --url",
    )
    soak.add_argument(
        "--hold-snapshot",
        action="store_true",
        help="keep a snapshot open in another session during the soak",
    )
    soak.add_argument(
        "--shape",
        choices=("batch", "worker"),
        default="batch",
        help="the soak's workload: one client cycling batches (default), or a Worker of 4 "
        "handlers fed by a producer",
    )


def _measure(url: sa.URL, args: argparse.Namespace, rows: tuple[str, ...], stem: str) -> Any:
    """One database's results: the sync rows, or squeal.aio's on an asyncio URL."""
    if _is_async(url):
        from squeal.cli import bench_aio

        prefix = f"{stem}_{secrets.token_hex(4)}"
        return bench_aio.measure(url, args.quick, args.rounds, prefix)
    sizes = QUICK if args.quick else FULL
    return _Bench(url, sizes, args.rounds or sizes.rounds, rows, stem).run()


def _is_async(url: sa.URL) -> bool:
    """Whether ``url`` names an asyncio driver (measured by ``squeal.cli.bench_aio``)."""
    return bool(getattr(url.get_dialect(), "is_async", False))


def _urls(args: argparse.Namespace, scratch: Path) -> list[sa.URL]:
    given = getattr(args, "url", None)
    texts = [given] if isinstance(given, str) else list(given or [])
    if not texts:
        texts = [f"sqlite:///{scratch / 'bench.db'}"]
    return [sa.make_url(text) for text in texts]


def _celery(args: argparse.Namespace) -> int:
    """``--celery``: Celery tasks/s by broker (squeal.cli.bench_celery)."""
    from squeal.cli import bench_celery

    scratch = Path(tempfile.mkdtemp(prefix="squeal-bench-"))
    try:
        return bench_celery.run(_urls(args, scratch), args.celery_broker, args.celery, args.json)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """Run the bench for every ``--url``; print the tables; 0 on success."""
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or sizes.rounds
    if rounds < 1:
        print("squeal bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    rows = tuple(args.only or ROWS)
    stem = getattr(args, "prefix", "bench")
    try:
        validate_prefix(stem)
        if len(stem) > _MAX_STEM:
            raise ValueError(f"at most {_MAX_STEM} characters (the bench appends 9)")
    except ValueError as exc:
        print(f"squeal bench: invalid --prefix: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "galera", None) is not None:
        from squeal.cli import bench_galera

        return bench_galera.run(args.galera, args.json)
    if getattr(args, "celery", None) is not None:
        return _celery(args)
    if getattr(args, "soak", None) is not None:
        from squeal.cli import soak

        return soak.run(args, _urls(args, Path(".")) if getattr(args, "url", None) else [], stem)
    from squeal.cli.floor import floor_missing

    for given in _urls(args, Path(".")):
        missing = None if _is_async(given) else floor_missing(given)
        if missing:
            print(f"squeal bench: {missing}", file=sys.stderr)
            return 2
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="squeal-bench-"))
    results: list[dict[str, Any]] = []
    try:
        for url in _urls(args, scratch):
            shown = url.render_as_string(hide_password=True)
            _say(f"measuring {shown}")
            began = time.monotonic()
            result = _measure(url, args, rows, stem)
            result["url"] = shown
            result["elapsed_s"] = round(time.monotonic() - began, 1)
            results.append(result)
            _say(f"{shown}: done in {result['elapsed_s']:.0f} s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - started
    machine = _machine()
    print(
        f"squeal bench: medians of {rounds} round(s) (asyncio URLs: see their rounds); "
        f"ratio = squeal / floor (1.0: as fast as "
        f"hand-written driver code); lean ratio = squeal / lean floor (a hand-written queue on a "
        f"table of its own with two indexes). {machine['cpus']} CPUs, {machine['cpu']}."
    )
    print(", ".join(f"{name} {v}" for name, v in _versions().items()))
    for result in results:
        print()
        print(report(result))
    print(f"\nelapsed {elapsed:.0f} s")
    document = {
        "versions": _versions(),
        "machine": machine,
        "rounds": rounds,
        "quick": bool(args.quick),
        "sizes": sizes.__dict__,
        "elapsed_s": round(elapsed, 1),
        "databases": results,
    }
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if args.png and not draw(results, args.png):
        print("squeal bench: --png needs matplotlib: pip install 'squeal[bench]'", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m squeal.cli.bench``: the same as ``squeal bench``."""
    parser = argparse.ArgumentParser(prog="squeal bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
