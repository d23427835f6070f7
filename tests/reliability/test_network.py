"""T6: network faults between squeal and the server, through ``faultproxy``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

import squeal.session
from squeal import DatabaseError, Queue
from tests.reliability.faultproxy import FaultProxy

#: Driver timeouts a user must set so that a dead network path raises instead of hanging.
TIMEOUTS = {"mysql": {"connect_timeout": 2, "read_timeout": 2, "write_timeout": 2}}


@pytest.fixture
def proxied(db: str, db_url: str) -> Iterator[tuple[FaultProxy, sa.Engine]]:
    url = sa.make_url(db_url)
    proxy = FaultProxy((url.host or "127.0.0.1", url.port or 3306))
    eng = sa.create_engine(url.set(port=proxy.port), connect_args=TIMEOUTS[db])
    yield proxy, eng
    eng.dispose()
    proxy.close()


# PostgreSQL is left out: psycopg has no client-side read timeout, and a blackholing peer
# ACKs at the TCP level, so neither keepalives nor tcp_user_timeout fire (see the report).
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
    direct = make_queue()
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
    if fault == "blackhole":
        assert not acked
    if fault in ("reset", "cut", "latency"):
        assert acked, f"{fault}: squeal did not reconnect"
    proxy.mode = "pass"
    if not acked:
        time.sleep(1.2)
        again = direct.get()
        assert again is not None
        assert again.id == mid
        again.ack()
    assert direct.stats().get("default") is None or direct.stats()["default"].total == 0
    q.close()
