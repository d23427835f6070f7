"""squeal on a MariaDB Galera cluster: three nodes on loopback, started by the test.

Producers and consumers on every node, certification conflicts retried, migrations from every
node at once (T12: Galera does not replicate GET_LOCK), and a node SIGKILLed under load: every
put that returned is handled, none twice within a lease, every error a squeal error, and the
node rejoins. The cluster is started once for the module (fresh data) and stopped after it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa

import squeal
from squeal import Queue, migrate
from squeal.cli.galera import PROVIDERS, GaleraCluster
from tests import needs
from tests.reliability.helpers import REPO

pytestmark = pytest.mark.dialects("mysql")

#: The consumers' lease: short, so a message held by a dead node comes back soon. (A claim
#: whose commit waited out the cluster's pause may reach its consumer with the lease already
#: run out; fencing then refuses its ack, and the test counts those.)
VT = 2.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[GaleraCluster]:
    mariadbd = needs.tool("mariadbd", env="SQUEAL_TEST_MARIADBD", package="mariadb-server")
    install = needs.tool(
        "mariadb-install-db", env="SQUEAL_TEST_MARIADB_INSTALL_DB", package="mariadb-server"
    )
    client = needs.tool("mariadb", env="SQUEAL_TEST_MARIADB_CLIENT", package="mariadb-client")
    needs.tool("rsync", env="SQUEAL_TEST_RSYNC", package="rsync")
    if not any(Path(p).is_file() for p in PROVIDERS):
        needs.unavailable("the Galera provider (libgalera_smm.so) was not found: install galera-4")
    root = Path(tempfile.mkdtemp(prefix="squeal-galera-"))
    nodes = GaleraCluster(root, mariadbd=mariadbd, install_db=install, client=client)
    try:
        started = time.monotonic()
        nodes.start()
        print(f"galera: 3 nodes synced in {time.monotonic() - started:.1f}s")
        yield nodes
    finally:
        try:
            nodes.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _queues(cluster: GaleraCluster, prefix: str, vt: float = VT) -> list[Queue]:
    return [
        Queue(sa.create_engine(url), prefix=prefix, visibility_timeout=vt) for url in cluster.urls()
    ]


def _close(queues: list[Queue]) -> None:
    for q in queues:
        q.close()
        q.engine.dispose()


_CLI_AT = """
import sys, time
from squeal.cli import main
at = float(sys.argv[1])
time.sleep(max(0.0, at - time.time()))
sys.exit(main(sys.argv[2:]))
"""


def test_migrations_from_every_node_at_once_take_turns(db: str, cluster: GaleraCluster) -> None:
    """T12 on Galera: two ``squeal migrate`` per node, all at once, on a fresh prefix."""
    for round_ in range(2):
        prefix = f"gm{round_}"
        at = time.time() + 2.0
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _CLI_AT,
                    str(at),
                    "migrate",
                    "--url",
                    url,
                    "--prefix",
                    prefix,
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for url in cluster.urls() * 2
        ]
        results = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, f"squeal migrate failed: {out.strip()} {err.strip()}"
        said = [out for out, _ in results]
        assert sum(" upgraded " in out for out in said) == 1, said
        for url in cluster.urls():
            engine = sa.create_engine(url)
            try:
                assert migrate.current(engine, prefix=prefix) == migrate.head()
            finally:
                engine.dispose()
    lock_rows = cluster.sql(cluster.nodes[2], "SELECT COUNT(*) FROM test.squeal_migration_lock")
    assert lock_rows == "0", "every migrator released its lock row"


def test_a_put_through_a_node_out_of_the_cluster_waits_for_it_to_come_back(
    db: str, cluster: GaleraCluster
) -> None:
    """A node cut off from the others refuses statements (1047) until it rejoins: squeal retries
    them, so the put returns once the node is back, and the message is everywhere."""
    node = cluster.nodes[2]
    queues = _queues(cluster, "giso")
    queues[0].create()
    isolate = "SET GLOBAL wsrep_provider_options='gmcast.isolate={}'"
    try:
        cluster.sql(node, isolate.format(1))
        deadline = time.monotonic() + 30
        while cluster.status(node, "wsrep_ready") != "OFF":
            assert time.monotonic() < deadline, "the node did not leave the cluster"
            time.sleep(0.1)
        rejoin = threading.Timer(1.0, cluster.sql, args=(node, isolate.format(0)))
        started = time.monotonic()  # before the timer's start: its 1 s cannot begin earlier
        rejoin.start()
        msg_id = queues[2].put(b"through the isolated node", "iso")
        waited = time.monotonic() - started
        rejoin.join()
        assert waited >= 1.0, "the put waited for the node"
        got = queues[0].get("iso")
        assert got is not None
        assert (got.id, got.payload) == (msg_id, b"through the isolated node")
        got.ack()
        print(f"galera: a put through a node out of the cluster returned {waited:.1f}s later")
    finally:
        cluster.sql(node, isolate.format(0), check=False)
        cluster.wait_synced(node)
        queues[0].destroy()
        _close(queues)


@dataclass
class Ledger:
    """What producers and consumers saw, from every thread."""

    returned: set[bytes] = field(default_factory=set)
    #: Per payload, the attempt number of each delivery.
    handled: dict[bytes, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: Per payload, how many acks succeeded.
    acked: dict[bytes, int] = field(default_factory=lambda: defaultdict(int))
    lost: int = 0
    errors: list[BaseException] = field(default_factory=list)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def error(self, error: BaseException) -> None:
        with self.guard:
            self.errors.append(error)


def _produce(q: Queue, name: str, ledger: Ledger, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        payload = f"{name}-{n}".encode()
        n += 1
        try:
            q.put(payload, "load")
        except squeal.SquealError as error:  # the outcome is unknown: not counted as returned
            ledger.error(error)
            time.sleep(0.05)
            continue
        except BaseException as error:
            ledger.error(error)
            raise
        with ledger.guard:
            ledger.returned.add(payload)


def _handle(msg: squeal.Message, ledger: Ledger) -> None:
    with ledger.guard:
        ledger.handled[msg.payload].append(msg.attempts)
    try:
        msg.ack()
    except squeal.LeaseLost:  # fenced: its lease ran out and another consumer holds it now
        with ledger.guard:
            ledger.lost += 1
        return
    with ledger.guard:
        ledger.acked[msg.payload] += 1


def _consume(q: Queue, ledger: Ledger, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            batch = q.get_many("load", 10)
            for msg in batch:
                _handle(msg, ledger)
            if not batch:
                time.sleep(0.01)
        except squeal.SquealError as error:
            ledger.error(error)
            time.sleep(0.05)
        except BaseException as error:
            ledger.error(error)
            raise


def _drain(q: Queue, ledger: Ledger, deadline: float) -> None:
    """Consume until every returned put was handled (leases of a dead node run out first)."""
    while time.monotonic() < deadline:
        batch = q.get_many("load", 100)
        for msg in batch:
            _handle(msg, ledger)
        if not batch:
            if ledger.returned <= set(ledger.handled):
                return
            time.sleep(0.1)


def _check(ledger: Ledger) -> None:
    raw = [e for e in ledger.errors if not isinstance(e, squeal.SquealError)]
    assert raw == [], f"raw driver errors reached the caller: {raw[:3]}"
    missing = ledger.returned - set(ledger.handled)
    assert not missing, f"{len(missing)} returned puts never handled: {sorted(missing)[:5]}"
    for payload, attempts in ledger.handled.items():
        # Delivered again only once the database saw the lease run out: a later attempt.
        assert len(set(attempts)) == len(attempts), f"{payload!r} claimed twice in one lease"
    twice = {payload: n for payload, n in ledger.acked.items() if n > 1}
    assert not twice, f"acked by two lease holders (fencing failed): {list(twice)[:5]}"


def test_producers_and_consumers_on_every_node(db: str, cluster: GaleraCluster) -> None:
    queues = _queues(cluster, "gload", vt=60.0)
    queues[0].create()
    ledger, stop = Ledger(), threading.Event()
    threads = [
        threading.Thread(target=_produce, args=(q, f"p{i}", ledger, stop))
        for i, q in enumerate(queues)
    ] + [threading.Thread(target=_consume, args=(q, ledger, stop)) for q in queues * 2]
    for thread in threads:
        thread.start()
    time.sleep(4.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    try:
        _drain(queues[1], ledger, time.monotonic() + 30)
        assert ledger.errors == [], ledger.errors[:3]
        _check(ledger)
        assert len(ledger.returned) > 100
        twice = sum(len(seen) > 1 for seen in ledger.handled.values())
        print(
            f"galera: {len(ledger.returned)} puts on 3 nodes, consumed on 3; {twice} delivered "
            f"again (a 60 s lease ran out first: only on a starved machine)"
        )
    finally:
        queues[0].destroy()
        _close(queues)


def test_a_node_killed_under_load_loses_no_returned_put_and_rejoins(
    db: str, cluster: GaleraCluster
) -> None:
    queues = _queues(cluster, "gkill")
    queues[0].create()
    ledger, stop = Ledger(), threading.Event()
    threads = [
        threading.Thread(target=_produce, args=(q, f"p{i}", ledger, stop))
        for i, q in enumerate(queues)
    ] + [threading.Thread(target=_consume, args=(q, ledger, stop)) for q in queues]
    for thread in threads:
        thread.start()
    victim = cluster.nodes[2]
    try:
        time.sleep(1.5)
        cluster.kill(victim)
        killed_at = time.monotonic()
        before = len(ledger.returned)
        # Writes everywhere wait until the cluster evicts the dead node, then go on on two.
        deadline = killed_at + 30
        while len(ledger.returned) < before + 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        resumed = time.monotonic() - killed_at
        during = len(ledger.returned) - before
        cluster.restart(victim)
        rejoined = time.monotonic() - killed_at
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    try:
        assert during >= 50, f"the two live nodes took {during} puts in 30 s"
        assert cluster.status(victim, "wsrep_cluster_size") == "3"
        _drain(queues[2], ledger, time.monotonic() + 60)  # through the node that came back
        _check(ledger)
        again = sum(len(seen) > 1 for seen in ledger.handled.values())
        print(
            f"galera: {ledger.lost} acks refused by fencing (their lease ran out first); "
            f"node killed; puts went on {resumed:.1f}s later on the other two; "
            f"{len(ledger.returned)} puts returned, {again} handled again after their lease ran "
            f"out, {len(ledger.errors)} squeal errors on the dead node's clients; it rejoined "
            f"{rejoined:.1f}s after the kill"
        )
    finally:
        queues[0].destroy()
        _close(queues)
