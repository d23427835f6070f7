"""``squeal bench --celery N``: Celery tasks per second end to end, by broker, in one run.

For each broker: one Celery worker process (threads pool, concurrency 4, ``acks_late``,
prefetch multiplier 4, the same settings everywhere) is started and warmed up with one task;
then this process sends N no-op tasks as fast as it can and the time from the first send to
the N-th task done is measured (each task appends a byte to a file, whose size says how many
are done). Brokers: squeal on each ``--url`` (each send stored before it returns, Celery's
default; then with ``publish_linger``), kombu's own SQLAlchemy transport on each ``--url``
(``sqla+``, which deletes a message when it reads it: no real ack), and every
``--celery-broker`` (for example ``amqp://guest:guest@127.0.0.1:5672//`` for RabbitMQ, with
persistent messages and no publisher confirms, Celery's default, then with
``confirm_publish``; and ``redis://127.0.0.1:6379/15``).

The worker imports this module as its Celery app (``-A squeal.cli.bench_celery``), configured
from the environment variables the bench sets.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery
from kombu.entity import Queue as KombuQueue

import squeal.kombu  # noqa: F401 - registers the squeal+ URLs
from squeal.cli import bench_brokers

#: Environment variables the worker's app reads.
_BROKER, _OPTIONS_PREFIX, _COUNTER = (
    "SQUEAL_BENCH_BROKER",
    "SQUEAL_BENCH_PREFIX",
    "SQUEAL_BENCH_FILE",
)
#: How long a worker may take to start and run its first task, and N tasks at most.
START_SECONDS, RUN_SECONDS = 60.0, 600.0


#: The ``publish_linger`` of squeal's ``linger`` rows: sends stored in batches.
LINGER = 0.002
#: How each measured broker sends, beside its default: squeal's ``linger`` (a send returns
#: before it is stored, as RabbitMQ's without publisher confirms) and RabbitMQ's
#: ``confirms`` (a send returns once the broker stored it, as squeal's default).
VARIANTS = {"linger": "publish_linger 2 ms", "confirms": "publisher confirms"}


def _options(broker: str, prefix: str, variant: str | None = None) -> dict[str, Any]:
    """Transport options by broker: squeal's and kombu SQLAlchemy's tables get the prefix;
    a ``variant`` (see VARIANTS) adds its option."""
    if broker.startswith("squeal+"):
        return {"prefix": prefix, "publish_linger": LINGER if variant == "linger" else None}
    if broker.startswith("sqla+"):
        return {"queue_tablename": f"{prefix}_kq", "message_tablename": f"{prefix}_km"}
    return {"confirm_publish": True} if variant == "confirms" else {}


def make_app(broker: str, prefix: str, variant: str | None = None) -> Celery:
    """The bench's Celery app: the same task settings for every broker."""
    app = Celery("squeal_bench", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport_options=_options(broker, prefix, variant),
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        worker_prefetch_multiplier=4,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_ignore_result=True,
        task_default_queue=f"{prefix}_tasks",
    )
    return app


# The worker's app (``celery -A squeal.cli.bench_celery worker``); the bench's own app only
# sends, by the task's name.
app = make_app(
    os.environ.get(_BROKER, "squeal+sqlite:///squeal-bench-celery.db"),
    os.environ.get(_OPTIONS_PREFIX, "bench"),
)


@app.task(name="squeal_bench.noop")
def noop() -> None:
    """The measured task: one byte appended to the counter file."""
    with open(os.environ[_COUNTER], "ab") as out:
        out.write(b".")


def _done(counter: Path) -> int:
    try:
        return counter.stat().st_size
    except FileNotFoundError:
        return 0


