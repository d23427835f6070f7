"""What the command line prints: exit statuses, one-line errors, tables, log lines."""

from __future__ import annotations

import argparse
import importlib
import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A failure reported to the user as one line on stderr, with an exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def shown(url: sa.URL) -> str:
    """``url`` as it may be printed: the password replaced by ``***``."""
    return url.render_as_string(hide_password=True)


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def server_arguments(parser: argparse.ArgumentParser, *, port: int, token: str) -> None:
    """``--host``, ``--port``, ``--cache`` and ``--token`` of the commands that serve the
    queue's state over HTTP (``token``: what the token guards)."""
    from squeal.snapshot import PERIOD

    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=port, help=f"port (default {port}; 0: any)")
    parser.add_argument(
        "--cache",
        type=float,
        default=PERIOD,
        metavar="SECONDS",
        help=f"read the queue's state at most once per SECONDS, for every reader "
        f"(default {PERIOD:g})",
    )
    parser.add_argument("--token", help=f"{token} (default: $SQUEAL_TOKEN)")


def token_of(args: argparse.Namespace) -> str | None:
    """``--token``, else ``$SQUEAL_TOKEN``, else None."""
    import os

    return str(args.token or os.environ.get("SQUEAL_TOKEN") or "") or None


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: columns padded, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(headers))
    ]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(w) if numeric[i] and row is not cells[0] else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


class OneLineFormatter(logging.Formatter):
    """A formatter that leaves tracebacks out: ``squeal worker`` shows them with ``-v``."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text = saved


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files, or None without the optional extra squeal[bench]."""
    try:  # loaded by name: no stubs needed
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        return importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return None
