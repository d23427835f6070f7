"""T6: network faults between squeal and the server.

Two ways to break the path:

- ``faultproxy`` in this process (reset, cut, latency, and a "blackhole" that reads and drops
  everything). Its blackhole keeps ACKing at the TCP level, like a stalled proxy: only a client
  read timeout notices it, which PyMySQL has and psycopg has not, so it runs on MariaDB only.
- A real dead path: the consumer runs in a private network namespace (``unshare -n``, root)
  whose loopback is switched off mid-ack, so packets are lost and nothing is ACKed. The proxy
  inside the namespace reaches the server through a Unix socket relayed by this process. Here
  PostgreSQL's connections are ended by the kernel through the TCP options squeal sets
  (``squeal.connections.DEAD_PEER_SECONDS``), MariaDB's by PyMySQL's read timeout.
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import squeal.session
from squeal import DatabaseError, LeaseLost, OutcomeUnknown, PutOutcomeUnknown, Queue
from tests import needs
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.helpers import REPO

#: Driver timeouts a user sets so that a dead network path raises instead of hanging (the
#: PostgreSQL drivers' reads are bounded by squeal's dead-peer detection instead).
TIMEOUTS: dict[str, dict[str, Any]] = {
    "pymysql": {"connect_timeout": 2, "read_timeout": 2, "write_timeout": 2},
    "mysqldb": {"connect_timeout": 2, "read_timeout": 2, "write_timeout": 2},
    "mariadbconnector": {"connect_timeout": 2, "read_timeout": 2, "write_timeout": 2},
    "mysqlconnector": {"connection_timeout": 2, "read_timeout": 2, "write_timeout": 2},
    "psycopg": {"connect_timeout": 2},
    "psycopg2": {"connect_timeout": 2},
    "pg8000": {"timeout": 10},
}
#: The dead-peer bound the namespace test gives squeal (its default is 30 s).
DEAD_PEER_SECONDS = 3.0


@pytest.fixture
def proxied(driver: str, db_url: str) -> Iterator[tuple[FaultProxy, sa.Engine]]:
    url = sa.make_url(db_url)
    proxy = FaultProxy((url.host or "127.0.0.1", url.port or 3306))
    eng = sa.create_engine(url.set(port=proxy.port), connect_args=TIMEOUTS[driver])
    yield proxy, eng
    eng.dispose()
    proxy.close()


def _ack_through(
    fault: str, direct: Queue, proxied: tuple[FaultProxy, sa.Engine]
) -> tuple[bool, float]:
    """Claim through the proxy, inject ``fault``, ack; heal; check that nothing is left."""
    proxy, eng = proxied
    q = Queue(eng, prefix=direct.prefix, visibility_timeout=1.0)
    mid = q.put(b"x")
    m = q.get()
    assert m is not None
    assert m.id == mid
    proxy.mode = fault
    started = time.monotonic()
    try:
        m.ack()
        acked = True
    except DatabaseError:
        acked = False
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"{fault}: ack took {elapsed:.1f}s"
    proxy.mode = "pass"
    if not acked:
        time.sleep(1.2)
        again = direct.get()
        assert again is not None
        assert again.id == mid
        again.ack()
    assert direct.stats().get("default") is None or direct.stats()["default"].total == 0
    q.close()
    return acked, elapsed


@pytest.mark.every_driver
@pytest.mark.dialects("mysql")
@pytest.mark.parametrize("fault", ["blackhole", "reset", "cut", "latency"])
def test_network_fault_raises_or_recovers_and_the_lease_comes_back(
    make_queue: Callable[..., Queue],
    proxied: tuple[FaultProxy, sa.Engine],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    """A consumer's ack through a faulty path: it times out or succeeds, never hangs; an
    unacked message comes back after its lease."""
    monkeypatch.setattr(squeal.session, "RECONNECT_ATTEMPTS", 1)
    acked, _ = _ack_through(fault, make_queue(), proxied)
    if fault == "blackhole":
        assert not acked
    if fault in ("reset", "cut", "latency"):
        assert acked, f"{fault}: squeal did not reconnect"


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql")
@pytest.mark.parametrize("fault", ["reset", "cut", "latency"])
def test_postgresql_connection_reset_cut_or_slowed_is_reconnected_and_the_ack_succeeds(
    make_queue: Callable[..., Queue],
    proxied: tuple[FaultProxy, sa.Engine],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    """On PostgreSQL too, a reset or cut connection is replaced and a slow one waited for."""
    monkeypatch.setattr(squeal.session, "RECONNECT_ATTEMPTS", 1)
    acked, _ = _ack_through(fault, make_queue(), proxied)
    assert acked, f"{fault}: squeal did not reconnect"


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql", "mysql")
def test_an_ack_whose_reply_was_lost_is_reported_as_of_unknown_outcome(
    make_queue: Callable[..., Queue], proxied: tuple[FaultProxy, sa.Engine]
) -> None:
    """The server commits the ack, the connection drops before its reply arrives (what a
    failover can do): the ack's retry finds the lease gone, and the error says the first try
    may have committed, not merely that the lease was lost."""
    proxy, eng = proxied
    direct = make_queue()
    q = Queue(eng, prefix=direct.prefix)
    mid = q.put(b"x")
    m = q.get()
    assert m is not None
    if eng.dialect.name == "postgresql":
        # Some drivers prepare or parse in a round trip of its own: lose the one whose reply
        # says the DELETE was done (its CommandComplete tag).
        proxy.reply_marker = b"DELETE 1"
    proxy.mode = "lose_reply"
    with pytest.raises(OutcomeUnknown, match="may have committed") as raised:
        m.ack()
    assert isinstance(raised.value, LeaseLost)  # handlers of a lost lease still catch it
    assert raised.value.message_id == mid
    assert direct.stats() == {}  # it had committed
    other = direct.put(b"y")
    again = q.get(visibility_timeout=0.2)  # a lease lost, nothing uncertain: plain LeaseLost
    assert again is not None
    time.sleep(0.3)
    taken = direct.get()
    assert taken is not None
    assert taken.id == other
    with pytest.raises(LeaseLost) as plain:
        again.ack()
    assert type(plain.value) is LeaseLost
    taken.ack()
    q.close()


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql", "mysql")
def test_a_put_whose_reply_was_lost_is_reported_and_never_stored_twice(
    make_queue: Callable[..., Queue], proxied: tuple[FaultProxy, sa.Engine]
) -> None:
    """The server commits a put, the connection drops before its reply arrives: squeal does
    not try it again (a second try would store it twice) and says it may have been stored. A
    put with a dedup key is tried again: the key catches the first try's copy."""
    proxy, eng = proxied
    direct = make_queue()
    q = Queue(eng, prefix=direct.prefix)
    q.put(b"before")  # connected, schema checked
    if eng.dialect.name == "postgresql":
        proxy.reply_marker = b"SELECT 1\x00"  # its CommandComplete, not a prepare's reply
    proxy.mode = "lose_reply"
    with pytest.raises(PutOutcomeUnknown, match="may have been stored"):
        q.put(b"plain")
    q.peek()  # a new connection (its handshake is a first reply too)
    proxy.mode = "lose_reply"
    assert q.put(b"keyed", dedup_key="k") is None  # stored by the first try
    stored = direct.get_many("default", 10)
    assert sorted(m.payload for m in stored) == [b"before", b"keyed", b"plain"]
    direct.ack_many(stored)
    q.close()


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql", "mysql")
def test_calls_wait_through_a_server_that_refuses_for_a_while_after_a_dropped_connection(
    make_queue: Callable[..., Queue], proxied: tuple[FaultProxy, sa.Engine]
) -> None:
    """A failover as a client sees it: the connection drops, then new ones are refused for a
    few seconds. squeal keeps reconnecting (``RECONNECT_SECONDS``) instead of failing after
    three quick refusals: the put and the claim land once the server answers. The put is not
    one whose outcome is unknown: the connection the server closed while it sat idle is found
    before the put is sent on it."""
    proxy, eng = proxied
    direct = make_queue()
    q = Queue(eng, prefix=direct.prefix)
    q.put(b"before")
    proxy.mode = "refuse"
    started = time.monotonic()  # before the timer starts: a stall in between only adds
    threading.Timer(2.0, setattr, (proxy, "mode", "pass")).start()
    with warnings.catch_warnings():
        if eng.driver == "pg8000":  # leaks each refused connection's socket (docs/drivers.md)
            warnings.simplefilter("ignore", ResourceWarning)
        q.put(b"during")
        waited = time.monotonic() - started
        proxy.mode = "refuse"
        threading.Timer(2.0, setattr, (proxy, "mode", "pass")).start()
        claimed = q.get_many("default", 10)
        gc.collect()
    assert waited >= 1.5
    assert sorted(m.payload for m in claimed) == [b"before", b"during"]
    q.ack_many(claimed)
    assert direct.get_many("default", 10) == []
    q.close()


