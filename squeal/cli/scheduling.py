"""``squeal scheduler`` and ``squeal schedules``: running and listing schedules from the shell
(docs/schedules.md). Imported by ``squeal.cli`` so that the commands are registered."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from types import FrameType

from squeal.bridge import sleep
from squeal.cli.commands import command, open_queue
from squeal.cli.output import EXIT_OK, table
from squeal.errors import SchemaError, SquealError
from squeal.schedules import RUN_EVERY, Schedule


def _scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--once", action="store_true", help="put what is due now, then exit (for cron jobs)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=RUN_EVERY,
        metavar="SECONDS",
        help=f"seconds between runs (default {RUN_EVERY:g})",
    )


@command(
    "scheduler",
    help="put the due schedules' messages every second, for deployments without workers "
    "(until SIGTERM/SIGINT)",
    arguments=_scheduler_arguments,
)
def scheduler_command(args: argparse.Namespace) -> int:
    """``squeal scheduler [--once]``."""
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with open_queue(args) as queue:
            if not args.once:
                count = len(queue.schedules())
                print(f"squeal scheduler: {count} schedule(s), every {args.interval:g}s")
            while True:
                try:
                    put = queue.run_schedules()
                except SchemaError:
                    raise  # the command to run is in its message
                except SquealError as error:
                    print(f"squeal scheduler: run failed (retrying): {error}", file=sys.stderr)
                    put = 0
                if put or args.once:
                    print(f"put {put} message(s)", flush=True)
                if args.once or stop.is_set():
                    return EXIT_OK
                waited = 0.0
                while waited < args.interval and not stop.is_set():
                    sleep(min(0.2, args.interval - waited))  # awaits on an asyncio URL
                    waited += 0.2
                if stop.is_set():
                    return EXIT_OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _schedules_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _timing(schedule: Schedule) -> str:
    if schedule.cron is not None:
        return f"cron {schedule.cron} ({schedule.timezone})"
    return f"every {schedule.every:g}s"


@command(
    "schedules",
    help="the schedules: topic, timing, next and last run",
    arguments=_schedules_arguments,
)
def schedules_command(args: argparse.Namespace) -> int:
    """``squeal schedules``."""
    with open_queue(args) as queue:
        schedules = queue.schedules()
    if args.json:
        for s in schedules:
            print(
                json.dumps(
                    {
                        "name": s.name,
                        "topic": s.topic,
                        "cron": s.cron,
                        "every": s.every,
                        "timezone": s.timezone,
                        "priority": s.priority,
                        "next_run_at": s.next_run_at.isoformat(),
                        "last_run_at": None if s.last_run_at is None else s.last_run_at.isoformat(),
                    }
                )
            )
        return EXIT_OK
    if not schedules:
        print("no schedules")
        return EXIT_OK
    rows = [
        (
            s.name,
            s.topic,
            _timing(s),
            s.next_run_at.isoformat(timespec="seconds"),
            "-" if s.last_run_at is None else s.last_run_at.isoformat(timespec="seconds"),
        )
        for s in schedules
    ]
    print(table(("name", "topic", "when", "next run", "last run"), rows))
    return EXIT_OK


__all__ = ["scheduler_command", "schedules_command"]
