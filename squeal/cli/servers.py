"""A private PostgreSQL server for measurements: its own data directory and port.

``squeal bench --soak --private-postgresql`` measures on a server at PostgreSQL's defaults
(autovacuum on), whatever the shared server is configured like; the fault suite crashes one.
Run as root, the server programs run as the ``postgres`` user (initdb refuses root).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

#: Ports :func:`free_port` handed out in this process: never again (a server told to use one
#: may not listen on it yet when the next is asked for).
_GIVEN: set[int] = set()
_GIVING = threading.Lock()
#: Where :func:`free_port` looks below the ephemeral range (those the system gives outgoing
#: connections, which could take a port between the asking and the server's start).
_LOWEST = 10_000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (at the time of asking), below the system's
    ephemeral range, and not handed out before by this process: a cluster's nodes ask for
    several before any of them listens, and the system's port 0 may give the same one twice."""
    top = _ephemeral_start()
    with _GIVING:
        for _ in range(1000):
            port = random.randrange(_LOWEST, top) if top > _LOWEST + 1000 else 0
            if port in _GIVEN:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                port = int(s.getsockname()[1])
            if port not in _GIVEN:
                _GIVEN.add(port)
                return port
    raise OSError("no free TCP port on 127.0.0.1")


def stop_all(processes: Sequence[subprocess.Popen[bytes] | None], wait: float = 30.0) -> None:
    """SIGTERM every running process at once, then wait for each; SIGKILL one still running
    after ``wait`` seconds."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def postgres_bin() -> Path | None:
    """The folder of the PostgreSQL server programs (initdb, pg_ctl), or None.

    ``$SQUEAL_PG_BIN``, else the folder of an ``initdb`` on PATH, else what ``pg_config
    --bindir`` says (Debian keeps the server programs off PATH; its pg_config knows where).
    """
    where = os.environ.get("SQUEAL_PG_BIN") or os.environ.get("SQUEAL_TEST_PG_BIN")
    if where:
        return Path(where)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        folder = Path(done.stdout.strip())
        if done.returncode == 0 and (folder / "initdb").is_file():
            return folder
    return None


class PrivatePostgres:
    """An initdb'd cluster in ``root`` on its own port, at PostgreSQL's default settings."""

    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root, self.port, self.bin = root, free_port(), bin_dir
        self.data = root / "data"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(root, "postgres")
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: object) -> None:
        command = [str(a) for a in argv]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = self.root / "log"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-o", options, "-l", log, "start", "-w")

    def crash(self) -> None:
        """Stop at once, as a crash would (no checkpoint); recovery replays the WAL."""
        self._run(self.bin / "pg_ctl", "-D", self.data, "stop", "-m", "immediate", "-w")

    def stop(self) -> None:
        self._run(self.bin / "pg_ctl", "-D", self.data, "stop", "-m", "fast", "-w")


__all__ = ["PrivatePostgres", "free_port", "postgres_bin"]
