"""T5: the database server crashes and restarts under load.

A private PostgreSQL or MariaDB instance (its own data directory and port, so the shared servers
are never touched) is killed without a clean shutdown while a producer puts and a consumer
claims, then started again. Every put that returned must still be there, and the consumer must
recover by itself within seconds.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import squeal
from squeal import Queue
from squeal.cli.servers import PrivatePostgres, free_port
from tests import needs


def _wait_until(ready: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout:.0f}s")
        time.sleep(0.2)


def _private_postgres(root: Path) -> PrivatePostgres:
    return PrivatePostgres(root, needs.postgres_bin())


class PrivateMariaDB:
    """A mariadb-install-db'd data directory on its own port and socket."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.data = root / "data"
        install = needs.tool(
            "mariadb-install-db", env="SQUEAL_TEST_MARIADB_INSTALL_DB", package="mariadb-server"
        )
        self.mariadbd = needs.tool("mariadbd", env="SQUEAL_TEST_MARIADBD", package="mariadb-server")
        self.admin = needs.tool(
            "mariadb-admin", env="SQUEAL_TEST_MARIADB_ADMIN", package="mariadb-client"
        )
        shutil.chown(root, "mysql")
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={self.data}",
                "--user=mysql",
                "--auth-root-authentication-method=normal",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.url = f"mysql+pymysql://root@127.0.0.1:{self.port}/mysql"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                self.mariadbd,
                "--no-defaults",
                f"--datadir={self.data}",
                f"--port={self.port}",
                f"--socket={self.root / 'sock'}",
                "--user=mysql",
                "--bind-address=127.0.0.1",
                f"--log-error={self.root / 'err.log'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_until(self._answers, "the private MariaDB")

    def _answers(self) -> bool:
        probe = [self.admin, "-h127.0.0.1", f"-P{self.port}", "-uroot", "ping"]
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0

    def crash(self) -> None:
        """SIGKILL the server: InnoDB recovers from its redo log at the next start."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(timeout=30)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=60)


SERVERS: dict[str, Callable[[Path], PrivatePostgres | PrivateMariaDB]] = {
    "postgresql": _private_postgres,
    "mysql": PrivateMariaDB,
}


@pytest.fixture
def private_server(db: str) -> Iterator[PrivatePostgres | PrivateMariaDB]:
    root = Path(tempfile.mkdtemp(prefix=f"squeal-{db}-"))
    server = SERVERS[db](root)
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.dialects("postgresql", "mysql")
def test_server_crash_and_restart_under_load_keeps_every_returned_put(
    private_server: PrivatePostgres | PrivateMariaDB,
) -> None:
    engine = sa.create_engine(private_server.url, pool_pre_ping=True)
    queue = Queue(engine, prefix="restart", visibility_timeout=5.0)
    queue.create()
    returned: dict[bytes, int] = {}
    failed_puts = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal failed_puts
        n = 0
        while not stop.is_set():
            payload = f"m{n}".encode()
            n += 1
            try:
                msg_id = queue.put(payload, "load")
            except squeal.DatabaseError:
                failed_puts += 1  # the outcome is unknown: it may or may not be stored
                time.sleep(0.05)
                continue
            assert msg_id is not None
            returned[payload] = msg_id

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        time.sleep(1.0)
        private_server.crash()
        time.sleep(0.5)
        private_server.start()
        back_up = time.monotonic()
        before = len(returned)
        # The producer recovers by itself: new puts return again within seconds.
        _wait_until(lambda: len(returned) > before + 20, "puts after the restart", timeout=20)
        recovered_after = time.monotonic() - back_up
        time.sleep(0.5)
    finally:
        stop.set()
        producer.join(timeout=60)
    assert not producer.is_alive()

    # A consumer drains everything: every put that returned is there, exactly once.
    received: dict[bytes, int] = {}
    while batch := queue.get_many("load", 500):
        for msg in batch:
            assert msg.payload not in received, f"{msg.payload!r} delivered twice"
            received[msg.payload] = msg.id
        queue.ack_many(batch)
    missing = sorted(set(returned) - set(received))
    assert missing == [], f"{len(missing)} acknowledged puts lost after the crash: {missing[:5]}"
    assert all(received[p] == i for p, i in returned.items())
    assert recovered_after < 20
    queue.destroy()
    queue.close()
    engine.dispose()
    print(
        f"puts returned {len(returned)}, failed during the outage {failed_puts}, "
        f"received {len(received)} (extra: {len(received) - len(returned)} put whose reply was "
        f"lost), producer recovered {recovered_after:.1f}s after the restart"
    )
