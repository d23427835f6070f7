"""``squeal dashboard``: serve the web dashboard (docs/dashboard.md). Imported by
``squeal.cli`` so that the command is registered; the web stack is imported when it runs."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from squeal.cli.commands import command, database_url, table_prefix, table_schema
from squeal.cli.connect import connected_engine, is_async_url
from squeal.cli.output import EXIT_OK, EXIT_USAGE, CommandError, server_arguments, token_of

if TYPE_CHECKING:
    from starlette.applications import Starlette

#: ``squeal dashboard``'s default port.
PORT = 8765


def _arguments(parser: argparse.ArgumentParser) -> None:
    server_arguments(
        parser,
        port=PORT,
        token="require this token of every page, action and /metrics; without one the "
        "dashboard is read-only",
    )
    parser.add_argument(
        "--read-only", action="store_true", help="refuse every action, even with a token"
    )


@command(
    "dashboard",
    help="serve the web dashboard: topics with live counts, messages, dead letters with "
    "redrive and purge, workers, pause and resume, /metrics (needs squeal[web])",
    arguments=_arguments,
)
def dashboard_command(args: argparse.Namespace) -> int:
    """``squeal dashboard [--host H] [--port P] [--token T] [--read-only] [--cache S]``."""
    try:
        from squeal.web import app
    except ImportError as missing:
        raise CommandError(str(missing), EXIT_USAGE) from None
    token = token_of(args)
    url = database_url(args)
    prefix, schema = table_prefix(args), table_schema(args)
    if is_async_url(url):
        # Served on uvicorn's loop, where the AsyncEngine makes its connections.
        from sqlalchemy.ext.asyncio import create_async_engine

        from squeal.aio import AsyncQueue

        queue = AsyncQueue(create_async_engine(url), prefix=prefix, schema=schema)
        _serve(app(queue, token=token, read_only=args.read_only, cache=args.cache), args, token)
        return EXIT_OK
    from squeal import Queue

    with connected_engine(url) as engine:
        sync = Queue(engine, prefix=prefix, schema=schema)
        try:
            _serve(app(sync, token=token, read_only=args.read_only, cache=args.cache), args, token)
        finally:
            sync.close()
    return EXIT_OK


def _serve(served: Starlette, args: argparse.Namespace, token: str | None) -> None:
    import socket

    import uvicorn

    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as error:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {error}") from None
    port = sock.getsockname()[1]
    if token is None:
        mode = "read-only: no token"
    else:
        mode = "read-only, token required" if args.read_only else "token required"
    print(f"squeal dashboard: http://{args.host}:{port}/ ({mode})", flush=True)
    # Open event streams (a browser's overview) end on SIGTERM after at most 2 s.
    config = uvicorn.Config(
        served, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
    )
    uvicorn.Server(config).run(sockets=[sock])


__all__ = ["PORT", "dashboard_command"]
