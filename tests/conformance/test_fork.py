"""A forked child never closes its parent's connections (docs/concurrency.md)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from squeal import Queue

pytestmark = pytest.mark.sync_only(
    "os.fork() of a process: its sync connections; an event loop does not survive a fork"
)

FORKING = """
import gc, os, sys
import sqlalchemy as sa
from squeal import Queue

queue = Queue(sa.create_engine(sys.argv[1]), prefix=sys.argv[2])
queue.put(b"before")                   # the parent now keeps an idle connection
link = queue._session._stash._idle[-1]
pid = os.fork()
if pid == 0:                           # the child drops the queue and exits normally:
    queue.close()                      # neither close() nor the finalizers may touch
    del queue                          # the parent's sockets
    gc.collect()
    sys.exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
link.cursor.execute("SELECT 1")        # the very connection still works in the parent
assert list(link.cursor.fetchall())[0][0] == 1
print("ok")
"""


def test_a_forked_child_leaves_the_parents_connections_open(
    make_queue: Callable[..., Queue], db_url: str, prefix: str
) -> None:
    make_queue()
    done = subprocess.run(
        [sys.executable, "-c", FORKING, db_url, prefix],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
