"""``squeal workers``: the running workers from the shell (docs/worker.md).
Imported by ``squeal.cli`` so that the command is registered."""

from __future__ import annotations

import argparse
import json
from typing import Any

from squeal.cli.commands import command, open_queue
from squeal.cli.output import EXIT_OK, table
from squeal.registry import WorkerInfo


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _describe(worker: WorkerInfo) -> dict[str, Any]:
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "kind": worker.kind,
        "topics": list(worker.topics),
        "concurrency": worker.concurrency,
        "in_flight": worker.in_flight,
        "acked": worker.acked,
        "failed": worker.failed,
        "released": worker.released,
        "version": worker.version,
        "started_at": worker.started_at.isoformat(),
        "beat_at": worker.beat_at.isoformat(),
        "expires_at": worker.expires_at.isoformat(),
    }


def _when(worker: WorkerInfo, attribute: str) -> str:
    return str(getattr(worker, attribute).strftime("%Y-%m-%d %H:%M:%S"))


@command(
    "workers",
    help="list the running workers: host, pid, topics, messages in flight, acked and failed "
    "since they started, last heartbeat (UTC)",
    arguments=_arguments,
)
def workers_command(args: argparse.Namespace) -> int:
    """``squeal workers [--json]``."""
    with open_queue(args) as queue:
        workers = queue.workers()
    if args.json:
        for worker in workers:
            print(json.dumps(_describe(worker)))
        return EXIT_OK
    if not workers:
        print("no worker is running")
        return EXIT_OK
    headers = (
        "id",
        "host",
        "pid",
        "kind",
        "topics",
        "in flight",
        "acked",
        "failed",
        "started",
        "last beat",
        "version",
    )
    rows = [
        (
            w.id,
            w.host,
            w.pid,
            w.kind,
            ",".join(w.topics),
            f"{w.in_flight}/{w.concurrency}",
            w.acked,
            w.failed,
            _when(w, "started_at"),
            _when(w, "beat_at"),
            w.version,
        )
        for w in workers
    ]
    print(table(headers, rows))
    return EXIT_OK


__all__ = ["workers_command"]
