"""The worker: heartbeats, crashes, graceful stop, failures and ack_in_transaction (all databases).

Process tests run ``squeal worker tests.test_worker:record`` through the real CLI entry point;
the handler appends ``start ID`` / ``done ID`` lines to ``$SQUEAL_TEST_OUT`` and sleeps
``$SQUEAL_TEST_SLEEP`` seconds in between.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from squeal import Message, Queue, SchemaMissing, ValidationError, __version__
from squeal.worker import Worker

ROOT = Path(__file__).resolve().parent.parent


def record(message: Message) -> None:
    """Handler for the worker processes (see the module docstring)."""
    out = Path(os.environ["SQUEAL_TEST_OUT"])
    with out.open("a") as f:
        f.write(f"start {message.id}\n")
    time.sleep(float(os.environ.get("SQUEAL_TEST_SLEEP", "0")))
    with out.open("a") as f:
        f.write(f"done {message.id}\n")


def _worker_process(
    db_url: str, prefix: str, out: Path, sleep: float, *options: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SQUEAL_TEST_OUT": str(out), "SQUEAL_TEST_SLEEP": str(sleep)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "squeal.cli",
            "worker",
            "tests.test_worker:record",
            "--url",
            db_url,
            "--prefix",
            prefix,
            "--topic",
            "jobs",
            *options,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _lines(out: Path) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


@pytest.fixture
def running() -> Iterator[Callable[[Worker], threading.Thread]]:
    """Run workers on threads; stop and join them at teardown."""
    started: list[tuple[Worker, threading.Thread]] = []

    def start(worker: Worker) -> threading.Thread:
        thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
        thread.start()
        started.append((worker, thread))
        return thread

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(timeout=30)
        worker.queue.close()


def test_heartbeat_keeps_a_long_handlers_lease(
    make_queue: Callable[..., Queue], running: Callable[[Worker], threading.Thread]
) -> None:
    q = make_queue(visibility_timeout=2.0)  # renewed every 0.67 s: a 1.3 s stall is borne
    rival = make_queue(visibility_timeout=2.0)
    q.put(b"long job", "jobs")
    deliveries: list[int] = []

    def slow(msg: Message) -> None:
        deliveries.append(msg.id)
        time.sleep(4.5)  # over two visibility timeouts

    worker = Worker(q, slow, "jobs", wait=0.2)
    running(worker)
    _wait_for(lambda: bool(deliveries))
    stolen = rival.get("jobs", wait=4.0)
    rival.close()
    _wait_for(lambda: worker.stats.acked == 1)
    assert stolen is None
    assert deliveries == deliveries[:1]
    assert q.stats() == {}


def test_handler_exception_nacks_and_the_message_is_retried(
    make_queue: Callable[..., Queue],
    running: Callable[[Worker], threading.Thread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = make_queue(failure_base_delay=0.1)
    q.put(b"secret payload", "jobs")
    attempts: list[int] = []

    def flaky(msg: Message) -> None:
        attempts.append(msg.attempts)
        if msg.attempts == 1:
            raise RuntimeError("gateway timeout")

    worker = Worker(q, flaky, "jobs", wait=0.2)
    with caplog.at_level("WARNING", logger="squeal.worker"):
        running(worker)
        _wait_for(lambda: worker.stats.acked == 1)
    assert attempts == [1, 2]
    assert worker.stats.failed == 1
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert "gateway timeout" in failures[0]
    assert "secret payload" not in caplog.text


def test_a_message_s_own_max_attempts_is_the_one_its_failure_log_names(
    make_queue: Callable[..., Queue],
    running: Callable[[Worker], threading.Thread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = make_queue(failure_base_delay=0.0, max_attempts=5)
    q.put(b"job", "jobs", max_attempts=1)

    def broken(msg: Message) -> None:
        raise ValueError("no")

    worker = Worker(q, broken, "jobs", wait=0.2)
    with caplog.at_level("WARNING", logger="squeal.worker"):
        running(worker)
        _wait_for(lambda: worker.stats.failed == 1)
        _wait_for(lambda: len(caplog.records) >= 1)
    assert caplog.records[0].levelname == "ERROR"
    assert "dead after 1 attempts" in caplog.records[0].getMessage()
    assert q.stats()["jobs"].dead == 1


def test_concurrency_claims_batches_for_free_threads(
    make_queue: Callable[..., Queue], running: Callable[[Worker], threading.Thread]
) -> None:
    q = make_queue()
    q.put_many([str(i).encode() for i in range(40)], "jobs")
    seen: list[bytes] = []
    lock = threading.Lock()
    busy = [0]
    most = [0]

    def handle(msg: Message) -> None:
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.05)
        with lock:
            busy[0] -= 1
            seen.append(msg.payload)

    worker = Worker(q, handle, "jobs", concurrency=4, wait=0.2)
    running(worker)
    _wait_for(lambda: worker.stats.acked == 40)
    assert sorted(seen) == sorted(str(i).encode() for i in range(40))
    assert 1 < most[0] <= 4


def test_prefetch_claims_ahead_within_its_bound_and_a_stop_releases_it_at_once(
    make_queue: Callable[..., Queue], running: Callable[[Worker], threading.Thread]
) -> None:
    """One handler and ``prefetch=3``: four messages leased (one running, three waiting), the
    rest left to other consumers; a stop gives the three back at once, not after the lease."""
    q = make_queue()
    rival = make_queue()
    q.put_many([str(i).encode() for i in range(10)], "jobs")
    hold = threading.Event()
    started: list[int] = []

    def handle(msg: Message) -> None:
        started.append(msg.id)
        hold.wait(30)

    worker = Worker(q, handle, "jobs", prefetch=3, wait=0.1, grace_period=30)
    thread = running(worker)
    _wait_for(lambda: bool(started))
    others = rival.get_many("jobs", 10)
    assert len(others) == 6
    rival.ack_many(others)
    worker.stop()
    back: list[Message] = []  # released by the stop, one by one, while one still runs
    while len(back) < 3:
        more = rival.get_many("jobs", 10, wait=10)
        assert more, back
        back += more
    assert len(back) == 3
    assert all(m.attempts == 1 for m in back)
    rival.ack_many(back)
    hold.set()
    thread.join(timeout=30)
    assert worker.stats.acked == 1
    assert worker.stats.released == 3
    assert started == started[:1]
    assert q.stats() == {}
    rival.close()


def test_acks_wait_to_share_a_commit_and_a_stop_commits_them(
    make_queue: Callable[..., Queue], running: Callable[[Worker], threading.Thread]
) -> None:
    """With ``settle_every=60`` handled messages stay leased (and counted in flight) until
    the completer commits their acks, which a stop does at once."""
    q = make_queue()
    q.put_many([b"a", b"b", b"c"], "jobs")
    handled: list[bytes] = []
    worker = Worker(q, lambda msg: handled.append(msg.payload), "jobs", settle_every=60, wait=0.1)
    thread = running(worker)
    _wait_for(lambda: len(handled) == 3)
    time.sleep(0.2)
    assert worker.stats.acked == 0
    assert q.stats()["jobs"].leased == 3
    worker.stop()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert worker.stats.acked == 3
    assert q.stats() == {}


def test_a_handler_that_settles_its_own_message_does_not_hold_up_the_others(
    make_queue: Callable[..., Queue], running: Callable[[Worker], threading.Thread]
) -> None:
    """A handler may release (or nack, or ack) its message itself: the completer then leaves
    it alone, and the acks committed with it in a batch still commit."""
    q = make_queue()
    q.put_many([b"a", b"self", b"b"], "jobs")
    released: list[int] = []
    handled: list[bytes] = []

    def handle(msg: Message) -> None:
        if msg.payload == b"self" and not released:
            released.append(msg.id)
            msg.release()  # handled later, on its redelivery
            return
        handled.append(msg.payload)

    worker = Worker(q, handle, "jobs", wait=0.1, settle_every=0.2)
    running(worker)
    _wait_for(lambda: worker.stats.acked == 3)
    assert sorted(handled) == [b"a", b"b", b"self"]
    assert q.stats() == {}


def test_messages_released_after_the_grace_period_leave_the_worker_s_hands(
    make_queue: Callable[..., Queue],
) -> None:
    q = make_queue()
    q.put(b"stuck", "jobs")
    started = threading.Event()
    hold = threading.Event()

    def handle(msg: Message) -> None:
        started.set()
        hold.wait(30)

    worker = Worker(q, handle, "jobs", wait=0.1, grace_period=0.2)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    assert started.wait(30)
    worker.stop()
    thread.join(timeout=30)
    assert worker.stats.released == 1
    assert not worker._in_flight  # nothing left for the heartbeat to renew
    again = q.get("jobs")
    hold.set()
    assert again is not None
    again.ack()


def test_many_messages_of_a_one_message_handler_are_each_handled_once(
    make_queue: Callable[..., Queue], running: Callable[[Worker], threading.Thread]
) -> None:
    """Claims ahead and batched acks lose nothing and settle nothing twice: 500 messages,
    two workers of two handlers each, every message handled once and acked."""
    q = make_queue()
    other = make_queue()
    q.put_many([str(i).encode() for i in range(500)], "jobs")
    seen: list[bytes] = []
    lock = threading.Lock()

    def handle(msg: Message) -> None:
        with lock:
            seen.append(msg.payload)

    workers = [Worker(queue, handle, "jobs", concurrency=2, wait=0.1) for queue in (q, other)]
    for worker in workers:
        running(worker)
    _wait_for(lambda: sum(w.stats.acked for w in workers) == 500)
    assert sorted(seen) == sorted(str(i).encode() for i in range(500))
    assert q.stats() == {}


def test_workers_put_due_schedules_at_most_once_a_second_per_process(
    make_queue: Callable[..., Queue], running: Callable[[Worker], threading.Thread]
) -> None:
    """Two workers of one process share one run of the schedules per second: a schedule due
    every 0.1 s is put at most once per second since the workers started (missed ticks fire
    once). Counted, not timed: whatever a stall delays, no more runs than seconds + 1."""
    q = make_queue()
    handled: list[int] = []
    q.schedule("often", topic="ticks", every=0.1)
    started = time.monotonic()
    for _ in range(2):
        running(Worker(q, lambda msg: handled.append(msg.id), "ticks", wait=0.2))
    _wait_for(lambda: len(handled) >= 3)
    count, elapsed = len(handled), time.monotonic() - started
    assert count <= int(elapsed) + 1, (count, elapsed)


def test_a_worker_told_not_to_runs_no_schedule(
    make_queue: Callable[..., Queue], running: Callable[[Worker], threading.Thread]
) -> None:
    q = make_queue()
    q.schedule("due", topic="ticks", every=0.05)
    worker = Worker(q, lambda msg: None, "ticks", wait=0.2, run_schedules=False)
    running(worker)
    time.sleep(1.5)
    assert q.schedules()[0].last_run_at is None
    assert worker.stats.acked == 0


def test_ack_in_transaction_commits_the_handlers_writes_exactly_once(
    make_queue: Callable[..., Queue],
    running: Callable[[Worker], threading.Thread],
    engine: sa.Engine,
    prefix: str,
) -> None:
    q = make_queue(failure_base_delay=0.1)
    effects = sa.Table(
        f"{prefix}_effects",
        sa.MetaData(),
        sa.Column("msg_id", sa.Integer),
        sa.Column("n", sa.Integer),
    )
    effects.create(engine)
    try:
        ids = q.put_many([b"a", b"b", b"c"], "jobs")

        def handle(msg: Message, conn: sa.Connection) -> None:
            conn.execute(effects.insert().values(msg_id=msg.id, n=msg.attempts))
            if msg.attempts == 1 and msg.payload == b"b":
                raise RuntimeError("fails after writing: the write must roll back")

        worker = Worker(q, handle, "jobs", wait=0.2, ack_in_transaction=True)
        running(worker)
        _wait_for(lambda: worker.stats.acked == 3)
        with engine.connect() as conn:
            rows = sorted(tuple(r) for r in conn.execute(sa.select(effects)))
        assert rows == sorted([(ids[0], 1), (ids[1], 2), (ids[2], 1)])
        assert q.stats() == {}
    finally:
        effects.drop(engine)


def test_killed_worker_process_message_is_redelivered(
    make_queue: Callable[..., Queue], db_url: str, prefix: str, tmp_path: Path
) -> None:
    q = make_queue()
    msg_id = q.put(b"job", "jobs")
    out = tmp_path / "out.txt"
    child = _worker_process(db_url, prefix, out, 60, "--visibility-timeout", "3")
    try:
        _wait_for(lambda: f"start {msg_id}" in _lines(out))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    again = q.get("jobs", wait=10)
    q.close()
    assert again is not None
    assert again.id == msg_id
    assert again.attempts == 2
    again.ack()


def test_a_worker_killed_before_its_acks_committed_redelivers_the_messages(
    make_queue: Callable[..., Queue], db_url: str, prefix: str, tmp_path: Path
) -> None:
    """The cost of a crash between the handler's return and the flush: a redelivery."""
    q = make_queue()
    ids = [i for i in q.put_many([b"one", b"two"], "jobs") if i is not None]
    out = tmp_path / "out.txt"
    child = _worker_process(
        db_url, prefix, out, 0, "--visibility-timeout", "3", "--settle-every", "60"
    )
    try:
        _wait_for(lambda: {f"done {i}" for i in ids} <= set(_lines(out)))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    again: list[Message] = []
    while len(again) < 2:
        more = q.get_many("jobs", 10, wait=10)
        assert more, again
        again += more
    q.close()
    assert sorted(m.id for m in again) == sorted(ids)
    assert all(m.attempts == 2 for m in again)


