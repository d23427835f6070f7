"""``squeal bindings``: the exchanges' bindings from the shell (docs/exchanges.md).
Imported by ``squeal.cli`` so that the command is registered."""

from __future__ import annotations

import argparse
import json
from typing import Any

from squeal.cli.commands import command, open_queue
from squeal.cli.output import EXIT_OK, table
from squeal.exchange import Binding


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exchange", nargs="?", help="only this exchange's bindings")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _describe(binding: Binding) -> dict[str, Any]:
    expires = binding.expires_at
    return {
        "exchange": binding.exchange,
        "key": binding.key,
        "topic": binding.topic,
        "ttl": binding.ttl,
        "expires_at": None if expires is None else expires.isoformat(),
    }


@command(
    "bindings",
    help="list the topics bound to exchanges (all, or one EXCHANGE's): key, copies' ttl, "
    "when the binding ends unless renewed (UTC)",
    arguments=_arguments,
)
def bindings_command(args: argparse.Namespace) -> int:
    """``squeal bindings [EXCHANGE] [--json]``."""
    with open_queue(args) as queue:
        bindings = queue.bindings(args.exchange)
    if args.json:
        for binding in bindings:
            print(json.dumps(_describe(binding)))
        return EXIT_OK
    if not bindings:
        print("no topic is bound" + ("" if args.exchange is None else f" to {args.exchange!r}"))
        return EXIT_OK
    rows = [
        (
            b.exchange,
            b.key or "-",
            b.topic,
            "-" if b.ttl is None else f"{b.ttl:g}s",
            "-" if b.expires_at is None else b.expires_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for b in bindings
    ]
    print(table(("exchange", "key", "topic", "ttl", "expires"), rows))
    return EXIT_OK


__all__ = ["bindings_command"]
