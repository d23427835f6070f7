"""``squeal demo``: a producer and consumer processes on a fresh queue, watched live.

It shows priorities (VIP orders overtake the backlog), retries with backoff (a flaky payment
gateway fails some first attempts), a dead letter (a malformed order fails every attempt) and its
redrive once the "bug" is fixed, then a summary with throughput. By default everything happens
in a SQLite file in a temporary folder, removed at the end; ``--url`` runs it on any database
(in tables of a private prefix, dropped at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

TOPIC = "orders"
VIP_PRIORITY = 9
#: The whole demo stops waiting after this many seconds (it normally needs a few).
TIME_LIMIT = 50.0


def _queue(url: str, prefix: str) -> Any:
    from squeal import Queue

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    return Queue(
        engine, prefix=prefix, visibility_timeout=10, failure_base_delay=0.2, max_attempts=3
    )


def _produce(url: str, prefix: str, count: int, produced: Any) -> None:
    """Put ``count`` orders in batches: most plain, every 10th a VIP, every 20th flaky."""
    queue = _queue(url, prefix)
    n = 0
    queue.put(json.dumps({"n": n, "kind": "poison"}).encode(), TOPIC)
    n += 1
    while n < count:
        batch = min(50, count - n)
        plain: list[bytes] = []
        vip: list[bytes] = []
        for i in range(n, n + batch):
            kind = "flaky" if i % 20 == 0 else "vip" if i % 10 == 5 else "plain"
            body = json.dumps({"n": i, "kind": kind}).encode()
            (vip if kind == "vip" else plain).append(body)
        queue.put_many(plain, TOPIC)
        queue.put_many(vip, TOPIC, priority=VIP_PRIORITY)
        n += batch
        with produced.get_lock():
            produced.value = n
        time.sleep(0.02)  # a steady stream, so consumers work while orders arrive
    queue.close()


def _consume(url: str, prefix: str, fixed: str, stop: Any, events: Any) -> None:
    """Run a Worker whose handler fails like a real one sometimes does."""
    import logging

    from squeal.message import Message
    from squeal.worker import Worker

    # The demo reports each failure and death on its own screen; the Worker's log lines (with
    # the deliberate failures' tracebacks) would only scroll that away.
    logging.getLogger("squeal.worker").setLevel(logging.CRITICAL)
    queue = _queue(url, prefix)
    handled: list[int] = []

    def handle(msg: Message) -> None:
        order = json.loads(msg.payload)
        time.sleep(0.002)  # the "work"
        if order["kind"] == "flaky" and msg.attempts == 1:
            events.put(("retry", order["n"], msg.attempts, "payment gateway timed out"))
            raise TimeoutError("payment gateway timed out")
        if order["kind"] == "poison" and not os.path.exists(fixed):
            events.put(("retry", order["n"], msg.attempts, "malformed order"))
            raise ValueError("malformed order")
        handled.append(msg.priority)

    worker = Worker(queue, handle, TOPIC, concurrency=4, wait=0.2, grace_period=5)

    def stop_when_told() -> None:
        stop.wait()
        worker.stop()

    threading.Thread(target=stop_when_told, daemon=True).start()
    stats = worker.run(install_signal_handlers=False)
    queue.close()
    events.put(("done", handled, stats.acked, stats.failed))


class _Screen:
    """A progress line redrawn in place on a terminal, printed once a second otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._last = 0.0

    def progress(self, done: int, total: int, text: str) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last < 1.0:
            return
        self._last = now
        width = 30
        filled = width * done // max(total, 1)
        line = f"[{'#' * filled}{'.' * (width - filled)}] handled {done:>5} of {total} | {text}"
        if self.tty:
            sys.stdout.write("\r" + line.ljust(100))
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def say(self, text: str) -> None:
        if self.tty:
            sys.stdout.write("\r" + " " * 100 + "\r")
        print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every order was handled exactly as expected."""
    from squeal.cli.connect import connected_engine
    from squeal.cli.output import CommandError, shown

    total = int(args.messages)
    consumers = int(args.consumers)
    if total < 2 or consumers < 1:
        raise CommandError("--messages must be at least 2 and --consumers at least 1", 2)
    folder = Path(tempfile.mkdtemp(prefix="squeal-demo-"))
    # Only an explicit --url: the demo never writes into $SQUEAL_URL's queue by accident.
    url_text = args.url or f"sqlite:///{folder / 'demo.db'}"
    url = sa.make_url(url_text)
    prefix = f"demo_{secrets.token_hex(3)}"
    screen = _Screen()
    try:
        with connected_engine(url):
            pass
        return _run(
            url.render_as_string(hide_password=False),
            prefix,
            total,
            consumers,
            folder,
            screen,
            shown(url),
            args.keep,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(  # noqa: PLR0915, PLR0917 -- one linear script, read top to bottom
    url: str,
    prefix: str,
    total: int,
    consumers: int,
    folder: Path,
    screen: _Screen,
    where: str,
    keep: bool,
) -> int:
    queue = _queue(url, prefix)
    queue.create()
    screen.say(f"squeal demo on {where} (tables {prefix}_*)")
    screen.say(
        f"  1 producer puts {total} orders (every 10th is a VIP at priority {VIP_PRIORITY}); "
        f"{consumers} consumer process(es) x 4 threads handle them"
    )
    screen.say("  flaky orders fail their first attempt; one malformed order fails every attempt")
    ctx = mp.get_context("spawn")
    produced = ctx.Value("i", 0)
    stop = ctx.Event()
    events = ctx.Queue()
    fixed = str(folder / "fixed")
    start = time.monotonic()
    procs = [ctx.Process(target=_produce, args=(url, prefix, total, produced), daemon=True)]
    procs += [
        ctx.Process(target=_consume, args=(url, prefix, fixed, stop, events), daemon=True)
        for _ in range(consumers)
    ]
    for proc in procs:
        proc.start()
    results: list[tuple[Any, ...]] = []
    retries = 0
    redriven = False
    ok = False
    try:
        while time.monotonic() - start < TIME_LIMIT:
            while not events.empty():
                event = events.get()
                if event[0] == "retry":
                    retries += 1
                    if retries <= 4 or event[3] == "malformed order":
                        screen.say(
                            f"  retry: order {event[1]} failed attempt {event[2]} "
                            f"({event[3]}); back off and try again"
                        )
            stats = queue.stats().get(TOPIC)
            left = 0 if stats is None else stats.total
            made = produced.value
            done = made - left if made >= total else max(0, made - left)
            rate = done / max(time.monotonic() - start, 1e-3)
            text = (
                f"now ready {0 if stats is None else stats.ready:>4}  "
                f"leased {0 if stats is None else stats.leased:>3}  "
                f"retrying {0 if stats is None else stats.delayed:>2}  "
                f"dead {0 if stats is None else stats.dead}  {rate:6.0f} msg/s"
            )
            screen.progress(done, total, text)
            if (
                made >= total
                and stats is not None
                and stats.dead == 1
                and left == 1
                and not redriven
            ):
                dead = queue.dead(TOPIC)
                screen.say(
                    f"  dead letter: order {json.loads(dead[0].payload)['n']} used all "
                    f"{dead[0].attempts} attempts; fixing the bug and redriving it"
                )
                Path(fixed).touch()
                queue.redrive(TOPIC)
                redriven = True
            if made >= total and left == 0 and redriven:
                ok = True
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        screen.progress(total if ok else done, total, text)
        screen.say("")
    finally:
        stop.set()
        for _ in range(consumers):
            try:
                results.append(events.get(timeout=15))
                while results[-1][0] != "done":
                    results[-1] = events.get(timeout=15)
            except Exception:
                break
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        if not keep:
            queue.destroy()
        queue.close()
    order: list[int] = []
    acked = 0
    for _, handled, n_acked, _failed in results:
        order.extend(handled)
        acked += n_acked
    screen.say("summary")
    screen.say(
        f"  orders handled  {acked} of {total} in {elapsed:.1f}s ({acked / elapsed:.0f} msg/s)"
    )
    screen.say(f"  retries         {retries} failed attempts, retried with exponential backoff")
    screen.say(
        "  dead letters    1 redriven after the fix"
        if redriven
        else "  dead letters    none redriven"
    )
    vip = [i for i, p in enumerate(order) if p == VIP_PRIORITY]
    plain = [i for i, p in enumerate(order) if p != VIP_PRIORITY]
    if vip and plain:
        screen.say(
            f"  priorities      VIP orders were handled at position {sum(vip) / len(vip):.0f} on "
            f"average, others at {sum(plain) / len(plain):.0f}"
        )
    if not ok or acked != total:
        screen.say("squeal demo: not every order was handled in time")
        return 1
    screen.say(
        "try it yourself:  squeal migrate && squeal put orders 'hello' && squeal get orders --ack"
    )
    return 0


__all__ = ["run"]