def test_sigterm_finishes_the_in_flight_message_within_the_grace_period(
    make_queue: Callable[..., Queue], db_url: str, prefix: str, tmp_path: Path
) -> None:
    q = make_queue()
    msg_id = q.put(b"job", "jobs")
    out = tmp_path / "out.txt"
    child = _worker_process(db_url, prefix, out, 1.0, "--grace-period", "20")
    _wait_for(lambda: f"start {msg_id}" in _lines(out))
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err.decode()
    assert _lines(out) == [f"start {msg_id}", f"done {msg_id}"]
    assert q.stats() == {}
    q.close()


def test_sigterm_releases_a_message_still_running_after_the_grace_period(
    make_queue: Callable[..., Queue], db_url: str, prefix: str, tmp_path: Path
) -> None:
    q = make_queue()
    msg_id = q.put(b"job", "jobs")
    out = tmp_path / "out.txt"
    child = _worker_process(db_url, prefix, out, 60, "--grace-period", "0.5")
    _wait_for(lambda: f"start {msg_id}" in _lines(out))
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 0, err.decode()
    assert b"released 1" in err
    back = q.get("jobs")  # released: ready at once, not after the 60 s lease
    q.close()
    assert back is not None
    assert back.id == msg_id
    assert back.attempts == 1
    back.ack()


