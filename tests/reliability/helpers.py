"""Starting role processes and reading what is left in the queue's tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from squeal.schema import build_tables

REPO = Path(__file__).resolve().parents[2]


def spawn(
    role: str, url: str, prefix: str, log: Path, *extra: str, **popen: object
) -> subprocess.Popen[str]:
    """Start ``python -m tests.reliability.roles ROLE`` on this queue."""
    cmd = [sys.executable, "-m", "tests.reliability.roles", role, "--url", url]
    cmd += ["--prefix", prefix, "--log", str(log), *extra]
    return subprocess.Popen(cmd, cwd=REPO, text=True, **popen)  # type: ignore[call-overload, no-any-return]


def stored_ids(engine: sa.Engine, prefix: str) -> list[int]:
    """Ids of every message still stored (ready, waiting, leased or dead)."""
    table = build_tables(prefix).message
    with engine.connect() as conn:
        return [int(i) for i in conn.execute(sa.select(table.c.id)).scalars()]


def leased_ids(engine: sa.Engine, prefix: str) -> list[int]:
    """Ids of messages that still carry a lease token and are not ready."""
    table = build_tables(prefix).message
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.id).where(table.c.state == 1, table.c.lease_token.is_not(None))
        )
        return [int(i) for i in rows.scalars()]