_IN_NAMESPACE = """
import json, subprocess, sys, threading, time
import sqlalchemy as sa
import squeal.connections
from squeal import DatabaseError, Queue
from tests.reliability.faultproxy import FaultProxy

url, prefix, relay, dead_peer, connect_args, heal_after = sys.argv[1:7]
squeal.connections.DEAD_PEER_SECONDS = float(dead_peer)
def loopback(state):
    subprocess.run(["ip", "link", "set", "lo", state], check=True)
loopback("up")
proxy = FaultProxy(relay)  # 127.0.0.1 in this namespace -> the relay's Unix socket
engine = sa.create_engine(
    sa.make_url(url).set(host="127.0.0.1", port=proxy.port), connect_args=json.loads(connect_args)
)
vt = 1.0 if float(heal_after) == 0 else 60.0
q = Queue(engine, prefix=prefix, visibility_timeout=vt)
mid = q.put(b"x")
m = q.get()
assert m is not None and m.id == mid
loopback("down")  # from here every packet on this path is lost
if float(heal_after):
    threading.Timer(float(heal_after), loopback, ["up"]).start()
started = time.monotonic()
try:
    m.ack()
    outcome = "acked"
except DatabaseError as exc:
    outcome = f"DatabaseError: {exc}"
elapsed = time.monotonic() - started
redelivered = False
if outcome != "acked":
    loopback("up")
    time.sleep(vt + 0.2)  # the lease runs out
    again = q.get()
    redelivered = again is not None and again.id == mid
    if again is not None:
        again.ack()
print(json.dumps({"outcome": outcome, "elapsed": elapsed, "redelivered": redelivered}))
"""