def test_a_failure_is_logged_with_its_traceback_and_a_dead_message_as_an_error(
    make_queue: Callable[..., Queue],
    running: Callable[[Worker], threading.Thread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = make_queue(failure_base_delay=0.0, max_attempts=2)
    msg_id = q.put(b"secret payload", "jobs")

    def broken(msg: Message) -> None:
        raise ValueError(f"cannot parse attempt {msg.attempts}")

    worker = Worker(q, broken, "jobs", wait=0.2)
    with caplog.at_level("WARNING", logger="squeal.worker"):
        running(worker)
        _wait_for(lambda: worker.stats.failed == 2)
        _wait_for(lambda: len(caplog.records) >= 2)
    retried, dead = caplog.records[:2]
    assert (retried.levelname, dead.levelname) == ("WARNING", "ERROR")
    assert f"message {msg_id}" in retried.getMessage()
    assert "will be retried" in retried.getMessage()
    assert "dead after 2 attempts" in dead.getMessage()
    for record in (retried, dead):
        assert record.exc_info is not None
        assert record.exc_info[0] is ValueError
    assert "secret payload" not in caplog.text
    assert [d.id for d in q.dead("jobs")] == [msg_id]


FAILING_WORKER = """
import sys, threading, time
import sqlalchemy as sa
from squeal import Queue
from squeal.worker import Worker

url, prefix = sys.argv[1], sys.argv[2]
q = Queue(sa.create_engine(url), prefix=prefix, max_attempts=1)

def handler(msg):
    raise RuntimeError("the handler's own words")

worker = Worker(q, handler, "jobs", wait=0.2)
thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
thread.start()
deadline = time.monotonic() + 30
while worker.stats.failed < 1 and time.monotonic() < deadline:
    time.sleep(0.05)
worker.stop()
thread.join()
q.close()
"""


def test_handler_failures_reach_stderr_when_the_application_configured_no_logging(
    make_queue: Callable[..., Queue], db_url: str, prefix: str
) -> None:
    q = make_queue()
    msg_id = q.put(b"secret payload", "jobs")
    done = subprocess.run(
        [sys.executable, "-c", FAILING_WORKER, db_url, prefix],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"message {msg_id} of topic 'jobs' failed on attempt 1" in done.stderr
    assert "dead after 1 attempts" in done.stderr
    assert "Traceback" in done.stderr
    assert "RuntimeError: the handler's own words" in done.stderr
    assert "secret payload" not in done.stderr


def _worker_run(db_url: str, prefix: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``squeal worker tests.test_worker:one_argument`` run to its end (it must end by itself)."""
    command = [sys.executable, "-m", "squeal.cli", "worker", "tests.test_worker:one_argument"]
    return subprocess.run(
        [*command, "--url", db_url, "--prefix", prefix, *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_argument(message: Message) -> None:
    """A handler that cannot take the connection of --ack-in-transaction."""


def two_arguments(message: Message, connection: sa.Connection) -> None:
    """A handler that needs --ack-in-transaction."""


def test_a_handler_that_cannot_take_its_arguments_is_refused_before_running(
    queue: Queue,
) -> None:
    with pytest.raises(ValidationError, match=r"handler\(message, connection\)"):
        Worker(queue, one_argument, "jobs", ack_in_transaction=True)
    with pytest.raises(ValidationError, match="ack_in_transaction=True"):
        Worker(queue, two_arguments, "jobs")
    Worker(queue, two_arguments, "jobs", ack_in_transaction=True)
    Worker(queue, lambda *args: None, "jobs", ack_in_transaction=True)


def test_cli_worker_refuses_a_one_argument_handler_with_ack_in_transaction(
    make_queue: Callable[..., Queue], db_url: str, prefix: str
) -> None:
    make_queue()
    done = _worker_run(db_url, prefix, "--ack-in-transaction")
    assert done.returncode == 2, done.stderr
    assert "handler(message, connection)" in done.stderr
    assert "Traceback" not in done.stderr


def test_worker_on_missing_tables_stops_with_the_command_to_run(
    engine: sa.Engine, prefix: str, db_url: str
) -> None:
    q = Queue(engine, prefix=prefix)
    try:
        with pytest.raises(SchemaMissing, match="squeal migrate"):
            Worker(q, one_argument, "jobs", wait=0.1).run(install_signal_handlers=False)
    finally:
        q.close()
    done = _worker_run(db_url, prefix)
    assert done.returncode == 1, done.stderr
    assert "squeal migrate" in done.stderr
    assert "Traceback" not in done.stderr


# -- the worker registry (squeal/registry.py) ---------------------------------------------------


def _registered(q: Queue, **wanted: object) -> Callable[[], bool]:
    """Whether exactly one worker is listed and its fields have the ``wanted`` values."""

    def check() -> bool:
        found = q.workers()
        return len(found) == 1 and all(getattr(found[0], k) == v for k, v in wanted.items())

    return check


def test_a_running_worker_is_listed_with_its_counts_and_leaves_on_stop(
    make_queue: Callable[..., Queue], running: Callable[[Worker], threading.Thread]
) -> None:
    q = make_queue(failure_base_delay=0.0, max_attempts=1)
    assert q.workers() == []
    q.put_many([b"a", b"b", b"bad"], "jobs")
    hold = threading.Event()

    def handle(msg: Message) -> None:
        if msg.payload == b"bad":
            raise ValueError("bad")
        if msg.payload == b"slow":
            hold.wait(30)

    worker = Worker(q, handle, ["jobs", "other"], concurrency=3, wait=0.1, registry_beat=0.5)
    thread = running(worker)
    _wait_for(_registered(q, acked=2, failed=1, in_flight=0))
    q.put(b"slow", "other")
    _wait_for(_registered(q, in_flight=1))
    (info,) = q.workers()
    assert (info.host, info.pid, info.kind) == (socket.gethostname(), os.getpid(), "thread")
    assert (info.topics, info.concurrency, info.version) == (("jobs", "other"), 3, __version__)
    assert (info.acked, info.failed, info.released) == (2, 1, 0)
    assert info.started_at <= info.beat_at < info.expires_at
    # Listed until six beats after the last one, by the database clock.
    assert (info.expires_at - info.beat_at).total_seconds() == pytest.approx(3.0, abs=0.01)
    hold.set()
    _wait_for(_registered(q, acked=3, in_flight=0))
    worker.stop()
    thread.join(timeout=30)
    assert q.workers() == []


def test_a_killed_worker_is_listed_until_its_row_expires_then_pruned(
    make_queue: Callable[..., Queue], db_url: str, prefix: str, tmp_path: Path, engine: sa.Engine
) -> None:
    q = make_queue()
    out = tmp_path / "out.txt"
    child = _worker_process(db_url, prefix, out, 0, "--registry-beat", "0.5")
    try:
        _wait_for(_registered(q, pid=child.pid, topics=("jobs",)))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    (dead,) = q.workers()
    # Not listed once six beats (3 s) passed without one; its row stays until a beat prunes.
    _wait_for(lambda: q.workers() == [])
    table = sa.table(f"{prefix}_worker", sa.column("id"))
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(sa.select(table.c.id))] == [dead.id]
    replacement = Worker(q, lambda msg: None, "jobs", wait=0.1, registry_beat=0.2)
    thread = threading.Thread(target=replacement.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        _wait_for(_registered(q, pid=os.getpid()))
        with engine.connect() as conn:
            assert dead.id not in [r[0] for r in conn.execute(sa.select(table.c.id))]
    finally:
        replacement.stop()
        thread.join(timeout=30)


def test_a_worker_whose_row_vanished_registers_again_and_one_without_a_registry_goes_on(
    make_queue: Callable[..., Queue],
    running: Callable[[Worker], threading.Thread],
    engine: sa.Engine,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    q = make_queue()
    done: list[bytes] = []
    worker = Worker(q, lambda msg: done.append(msg.payload), "jobs", wait=0.1, registry_beat=0.2)
    running(worker)
    _wait_for(_registered(q))
    (first,) = q.workers()
    table = sa.table(f"{prefix}_worker", sa.column("id"))
    with engine.begin() as conn:
        conn.execute(sa.delete(table))
    _wait_for(lambda: [w.id for w in q.workers()] not in ([], [first.id]))
    # Without its table (a role without the registry's GRANTs fails the same way), the
    # registry logs once and the worker consumes as before.
    moved = f"{prefix}_worker_away"
    with caplog.at_level("WARNING", logger="squeal.worker"):
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {prefix}_worker RENAME TO {moved}"))
        try:
            _wait_for(lambda: "worker registry could not be updated" in caplog.text)
            q.put(b"after", "jobs")
            _wait_for(lambda: done == [b"after"])
            time.sleep(0.5)  # two more failed beats: still one warning
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {moved} RENAME TO {prefix}_worker"))
    assert caplog.text.count("worker registry could not be updated") == 1
