"""``squeal limit``: a topic's concurrency and rate limits from the shell (docs/flow_control.md).
Imported by ``squeal.cli`` so that the command is registered."""

from __future__ import annotations

import argparse
import json
from typing import Any

from squeal.cli.commands import command, open_queue
from squeal.cli.output import EXIT_OK, EXIT_USAGE, CommandError, table
from squeal.limits import UNSET, Limit


def _count_or_none(text: str) -> int | None:
    """``N`` or ``none`` (removes the limit)."""
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number or 'none', not {text!r}"
        ) from None


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", metavar="TOPIC", nargs="?", help="(none: list the limits)")
    parser.add_argument(
        "--concurrency",
        type=_count_or_none,
        default=UNSET,
        metavar="N|none",
        help="at most N of the topic's messages leased at once (none: no limit)",
    )
    parser.add_argument(
        "--rate",
        type=_count_or_none,
        default=UNSET,
        metavar="R|none",
        help="at most R messages claimed per --per seconds, plus one burst of R (none: no limit)",
    )
    parser.add_argument(
        "--per", type=float, default=UNSET, metavar="SECONDS", help="the rate's window (default 1)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _describe(limit: Limit) -> dict[str, Any]:
    return {
        "topic": limit.topic,
        "concurrency": limit.concurrency,
        "rate": limit.rate,
        "per": limit.per,
    }


def _rate(limit: Limit) -> str | None:
    return None if limit.rate is None else f"{limit.rate} per {limit.per:g}s"


@command(
    "limit",
    help="limit a topic's leases at once (--concurrency) or claims per window (--rate/--per) "
    "for every consumer; no option: show its limits; no topic: list every limit",
    arguments=_limit_arguments,
)
def limit_command(args: argparse.Namespace) -> int:
    """``squeal limit [TOPIC [--concurrency N|none] [--rate R|none] [--per SECONDS]]``."""
    changes = {k: getattr(args, k) for k in ("concurrency", "rate", "per")}
    changes = {k: v for k, v in changes.items() if v is not UNSET}
    if changes and args.topic is None:
        raise CommandError("name the topic to limit", EXIT_USAGE)
    with open_queue(args) as queue:
        if changes:
            limits = [queue.set_limit(args.topic, **changes)]
        else:
            limits = [
                limit for limit in queue.limits() if args.topic is None or limit.topic == args.topic
            ]
    if args.json:
        for limit in limits:
            print(json.dumps(_describe(limit)))
        return EXIT_OK
    shown = [limit for limit in limits if limit.concurrency is not None or limit.rate is not None]
    if not shown:
        print("no limit" if args.topic is not None else "no topic is limited")
        return EXIT_OK
    rows = [(limit.topic, limit.concurrency, _rate(limit)) for limit in shown]
    print(table(("topic", "concurrency", "rate"), rows))
    return EXIT_OK


__all__ = ["limit_command"]
