"""The Celery app the tests' worker processes run (``celery -A tests.celery_broker.app worker``).

Configured from the environment: ``SQUEAL_CELERY_BROKER`` (a ``squeal+`` URL),
``SQUEAL_CELERY_PREFIX`` (squeal's table prefix), ``SQUEAL_CELERY_LOG`` (a file each task
appends a line to when it finishes: what the test reads), ``SQUEAL_CELERY_VT`` (the lease),
``SQUEAL_CELERY_BACKEND`` (Celery's database result backend, ``db+URL``; its tables are
named after the prefix), ``SQUEAL_CELERY_REMOTE`` (``1``: remote control on, through the
``celery.pidbox`` fanout exchange), ``SQUEAL_CELERY_LINGER`` (the transport's
``publish_linger``, seconds; unset: none).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery

import squeal.kombu  # noqa: F401 - registers the squeal+ URLs


def result_tables(prefix: str) -> dict[str, str]:
    """The result backend's table names for a test's prefix (the tests drop them)."""
    return {"task": f"{prefix}_taskmeta", "group": f"{prefix}_groupmeta"}


app = Celery("squeal_tests")
app.conf.update(
    broker_url=os.environ.get("SQUEAL_CELERY_BROKER", "squeal+sqlite:///celery.db"),
    broker_transport_options={
        "prefix": os.environ.get("SQUEAL_CELERY_PREFIX", "squeal"),
        "visibility_timeout": float(os.environ.get("SQUEAL_CELERY_VT", "60")),
        "publish_linger": float(os.environ["SQUEAL_CELERY_LINGER"])
        if os.environ.get("SQUEAL_CELERY_LINGER")
        else None,
    },
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    worker_enable_remote_control=os.environ.get("SQUEAL_CELERY_REMOTE") == "1",
    worker_send_task_events=False,
    result_backend=os.environ.get("SQUEAL_CELERY_BACKEND"),
    database_table_names=result_tables(os.environ.get("SQUEAL_CELERY_PREFIX", "squeal")),
)


def _done(line: str) -> None:
    path = Path(os.environ["SQUEAL_CELERY_LOG"])
    with path.open("a") as out:
        out.write(line + "\n")


@app.task(name="record")
def record(n: int, seconds: float = 0.0) -> int:
    """Sleep ``seconds`` (a task in flight when the worker is killed), then log ``n``."""
    if seconds:
        time.sleep(seconds)
    _done(f"done {n}")
    return n


@app.task(name="flaky", bind=True, max_retries=3)
def flaky(self: Any, n: int) -> int:
    """Fail the first attempt, retried 1 s later (an ETA the worker holds), then log ``n``."""
    if self.request.retries == 0:
        _done(f"failed {n}")
        raise self.retry(countdown=1)
    _done(f"done {n}")
    return n


@app.task(name="relay")
def relay(n: int) -> None:
    """Send ``record(n)`` (a task that sends another, as a chain or a callback does)."""
    app.send_task("record", args=[n])
    _done(f"relayed {n}")


@app.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@app.task(name="total")
def total(numbers: list[int]) -> int:
    _done(f"done {sum(numbers)}")
    return sum(numbers)
