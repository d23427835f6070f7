"""docs/deploy.md's container recipe, run as written on every database: examples/deploy/.

Two containers start at once with ``entrypoint.sh`` (``squeal migrate``, then ``exec squeal
worker``): the migrations take turns under their lock, both workers handle messages, and each
stops cleanly on SIGTERM, as ``docker stop`` or Kubernetes sends it.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from squeal import Queue, migrate

DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "deploy"
#: Longest wait for a container to start and handle its messages (a bound, not a speed claim).
STARTUP_SECONDS = 60.0


def _container(db_url: str, prefix: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "SQUEAL_URL": db_url,
        "SQUEAL_PREFIX": prefix,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.Popen(
        ["sh", str(DEPLOY / "entrypoint.sh"), "handlers:handle", "-t", "jobs"],
        cwd=DEPLOY,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class _Output:
    """What the containers print, line by line, read straight from their pipes: a buffered
    ``readline()`` after ``select()`` can leave lines in Python's buffer that ``select()``
    never reports again (a worker prints several at once)."""

    def __init__(self, containers: list[subprocess.Popen[str]]) -> None:
        self.partial: dict[int, bytes] = {}
        for c in containers:
            assert c.stdout is not None
            self.partial[c.stdout.fileno()] = b""
        self.unread: list[str] = []  # complete lines not looked at yet

    def lines(self, start: str, want: int) -> list[str]:
        """Lines starting with ``start``, until ``want`` of them (or the bound)."""
        found: list[str] = []
        seen: list[str] = []
        deadline = time.monotonic() + STARTUP_SECONDS
        with selectors.DefaultSelector() as sel:
            for fd in self.partial:
                sel.register(fd, selectors.EVENT_READ)
            while len(found) < want:
                while self.unread and len(found) < want:
                    line = self.unread.pop(0)
                    seen.append(line)
                    if line.startswith(start):
                        found.append(line.strip())
                if len(found) == want or time.monotonic() > deadline:
                    break
                for key, _ in sel.select(timeout=0.5):
                    fd = int(key.fd)
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        sel.unregister(fd)
                        continue
                    *complete, self.partial[fd] = (self.partial[fd] + chunk).split(b"\n")
                    self.unread += [raw.decode(errors="replace") for raw in complete]
        assert len(found) == want, "\n".join(seen)
        return found


def test_two_containers_start_at_once_migrate_in_turn_work_and_stop_on_sigterm(
    db_url: str, prefix: str
) -> None:
    containers = [_container(db_url, prefix), _container(db_url, prefix)]
    engine = sa.create_engine(db_url)
    try:
        # Both migrated (in turn) and became workers: from here SIGTERM stops them gracefully.
        output = _Output(containers)
        output.lines("squeal worker: consuming jobs", 2)
        assert migrate.current(engine, prefix=prefix) == migrate.head()
        queue = Queue(engine, prefix=prefix)
        queue.put_many([f"m{i}".encode() for i in range(10)], "jobs")
        handled = output.lines("handled ", 10)
        assert sorted(handled) == sorted(f"handled m{i}" for i in range(10))
        for c in containers:
            c.send_signal(signal.SIGTERM)
        for c in containers:
            out, _ = c.communicate(timeout=STARTUP_SECONDS)
            assert c.returncode == 0, out
        assert queue.stats() == {}
        queue.close()
    finally:
        for c in containers:
            if c.poll() is None:
                c.kill()
                c.wait()
            if c.stdout is not None:
                c.stdout.close()
        migrate.downgrade(engine, prefix=prefix, drop_version_table=True)
        engine.dispose()


@pytest.mark.dialects("sqlite")
def test_the_entrypoint_refuses_to_start_without_a_database_url() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SQUEAL_URL"}
    done = subprocess.run(
        ["sh", str(DEPLOY / "entrypoint.sh"), "handlers:handle"],
        cwd=DEPLOY,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "set SQUEAL_URL" in done.stderr
