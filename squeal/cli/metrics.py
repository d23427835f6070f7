"""``squeal metrics``: serve the queue's Prometheus metrics (docs/metrics.md). Imported by
``squeal.cli`` so that the command is registered; prometheus_client is imported when it runs."""

from __future__ import annotations

import argparse
import hmac
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

from squeal.cli.commands import command, open_queue
from squeal.cli.output import EXIT_OK, CommandError, server_arguments, token_of

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

#: ``squeal metrics``' default port (OpenTelemetry's Prometheus exporter uses it too).
PORT = 9464


def _arguments(parser: argparse.ArgumentParser) -> None:
    server_arguments(
        parser,
        port=PORT,
        token="require 'Authorization: Bearer TOKEN' on every request (none: open to "
        "whoever reaches the address)",
    )
    parser.add_argument(
        "--print", action="store_true", help="print the metrics once to stdout and exit"
    )


def guarded(app: WSGIApplication, token: str | None) -> WSGIApplication:
    """``app`` that answers 401 unless the request bears ``token`` (None: no check)."""
    if token is None:
        return app
    expected = f"Bearer {token}".encode()

    def check(environ: WSGIEnvironment, start: StartResponse) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            start(
                "401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")]
            )
            return [b"a bearer token is required\n"]
        return app(environ, start)

    return check


@command(
    "metrics",
    help="serve the queue's Prometheus metrics on /metrics (needs squeal[metrics]): messages "
    "per topic and state, oldest ready age, paused topics, running workers",
    arguments=_arguments,
)
def metrics_command(args: argparse.Namespace) -> int:
    """``squeal metrics [--host H] [--port P] [--cache S] [--token T] [--print]``."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    try:
        from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
        from prometheus_client.exposition import ThreadingWSGIServer

        from squeal.metrics import register_queue
    except ImportError as missing:
        raise CommandError(str(missing)) from None
    token = token_of(args)
    with open_queue(args) as queue:
        registry = CollectorRegistry()
        register_queue(queue, cache=args.cache, registry=registry)
        if args.print:
            sys.stdout.write(generate_latest(registry).decode())
            return EXIT_OK

        class Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *values: Any) -> None:
                pass

        app = guarded(make_wsgi_app(registry), token)
        try:
            server = make_server(
                args.host, args.port, app, ThreadingWSGIServer, handler_class=Quiet
            )
        except OSError as error:
            raise CommandError(f"cannot listen on {args.host}:{args.port}: {error}") from None
        stop = threading.Event()

        def stopping(signum: int, frame: FrameType | None) -> None:
            stop.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

        previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
        guard = "a bearer token" if token else "no token"
        where = f"http://{args.host}:{server.server_port}/metrics"
        print(f"squeal metrics: serving {where} ({guard})", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return EXIT_OK


__all__ = ["PORT", "guarded", "metrics_command"]
