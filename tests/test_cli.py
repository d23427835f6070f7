"""Every ``squeal`` queue command through its installed entry point, in a subprocess."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from squeal import Limit, Queue, Worker
from tests.urls import primary_async_url

SQUEAL = str(Path(sys.executable).with_name("squeal"))


def squeal(*args: str, stdin: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [SQUEAL, *args],
        input=stdin.decode("latin-1"),
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture
def cli(
    make_queue: Callable[..., Queue], db_url: str, prefix: str
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``squeal`` on this test's database and prefix (tables created)."""
    make_queue()

    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        return squeal(*args, "--url", db_url, "--prefix", prefix, stdin=stdin)

    return run


def test_put_peek_get_ack_and_stats(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    put = cli("put", "jobs", "low")
    assert put.returncode == 0, put.stderr
    assert cli("put", "jobs", "high", "--priority", "5").returncode == 0
    assert cli("put", "jobs", "later", "--delay", "60").returncode == 0
    stats = cli("stats", "--json")
    assert stats.returncode == 0
    assert json.loads(stats.stdout)["jobs"]["ready"] == 2
    assert json.loads(stats.stdout)["jobs"]["delayed"] == 1
    table = cli("stats")
    assert table.stdout.split()[:6] == ["topic", "ready", "delayed", "leased", "dead", "oldest"]
    bounded = cli("stats", "--limit", "1")
    assert bounded.stdout.split()[6:11] == ["jobs", "1+", "1+", "0+", "0+"], bounded.stdout
    assert "at least N" in bounded.stdout
    assert json.loads(cli("stats", "--json", "--limit", "1").stdout)["jobs"]["estimated"] is True
    peek = cli("peek", "jobs", "--json")
    assert [json.loads(line)["payload"] for line in peek.stdout.splitlines()] == ["high", "low"]
    got = cli("get", "jobs", "--ack", "--json")
    assert got.returncode == 0
    assert json.loads(got.stdout)["payload"] == "high"
    assert cli("get", "jobs", "--ack").returncode == 0
    empty = cli("get", "jobs")
    assert empty.returncode == 3
    assert cli("peek", "jobs").returncode == 3
    left = make_queue().stats()["jobs"]
    assert (left.ready, left.delayed) == (0, 1)


def test_put_reads_stdin_and_binary_payloads_print_as_base64(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    assert cli("put", "bin", "-", stdin=b"\xff\x00\x01").returncode == 0
    got = cli("get", "bin", "--ack")
    assert "base64:/wAB" in got.stdout


def test_put_with_a_taken_dedup_key_enqueues_nothing(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    assert cli("put", "jobs", "x", "--dedup-key", "k").returncode == 0
    again = cli("put", "jobs", "y", "--dedup-key", "k")
    assert again.returncode == 0
    assert again.stdout == ""  # a script sees no id; the notice is on stderr
    assert "deduplicated" in again.stderr
    assert make_queue().size("jobs") == 1


def test_put_with_a_ttl_and_its_own_max_attempts(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    put = cli("put", "jobs", "x", "--ttl", "3600", "--max-attempts", "2")
    assert put.returncode == 0, put.stderr
    msg = make_queue().get("jobs")
    assert msg is not None
    assert msg.max_attempts == 2
    msg.ack()
    refused = cli("put", "jobs", "x", "--ttl", "0")
    assert refused.returncode == 2
    assert "ttl" in refused.stderr


def test_put_with_headers_and_peek_shows_them(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    put = cli("put", "jobs", "x", "--header", "trace=a=b", "--header", "tenant=7")
    assert put.returncode == 0, put.stderr
    assert make_queue().peek("jobs")[0].headers == {"trace": "a=b", "tenant": "7"}
    shown = json.loads(cli("peek", "jobs", "--json").stdout)
    assert shown["headers"] == {"trace": "a=b", "tenant": "7"}
    assert cli("put", "jobs", "y", "--header", "novalue").returncode == 2


def test_options_may_follow_the_topic_and_the_data(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    put = cli("put", "jobs", "--priority", "10", "urgent")
    assert put.returncode == 0, put.stderr
    assert cli("put", "jobs", "normal", "--delay", "0").returncode == 0
    [first, second] = make_queue().peek("jobs", 5)
    assert (first.payload, first.priority, second.payload) == (b"urgent", 10, b"normal")


def test_stdin_loses_one_trailing_newline_unless_raw_and_may_not_be_empty(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    assert cli("put", "jobs", "-", stdin=b"hello\n").returncode == 0
    assert cli("put", "jobs", "-", "--raw", stdin=b"raw\n").returncode == 0
    assert cli("put", "jobs", stdin=b"two lines\n\n").returncode == 0
    empty = cli("put", "jobs", stdin=b"")
    assert empty.returncode == 2
    assert "--allow-empty" in empty.stderr
    assert cli("put", "jobs", "--allow-empty", stdin=b"").returncode == 0
    payloads = [m.payload for m in make_queue().peek("jobs", 10)]
    assert payloads == [b"hello", b"raw\n", b"two lines\n", b""]


TRICKY = [
    b"base64:AAH/",
    b"\x00\x01\xff",
    b"",
    b'"quoted"',
    b"tab\there",
    b"plain text",
    b"\xe9t\xe9",
]


def test_payloads_display_unambiguously_and_json_decodes_to_the_exact_bytes(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    make_queue().put_many(TRICKY, "bytes")
    table = cli("peek", "bytes", "-n", "20")
    shown = [line.split(None, 5)[-1] for line in table.stdout.splitlines()[1:]]
    assert len(shown) == len(TRICKY)
    assert len(set(shown)) == len(TRICKY), shown
    decoded = []
    for line in cli("peek", "bytes", "-n", "20", "--json").stdout.splitlines():
        record = json.loads(line)
        if record["encoding"] == "utf-8":
            decoded.append(record["payload"].encode("utf-8"))
        else:
            assert record["encoding"] == "base64"
            decoded.append(base64.b64decode(record["payload"]))
    assert decoded == TRICKY


def test_an_unknown_migrate_action_is_a_usage_error(db_url: str) -> None:
    done = squeal("migrate", "sideways", "--url", db_url, "--prefix", "tunused")
    assert done.returncode == 2
    assert "upgrade, downgrade, current" in done.stderr


STATS_ON_MYSQL = ("stats", "--url", "mysql://root@127.0.0.1:1/test")


def test_a_bare_mysql_url_without_mysqlclient_names_pymysql() -> None:
    blocked = "import sys; sys.modules['MySQLdb'] = None; from squeal.cli import main; "
    done = subprocess.run(
        [sys.executable, "-c", f"{blocked}sys.exit(main(sys.argv[1:]))", *STATS_ON_MYSQL],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "pip install 'squeal[mysqlclient]'" in done.stderr
    assert "mysql+pymysql://" in done.stderr
    assert "Traceback" not in done.stderr


def test_verbose_shows_the_traceback_of_an_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    plain = squeal("stats", "--url", url)
    assert plain.returncode == 1
    verbose = subprocess.run(
        [SQUEAL, "stats", "--url", url, "-v"], capture_output=True, text=True, check=False
    )
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr
    assert "squeal: error:" in verbose.stderr


def test_dead_redrive_and_purge(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    q = make_queue(max_attempts=1)
    q.put(b"poison", "jobs")
    msg = q.get("jobs")
    assert msg is not None
    msg.nack()
    dead = cli("dead", "jobs", "--json")
    assert dead.returncode == 0
    assert json.loads(dead.stdout)["payload"] == "poison"
    redrive = cli("redrive", "jobs")
    assert "redrove 1" in redrive.stdout
    assert q.size("jobs") == 1
    refused = cli("purge", "jobs")
    assert refused.returncode == 2
    assert q.size("jobs") == 1
    purged = cli("purge", "jobs", "--yes")
    assert purged.returncode == 0
    assert "deleted 1" in purged.stdout
    assert q.stats() == {}


def test_dead_says_why_and_redrive_and_purge_take_ids(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    q = make_queue(max_attempts=1)
    ids = q.put_many([b"a", b"b", b"c"], "jobs")
    for msg in q.get_many("jobs", 3):
        msg.nack(error=ValueError("bad\ninput " + "x" * 100))
    listed = cli("dead", "jobs").stdout.splitlines()
    assert listed[0].split()[:5] == ["id", "attempts", "died", "reason", "last"]
    assert "failed" in listed[1]
    assert "ValueError: bad input xxx" in listed[1]  # one line, cut
    record = json.loads(cli("dead", "jobs", "--json").stdout.splitlines()[0])
    assert record["reason"] == "failed"
    assert record["last_error"].startswith("ValueError: bad\ninput xxx")
    assert record["died_at"] is not None
    redrive = cli("redrive", "jobs", "--id", str(ids[0]))
    assert "redrove 1" in redrive.stdout
    purged = cli("purge", "jobs", "--dead-only", "--id", str(ids[1]), "--yes")
    assert "deleted 1" in purged.stdout
    assert [d.id for d in q.dead("jobs")] == [ids[2]]
    assert q.size("jobs") == 1


def test_pause_lists_and_resume(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    q = make_queue()
    q.put(b"x", "jobs")
    assert cli("pause").stdout.strip() == "no topic is paused"
    paused = cli("pause", "jobs", "idle")
    assert paused.returncode == 0, paused.stderr
    assert q.paused() == ["idle", "jobs"]
    assert q.get("jobs") is None
    assert cli("pause").stdout.split() == ["idle", "jobs"]
    table = cli("stats").stdout.splitlines()
    assert table[0].split()[-1] == "state"
    assert [line.split()[-1] for line in table[1:]] == ["paused", "paused"]
    assert json.loads(cli("stats", "--json").stdout)["jobs"]["paused"] is True
    assert cli("resume").returncode == 2  # names nothing: a usage error
    assert cli("resume", "jobs", "idle").returncode == 0
    assert q.paused() == []
    msg = q.get("jobs")
    assert msg is not None
    msg.ack()


def test_limit_sets_shows_and_removes_limits(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    q = make_queue()
    q.put_many([b"x"] * 3, "jobs")
    assert cli("limit").stdout.strip() == "no topic is limited"
    done = cli("limit", "jobs", "--concurrency", "2", "--rate", "10", "--per", "0.5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split() == ["jobs", "2", "10", "per", "0.5s"]
    assert q.limits() == [Limit("jobs", 2, 10, 0.5)]
    assert len(q.get_many("jobs", 3)) == 2
    assert json.loads(cli("limit", "--json").stdout) == {
        "topic": "jobs",
        "concurrency": 2,
        "rate": 10,
        "per": 0.5,
    }
    assert cli("limit", "--rate", "3").returncode == 2  # no topic: a usage error
    assert cli("limit", "jobs", "--concurrency", "x").returncode == 2
    refused = cli("limit", "jobs", "--concurrency", "0")
    assert refused.returncode == 2
    assert "concurrency" in refused.stderr
    assert "Traceback" not in refused.stderr
    removed = cli("limit", "jobs", "--concurrency", "none", "--rate", "none")
    assert removed.stdout.strip() == "no limit"
    assert q.limits() == []


def test_workers_lists_the_running_workers(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    q = make_queue()
    assert cli("workers").stdout.strip() == "no worker is running"
    q.put_many([b"x"] * 2, "jobs")
    worker = Worker(q, lambda m: None, ["jobs", "mail"], concurrency=2, wait=0.1, registry_beat=0.5)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while [w.acked for w in q.workers()] != [2]:  # the first beat after both acks
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shown = cli("workers")
        listed = json.loads(cli("workers", "--json").stdout)
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert shown.returncode == 0, shown.stderr
    header, row = shown.stdout.splitlines()[:2]
    assert header.split()[:6] == ["id", "host", "pid", "kind", "topics", "in"]
    assert row.split()[2:7] == [str(os.getpid()), "thread", "jobs,mail", "0/2", "2"]
    assert (listed["pid"], listed["topics"], listed["acked"]) == (os.getpid(), ["jobs", "mail"], 2)
    assert cli("workers").stdout.strip() == "no worker is running"


def test_bindings_lists_the_exchanges_bindings(
    cli: Callable[..., subprocess.CompletedProcess[str]], make_queue: Callable[..., Queue]
) -> None:
    q = make_queue()
    assert cli("bindings").stdout.strip() == "no topic is bound"
    q.bind("orders", "billing")
    q.bind("orders", "audit", key="eu", ttl=60, expires=600)
    q.bind("logs", "pager")
    shown = cli("bindings", "orders")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["exchange", "key", "topic", "ttl", "expires"]
    assert lines[1].split() == ["orders", "-", "billing", "-", "-"]
    assert lines[2].split()[:4] == ["orders", "eu", "audit", "60s"]
    listed = [json.loads(line) for line in cli("bindings", "--json").stdout.splitlines()]
    assert [(b["exchange"], b["topic"]) for b in listed] == [
        ("logs", "pager"),
        ("orders", "billing"),
        ("orders", "audit"),
    ]
    assert listed[2]["ttl"] == 60
    assert listed[2]["expires_at"] is not None
    assert cli("bindings", "nothing").stdout.strip() == "no topic is bound to 'nothing'"


def test_scheduler_puts_due_schedules_and_stops_on_sigterm(
    cli: Callable[..., subprocess.CompletedProcess[str]],
    make_queue: Callable[..., Queue],
    db_url: str,
    prefix: str,
) -> None:
    q = make_queue()
    assert cli("schedules").stdout.strip() == "no schedules"
    q.schedule("beat", topic="ticks", payload=b"tick", every=0.2)
    q.schedule("nightly", topic="n", cron="0 3 * * *", timezone="Europe/Berlin")
    listed = cli("schedules").stdout
    assert "every 0.2s" in listed
    assert "cron 0 3 * * * (Europe/Berlin)" in listed
    time.sleep(0.3)
    once = cli("scheduler", "--once")
    assert once.returncode == 0, once.stderr
    assert once.stdout.strip() == "put 1 message(s)"
    assert q.size("ticks") == 1

    command = [SQUEAL, "scheduler", "--url", db_url, "--prefix", prefix, "--interval", "0.2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while q.size("ticks") < 3:
            assert time.monotonic() < deadline, "the scheduler put nothing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.startswith("squeal scheduler: 2 schedule(s), every 0.2s")
    lines = cli("schedules", "--json").stdout.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["beat", "nightly"]


def test_missing_schema_names_the_migrate_command(db_url: str, prefix: str) -> None:
    done = squeal("stats", "--url", db_url, "--prefix", prefix)
    assert done.returncode == 1
    assert "squeal migrate" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_worker_with_an_unknown_handler_is_a_usage_error(
    cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = cli("worker", "no_such_module:handle")
    assert done.returncode == 2
    assert "cannot load handler" in done.stderr


def test_bad_url_is_a_usage_error() -> None:
    done = squeal("stats", "--url", "nonsense://")
    assert done.returncode == 2
    assert done.stderr.startswith("squeal: error:")


def test_unreachable_database_is_one_line() -> None:
    done = squeal("stats", "--url", "postgresql+psycopg://nobody:hunter22@127.0.0.1:1/x")
    assert done.returncode == 1
    assert "unreachable" in done.stderr
    assert "hunter22" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    done = squeal("get", "jobs", "--url", f"sqlite:///{path}")
    assert done.returncode == 1
    assert "squeal migrate" in done.stderr
    assert not path.exists()


def test_demo_completes_on_sqlite(tmp_path: Path) -> None:
    done = subprocess.run(
        [SQUEAL, "demo"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dead letter" in done.stdout
    assert "redriven" in done.stdout
    assert "msg/s" in done.stdout
    # The deliberate failures are shown on the demo's screen, not as handler tracebacks.
    assert "Traceback" not in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the current folder


def test_the_cli_takes_an_asyncio_drivers_url(db_url: str, prefix: str) -> None:
    """Tooling on the application's own async URL: each command runs in the bridge on a loop of
    its own; ``squeal worker`` (threads) asks for the sync URL instead."""
    url = primary_async_url(db_url)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return squeal(*args, "--url", url, "--prefix", prefix)

    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "to squeal_" in migrated.stdout
    try:
        assert run("put", "jobs", "hello").returncode == 0
        stats = run("stats", "--json")
        assert json.loads(stats.stdout)["jobs"]["ready"] == 1, stats.stderr
        got = run("get", "jobs", "--json")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["payload"] == "hello"
        worker = run("worker", "tests.test_cli:squeal")
        assert worker.returncode == 2
        assert "sync URL" in worker.stderr
    finally:
        down = run("migrate", "downgrade", "base")
        assert down.returncode == 0, down.stderr
