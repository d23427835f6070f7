"""A private PostgreSQL server for measurements: its own data directory and port.

``squeal bench --soak --private-postgresql`` measures on a server at PostgreSQL's defaults
(autovacuum on), whatever the shared server is configured like; the fault suite crashes one.
Run as root, the server programs run as the ``postgres`` user (initdb refuses root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
