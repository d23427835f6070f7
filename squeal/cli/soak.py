"""``squeal bench --soak MINUTES``: does a queue stay fast when it runs for a long time?

The bench's rows run for seconds; a queue runs for months, and every row it delivers is deleted,
so its speed rests on the database's clean-up of dead rows. A soak run keeps one client busy
with a steady mix over a standing backlog for MINUTES and reports, per window, the rate and what
the server says about the message table (PostgreSQL: live and dead rows, table and index size;
MariaDB/MySQL: InnoDB's history list, table and index size; SQLite: file, free pages, WAL).
``--hold-snapshot`` keeps a REPEATABLE READ snapshot open in another session the whole time, as
a report query, a backup or an idle-in-transaction session of the application would.
``--private-postgresql`` also soaks a private server started at PostgreSQL's defaults.

The mix (``--shape batch``), per cycle: ``put_many`` of 110, ``get_many`` of 100 and
``ack_many``, then ten single ``get`` + ``ack``, over a backlog of 5,000 messages of 64 bytes,
on a topic of its own. ``--shape worker``: a :class:`~squeal.Worker` with 4 handlers (each
message claimed, handled by a function that does nothing, acked) while the main thread tops the
backlog up with ``put_many`` of 110; the rate counts handled messages.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from squeal import Message, Queue

#: Messages waiting in the topic when the run starts (topped up by each cycle's puts).
BACKLOG = 5_000
PAYLOAD = bytes(range(64))
TOPIC = "soak"


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _hold_snapshot(engine: sa.Engine, begin: str, table: str) -> sa.Connection:
    """Another session with a snapshot it keeps until closed (``begin``: the bundle's SQL)."""
    holder = engine.connect()
    holder.exec_driver_sql(begin)
    holder.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
    return holder


class _Batches:
    """The batch mix: one client, one cycle per step."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def step(self) -> int:
        """One cycle; how many messages it delivered."""
        queue = self.queue
        queue.put_many([PAYLOAD] * 110, TOPIC)
        batch = queue.get_many(TOPIC, 100)
        queue.ack_many(batch)
        done = len(batch)
        for _ in range(10):
            msg = queue.get(TOPIC)
            if msg is not None:
                msg.ack()
                done += 1
        return done

    def stop(self) -> None:
        """Nothing runs between steps."""


class _Workers:
    """A Worker of 4 handlers on the topic; each step tops the backlog up."""

    def __init__(self, queue: Queue) -> None:
        from squeal import Worker

        self.queue = queue
        self.put = BACKLOG
        self.handled = self._counted = 0
        self._lock = threading.Lock()
        self.worker = Worker(queue, self._handle, TOPIC, concurrency=4, wait=0.5)
        self._thread = threading.Thread(
            target=self.worker.run, kwargs={"install_signal_handlers": False}, daemon=True
        )
        self._thread.start()

    def _handle(self, message: Message) -> None:
        with self._lock:
            self.handled += 1

    def step(self) -> int:
        """Top the backlog up (or wait a moment); how many messages were handled since."""
        if self.put - self.handled < BACKLOG:
            self.queue.put_many([PAYLOAD] * 110, TOPIC)
            self.put += 110
        else:
            time.sleep(0.002)
        with self._lock:
            handled = self.handled
        done, self._counted = handled - self._counted, handled
        return done

    def stop(self) -> None:
        """Stop the worker (it finishes what it holds)."""
        self.worker.stop()
        self._thread.join()


def soak(
    url: sa.URL,
    minutes: float,
    *,
    window: float,
    hold_snapshot: bool,
    stem: str,
    shape: str = "batch",
) -> dict[str, Any]:
    """Run the mix on ``url`` for ``minutes``; the windows and a summary."""
    from squeal import Queue, migrate
    from squeal.dialects import health_for
    from squeal.schema import build_tables

    prefix = f"{stem}_{secrets.token_hex(4)}"
    engine = sa.create_engine(url)
    migrate.upgrade(engine, prefix=prefix)
    tables = build_tables(prefix)
    checks = health_for(engine.dialect, tables)
    queue = Queue(engine, prefix=prefix)
    holder = None
    mix: _Batches | _Workers | None = None
    windows: list[dict[str, Any]] = []
    try:
        for _ in range(BACKLOG // 500):
            queue.put_many([PAYLOAD] * 500, TOPIC)
        if hold_snapshot:
            holder = _hold_snapshot(engine, checks.snapshot_sql, tables.message.name)
        mix = _Workers(queue) if shape == "worker" else _Batches(queue)
        started = time.monotonic()
        end = started + minutes * 60
        window_start, done = started, 0
        while True:
            done += mix.step()
            now = time.monotonic()
            if now - window_start >= window or now >= end:
                with engine.connect() as conn:
                    numbers = checks.numbers(conn)
                entry = {"t_s": round(now - started, 1), "rate": done / (now - window_start)}
                entry.update({k: round(v, 2) for k, v in numbers.items()})
                windows.append(entry)
                _say(
                    f"{url.get_backend_name()}: {entry['t_s']:.0f} s  {entry['rate']:,.0f} msg/s  "
                    + "  ".join(f"{k}={v:,.1f}" for k, v in numbers.items())
                )
                window_start, done = now, 0
                if now >= end:
                    break
    finally:
        if mix is not None:
            mix.stop()
        if holder is not None:
            holder.close()
        queue.close()
        migrate.downgrade(engine, prefix=prefix, revision="base", drop_version_table=True)
        engine.dispose()
    first, last = windows[0]["rate"], windows[-1]["rate"]
    return {
        "database": f"{url.get_backend_name()}+{url.get_driver_name()}",
        "url": url.render_as_string(hide_password=True),
        "prefix": prefix,
        "minutes": minutes,
        "window_s": window,
        "hold_snapshot": hold_snapshot,
        "shape": shape,
        "windows": windows,
        "last_over_first": round(last / first, 3) if first else None,
    }


def report(result: dict[str, Any]) -> str:
    """The windows of one run as a table, and the last window's rate over the first's."""
    from squeal.cli.output import table

    windows = result["windows"]
    keys = sorted({k for w in windows for k in w} - {"t_s", "rate"})
    rows = [
        [f"{w['t_s']:.0f}", f"{w['rate']:,.0f}", *[w.get(k, "-") for k in keys]] for w in windows
    ]
    held = ", snapshot held by another session" if result["hold_snapshot"] else ""
    head = f"{result['database']}: {result['minutes']} min, {result['shape']} mix{held}"
    ratio = result["last_over_first"]
    tail = f"last window / first: {ratio:.2f}" if ratio is not None else ""
    return f"{head}\n{table(['t (s)', 'msg/s', *keys], rows)}\n{tail}"


def draw(results: list[dict[str, Any]], path: Path) -> bool:
    """Plot the rate per window of every run; False when matplotlib is missing."""
    from squeal.cli.output import pyplot

    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for result in results:
        held = ", snapshot held" if result["hold_snapshot"] else ""
        ax.plot(
            [w["t_s"] for w in result["windows"]],
            [w["rate"] for w in result["windows"]],
            label=f"{result['database']} ({result['shape']}{held})",
        )
    ax.set_xlabel("seconds")
    ax.set_ylabel("messages/s")
    ax.set_ylim(bottom=0)
    ax.set_title("squeal soak: rate per window")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


def run(args: argparse.Namespace, urls: list[sa.URL], stem: str) -> int:
    """``squeal bench --soak``: every ``--url`` in turn; 0 on success."""
    minutes, window = float(args.soak), float(args.window)
    if minutes <= 0 or window <= 0:
        print("squeal bench: --soak and --window must be positive", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="squeal-soak-"))
    results = []
    server = None
    try:
        if args.private_postgresql:
            from squeal.cli.servers import PrivatePostgres, postgres_bin

            found = postgres_bin()
            if found is None:
                print(
                    "squeal bench: --private-postgresql needs the PostgreSQL server programs "
                    "(initdb, pg_ctl): install the server package or set SQUEAL_PG_BIN",
                    file=sys.stderr,
                )
                return 2
            # Its own folder, which the postgres user may enter (mkdtemp's are private).
            pg_root = Path(tempfile.mkdtemp(prefix="squeal-soak-pg-"))
            try:
                server = PrivatePostgres(pg_root, found)
                server.start()
            except (OSError, subprocess.SubprocessError) as error:
                shutil.rmtree(pg_root, ignore_errors=True)
                why = getattr(error, "stderr", b"") or b""
                detail = why.decode(errors="replace").strip().splitlines()[-1:] or [str(error)]
                print(
                    f"squeal bench: the private PostgreSQL did not start: {detail[0]}",
                    file=sys.stderr,
                )
                return 1
            urls = [*urls, sa.make_url(server.url)]
        elif not urls:
            urls = [sa.make_url(f"sqlite:///{scratch / 'soak.db'}")]
        for url in urls:
            _say(f"soaking {url.render_as_string(hide_password=True)} for {minutes:g} min")
            results.append(
                soak(
                    url,
                    minutes,
                    window=window,
                    hold_snapshot=args.hold_snapshot,
                    stem=stem,
                    shape=args.shape,
                )
            )
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    for result in results:
        print(report(result))
        print()
    if args.json:
        args.json.write_text(json.dumps({"soak": results}, indent=2) + "\n", encoding="utf-8")
    if args.png and not draw(results, args.png):
        print("squeal bench: --png needs matplotlib: pip install 'squeal[bench]'", file=sys.stderr)
    return 0


__all__ = ["BACKLOG", "report", "run", "soak"]