def _wait(counter: Path, count: int, worker: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _done(counter) < count:
        if worker.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def measure(broker: str, tasks: int, variant: str | None = None) -> dict[str, Any]:
    """Tasks per second through ``broker`` (its sender sending as ``variant`` says), or the
    reason it could not be measured."""
    prefix = f"bench_{secrets.token_hex(4)}"
    scratch = Path(tempfile.mkdtemp(prefix="squeal-bench-celery-"))
    counter = scratch / "done"
    sender = make_app(broker, prefix, variant)
    env = {**os.environ, _BROKER: broker, _OPTIONS_PREFIX: prefix, _COUNTER: str(counter)}
    command = [
        sys.executable, "-m", "celery", "-A", "squeal.cli.bench_celery", "worker",
        "--pool", "threads", "--concurrency", "4", "--loglevel", "WARNING",
        "--without-heartbeat", "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    task = sender.signature("squeal_bench.noop")
    # The first send makes the broker's tables (kombu's SQLAlchemy transport races a worker
    # making them at the same time, and names its foreign key alike in every prefix).
    task.apply_async()
    log = (scratch / "worker.log").open("wb")
    worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"broker": _shown(broker, variant), "tasks": tasks}
    try:
        if not _wait(counter, 1, worker, START_SECONDS):
            result["error"] = "the worker did not run a first task: " + _tail(scratch)
            return result
        started = time.perf_counter()
        for _ in range(tasks):
            task.apply_async()
        sent = time.perf_counter() - started
        if not _wait(counter, tasks + 1, worker, RUN_SECONDS):
            result["error"] = f"{_done(counter) - 1} of {tasks} done: " + _tail(scratch)
            return result
        elapsed = time.perf_counter() - started
        result.update(tasks_per_s=round(tasks / elapsed), sent_per_s=round(tasks / sent))
        return result
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        for cleanup in (lambda: _delete_queue(sender, f"{prefix}_tasks"), sender.close):
            try:
                cleanup()
            except Exception as error:  # the broker failed the run already: drop what is left
                print(f"squeal bench: cleaning up failed: {error}", file=sys.stderr)
        _drop(broker, prefix)


def _delete_queue(sender: Celery, name: str) -> None:
    """Delete the run's queue on the broker (RabbitMQ keeps durable queues, Redis its keys)."""
    with sender.connection_for_write() as conn:
        KombuQueue(name, channel=conn.default_channel).delete()


def _drop(broker: str, prefix: str) -> None:
    """Drop the tables the run made (squeal's, or kombu SQLAlchemy's)."""
    if broker.startswith("squeal+"):
        from squeal import Queue

        queue = Queue(sa.create_engine(broker.removeprefix("squeal+")), prefix=prefix)
        queue.destroy()
        queue.close()
        queue.engine.dispose()
    elif broker.startswith("sqla+"):
        engine = sa.create_engine(broker.removeprefix("sqla+"))
        meta = sa.MetaData()
        meta.reflect(engine, only=lambda name, _: name.startswith(prefix))
        meta.drop_all(engine)
        engine.dispose()


def _tail(scratch: Path) -> str:
    return (scratch / "worker.log").read_text(errors="replace")[-600:]


def _shown(broker: str, variant: str | None = None) -> str:
    scheme, _, rest = broker.partition("://")
    if scheme.startswith(("squeal+", "sqla+")):
        database = sa.make_url(broker.split("+", 1)[1]).render_as_string(hide_password=True)
        shown = f"{scheme.split('+', 1)[0]}+{database}"
    else:
        shown = f"{scheme}://{rest.rpartition('@')[2]}"
    return shown if variant is None else f"{shown}, {VARIANTS[variant]}"


def brokers(urls: list[sa.URL], others: list[str]) -> list[tuple[str, str | None]]:
    """squeal (each send stored before it returns, then lingering) and kombu's SQLAlchemy
    transport on each database, then the other brokers (RabbitMQ also with confirms)."""
    plain = [url.render_as_string(hide_password=False) for url in urls]
    squeal = [(f"squeal+{u}", v) for u in plain for v in (None, "linger")]
    rest = [(o, v) for o in others for v in (None, "confirms") if v is None or _amqp(o)]
    return squeal + [(f"sqla+{u}", None) for u in plain] + rest


def _amqp(broker: str) -> bool:
    return broker.partition("://")[0] in ("amqp", "pyamqp", "amqps")


def _measured_apart(broker: str, tasks: int, variant: str | None) -> dict[str, Any]:
    """:func:`measure` in a process of its own: kombu's SQLAlchemy transport keeps state per
    process that breaks a second connection to another database."""
    child = [sys.executable, "-m", "squeal.cli.bench_celery", broker, str(tasks)]
    child += [] if variant is None else [variant]
    done = subprocess.run(child, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"broker": _shown(broker, variant), "tasks": tasks, "error": done.stderr[-600:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _raw_rows(urls: list[sa.URL], others: list[str], count: int) -> list[dict[str, Any]]:
    """The raw queue rows (squeal.cli.bench_brokers) of squeal on each URL and each other
    broker, printed as a second table."""
    print(
        f"\nraw queues, one client, {count} messages of 64 bytes one at a time "
        "(squeal: put; get + ack. RabbitMQ: persistent + publisher confirms; basic_get + ack. "
        "Redis: LPUSH; LMOVE + LREM)"
    )
    print(f"{'broker':<60} {'put/s':>9} {'get+ack/s':>10}")
    results: list[dict[str, Any]] = []
    targets = [url.render_as_string(hide_password=False) for url in urls]
    for target in targets + [o for o in others if not o.startswith(("squeal+", "sqla+"))]:
        shown = _shown(f"squeal+{target}" if target in targets else target)
        try:
            result = {"broker": shown, **bench_brokers.rows(target, count)}
            print(f"{shown:<60} {result['put']:>9} {result['get_ack']:>10}")
        except Exception as error:  # a broker that is not there: say so, go on
            result = {"broker": shown, "error": f"{type(error).__name__}: {error}"}
            print(f"{shown:<60} failed: {result['error']}")
        results.append(result)
    return results


def run(urls: list[sa.URL], others: list[str], tasks: int, json_path: Path | None) -> int:
    """Measure every broker; print the table (and write it as JSON to ``json_path``); 0 when
    every broker was measured."""
    if tasks < 1:
        print("squeal bench: --celery needs at least 1 task", file=sys.stderr)
        return 2
    results = []
    for broker, variant in brokers(urls, others):
        shown = _shown(broker, variant)
        print(f"squeal bench: celery on {shown} ...", file=sys.stderr, flush=True)
        results.append(_measured_apart(broker, tasks, variant))
    print(
        f"squeal bench --celery: {tasks} no-op tasks end to end (sent, then run by one worker "
        "process: threads pool, concurrency 4, acks_late, prefetch multiplier 4)"
    )
    width = max(60, *(len(r["broker"]) + 1 for r in results))
    print(f"{'broker':<{width}} {'tasks/s':>9} {'sent/s':>9}")
    failed = 0
    for result in results:
        if "error" in result:
            failed += 1
            print(f"{result['broker']:<{width}} failed: {result['error']}")
        else:
            shown, done, sent = result["broker"], result["tasks_per_s"], result["sent_per_s"]
            print(f"{shown:<{width}} {done:>9} {sent:>9}")
    raw = _raw_rows(urls, others, tasks)
    if json_path is not None:
        document = {"celery": results, "raw": raw, "tasks": tasks}
        json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":  # one measurement, as a JSON line (see _measured_apart)
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), sys.argv[3] if sys.argv[3:] else None)))