def _namespaces_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], check=False, capture_output=True)
    return probe.returncode == 0


def _ack_in_namespace(driver: str, db_url: str, prefix: str, heal_after: float) -> dict[str, Any]:
    """Run ``_IN_NAMESPACE`` for ``prefix``; its result (outcome, elapsed, redelivered)."""
    if not _namespaces_available():
        needs.unavailable("needs unshare -n (root) and ip to drop packets in a private namespace")
    url = sa.make_url(db_url)
    folder = Path(tempfile.mkdtemp(prefix="sqnet"))  # short: Unix socket paths are limited
    relay = FaultProxy((url.host or "127.0.0.1", url.port or 0), listen=str(folder / "db"))
    try:
        done = subprocess.run(
            [
                *("unshare", "-n", sys.executable, "-c", _IN_NAMESPACE, db_url, prefix),
                *(str(folder / "db"), str(DEAD_PEER_SECONDS), json.dumps(TIMEOUTS[driver])),
                str(heal_after),
            ],
            check=False,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        relay.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"T6 dead path {driver} heal_after={heal_after}: {result}")
    return result


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql", "mysql")
def test_dead_network_path_fails_the_ack_in_bounded_time_and_the_lease_comes_back(
    driver: str, db_url: str, make_queue: Callable[..., Queue]
) -> None:
    """Packets lost mid-ack (a real dead path): the ack raises DatabaseError within seconds
    instead of hanging, and the message is redelivered once the path is back."""
    direct = make_queue()
    result = _ack_in_namespace(driver, db_url, direct.prefix, heal_after=0.0)
    assert result["elapsed"] < 20, result
    assert result["outcome"].startswith("DatabaseError"), result
    assert result["redelivered"], result
    stats = direct.stats().get("default")
    assert stats is None or stats.total == 0


@pytest.mark.every_driver
@pytest.mark.dialects("postgresql")
def test_postgresql_path_that_comes_back_while_squeal_reconnects_lets_the_ack_succeed(
    driver: str, db_url: str, make_queue: Callable[..., Queue]
) -> None:
    """The dead peer is noticed after DEAD_PEER_SECONDS; the path is back 4 s after the ack
    began, while squeal reconnects: the ack succeeds and nothing is left stored."""
    direct = make_queue()
    result = _ack_in_namespace(driver, db_url, direct.prefix, heal_after=DEAD_PEER_SECONDS + 1)
    assert result["elapsed"] < 20, result
    assert result["outcome"] == "acked", result
    stats = direct.stats().get("default")
    assert stats is None or stats.total == 0
