"""The ``squeal`` command line.

Every subcommand is one function registered with :func:`command`; ``main`` builds the parser
from that table. Global options (``--url``, ``--prefix``) are accepted before or after the
subcommand. Errors are one line on stderr: exit status 2 for a usage error (bad option, URL or
prefix), 1 for a failure (unreachable database, failed migration). Passwords are never printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from squeal.cli.connect import connected_engine, is_async_url, reason
from squeal.cli.output import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    OneLineFormatter,
    first_line,
    shown,
    table,
)
from squeal.message import DeadMessage, TopicStats

if TYPE_CHECKING:
    from squeal import Queue

#: Used when neither ``--url`` nor ``$SQUEAL_URL`` is given: a SQLite file in the current folder.
DEFAULT_URL = "sqlite:///squeal.db"
DEFAULT_PREFIX = "squeal"
URL_ENV = "SQUEAL_URL"

Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, its own arguments and the function it runs."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Run


#: The subcommands, in the order ``squeal --help`` lists them.
COMMANDS: dict[str, Command] = {}


def command(
    name: str, *, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[Run], Run]:
    """Register the decorated function as ``squeal NAME``."""

    def register(run: Run) -> Run:
        if name in COMMANDS:
            raise ValueError(f"squeal subcommand {name!r} is registered twice")
        COMMANDS[name] = Command(name, help, arguments or (lambda _parser: None), run)
        return run

    return register


# -- the database a command works on ------------------------------------------------------------


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand's parser that takes options between positionals (``put T --priority 9 D``)."""

    _inside = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inside:  # parse_known_intermixed_args calls back here for each pass
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def _add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # The subcommands repeat the options with SUPPRESS defaults, so that a value given before
    # the subcommand is not overwritten by the subparser's default.
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="show tracebacks (of errors, and of failing handlers in squeal worker)",
    )
    parser.add_argument(
        "--url",
        default=None if defaults else argparse.SUPPRESS,
        help=f"SQLAlchemy database URL (default: ${URL_ENV}, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX if defaults else argparse.SUPPRESS,
        help=f"table-name prefix of the queue's tables (default: {DEFAULT_PREFIX})",
    )
    parser.add_argument(
        "--schema",
        default=None if defaults else argparse.SUPPRESS,
        help="schema of the queue's tables (MySQL/MariaDB: database; default: the connection's)",
    )


def database_url(args: argparse.Namespace) -> sa.URL:
    """The URL from ``--url``, ``$SQUEAL_URL`` or the default; a usage error when unparsable."""
    text = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    try:
        return sa.make_url(text)
    except (sa.exc.ArgumentError, ValueError):
        # Not echoed: a URL that fails to parse may still contain a password.
        raise CommandError(
            "invalid --url: expected dialect+driver://user:password@host:port/database",
            EXIT_USAGE,
        ) from None


def table_schema(args: argparse.Namespace) -> str | None:
    """The validated ``--schema`` (None: the connection's default)."""
    from squeal.errors import ValidationError
    from squeal.schema import validate_schema

    try:
        return validate_schema(getattr(args, "schema", None))
    except ValidationError as exc:
        raise CommandError(f"invalid --schema: {exc}", EXIT_USAGE) from None


def table_prefix(args: argparse.Namespace) -> str:
    """The validated ``--prefix``; a usage error when it is not a safe identifier stem."""
    from squeal.errors import ValidationError
    from squeal.schema import validate_prefix

    try:
        return validate_prefix(args.prefix)
    except ValidationError as exc:
        raise CommandError(f"invalid --prefix: {exc}", EXIT_USAGE) from None


_MIGRATE_ACTIONS = ("upgrade", "downgrade", "current")


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Create or upgrade squeal's tables (default: to the newest revision), downgrade them, "
        "or show their revision. The revision is recorded in the table PREFIX_alembic_version."
    )
    parser.usage = (
        "squeal migrate [--url URL] [--prefix PREFIX] [--sql] [upgrade] [REVISION]\n"
        "       squeal migrate [--url URL] [--prefix PREFIX] downgrade REVISION\n"
        "       squeal migrate [--url URL] [--prefix PREFIX] current"
    )
    parser.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL of the upgrade instead of running it (nothing is executed)",
    )
    parser.add_argument("action", nargs="?", metavar="ACTION", help="upgrade, downgrade or current")
    parser.add_argument(
        "revision", nargs="?", metavar="REVISION", help="target revision (upgrade: head)"
    )


def _migrate_plan(args: argparse.Namespace) -> tuple[str, str | None]:
    """(action, revision) from ``squeal migrate [ACTION] [REVISION]``."""
    action, revision = args.action, args.revision
    if action is not None and action not in _MIGRATE_ACTIONS:
        if revision is None and not _is_revision(action):
            raise CommandError(
                f"unknown migrate action or revision {action!r} (actions: "
                f"{', '.join(_MIGRATE_ACTIONS)}; revisions: {', '.join(_revisions())})",
                EXIT_USAGE,
            )
        if revision is not None:
            raise CommandError(
                f"unknown migrate action {action!r} (choose from {', '.join(_MIGRATE_ACTIONS)})",
                EXIT_USAGE,
            )
        action, revision = "upgrade", action
    action = action or "upgrade"
    if action == "downgrade" and revision is None:
        raise CommandError(
            "squeal migrate downgrade needs a REVISION (base removes the tables)", EXIT_USAGE
        )
    if action == "current" and revision is not None:
        raise CommandError("squeal migrate current takes no REVISION", EXIT_USAGE)
    if args.sql and action != "upgrade":
        raise CommandError("--sql prints an upgrade only", EXIT_USAGE)
    return action, revision


def _revisions() -> list[str]:
    """squeal's revision ids, oldest first, then Alembic's symbolic names."""
    from alembic.script import ScriptDirectory

    from squeal import migrate

    script = ScriptDirectory.from_config(migrate.config())
    ids = [r.revision for r in script.walk_revisions()]
    return [*reversed(ids), "head", "base"]


def _is_revision(text: str) -> bool:
    """True for a revision Alembic would take: an id, head/base, or relative (head-1, +1)."""
    if text in _revisions() or text in ("heads",):
        return True
    stem, sign, step = text.rpartition("+") if "+" in text else text.rpartition("-")
    return bool(sign) and step.isdigit() and stem in ("", "head", "base", *_revisions())


def _sqlite_file_missing(url: sa.URL) -> bool:
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return False
    if path.startswith("file:") or url.query.get("mode") == "memory":
        return False  # a URI filename: leave it to SQLite
    return not os.path.exists(path)


def _describe(revision: str | None, head: str) -> str:
    if revision is None:
        return "base (no tables)"
    from squeal.recorded import Fit, fit

    if revision == head:
        return f"{revision} (head)"
    how = fit((revision,), head)
    if how is Fit.COMPATIBLE:
        return f"{revision} (a later squeal's revision, which this squeal, at {head}, runs on)"
    if how is Fit.AHEAD:
        return f"{revision} (a later squeal's revision; this squeal, at {head}, cannot run on it)"
    return revision


@command(
    "migrate",
    help="create, upgrade or downgrade squeal's tables; show their revision",
    arguments=_migrate_arguments,
)
def migrate_command(args: argparse.Namespace) -> int:
    """``squeal migrate``: run squeal's Alembic migrations on ``--url`` for ``--prefix``."""
    action, revision = _migrate_plan(args)
    url = database_url(args)
    prefix = table_prefix(args)
    schema = table_schema(args)

    from squeal import migrate
    from squeal.dialects import resolve_schema, strategy_for
    from squeal.schema import build_tables

    if args.sql:
        try:
            sys.stdout.write(
                migrate.sql(
                    url.render_as_string(hide_password=False),
                    prefix=prefix,
                    schema=schema,
                    revision=revision or "head",
                )
            )
        except sa.exc.NoSuchModuleError:
            raise CommandError(
                f"invalid --url: SQLAlchemy has no database dialect {url.drivername!r}",
                EXIT_USAGE,
            ) from None
        return EXIT_OK

    if action != "upgrade" and _sqlite_file_missing(url):
        # Connecting would create an empty file; there is nothing to show or downgrade.
        raise CommandError(f"database unreachable at {shown(url)}: no such SQLite file")
    head = migrate.head()
    with connected_engine(url) as engine:
        where = f"prefix {prefix!r} at {shown(engine.url)}"
        found = migrate.status(engine, prefix=prefix, schema=schema)
        before = found.revision
        if action == "current":
            managed = (
                f" (integrated: recorded in your application's {found.table}; "
                "your alembic migrates it: alembic upgrade squeal@head)"
                if found.integrated
                else ""
            )
            print(_describe(before, head) + managed)
            return EXIT_OK
        if action == "upgrade":
            # Refuse an unsupported database or server before any DDL runs.
            strategy = strategy_for(engine, build_tables(prefix, resolve_schema(engine, schema)))
            with engine.connect() as conn:
                strategy.check_server(conn)
            # What the tables were at once this run held the migration lock: a run that waited
            # for a concurrent one finds the work done and says so.
            before = migrate.upgrade(
                engine, prefix=prefix, schema=schema, revision=revision or "head"
            )
        else:
            before = migrate.downgrade(
                engine, prefix=prefix, schema=schema, revision=revision or "base"
            )
        after = migrate.current(engine, prefix=prefix, schema=schema)
    if before == after:
        print(f"squeal: {where} is already at {_describe(after, head)}")
    else:
        verb = "upgraded" if action == "upgrade" else "downgraded"
        print(f"squeal: {verb} {where} from {_describe(before, head)} to {_describe(after, head)}")
    return EXIT_OK


# -- queue commands -----------------------------------------------------------------------------

#: Exit status of ``get`` and ``peek`` when the topic has no ready message (scripts can loop).
EXIT_EMPTY = 3


@contextmanager
def open_queue(args: argparse.Namespace, **options: object) -> Iterator[Queue]:
    """A Queue on ``--url``/``--prefix`` whose database was reached; closed afterwards.

    A missing schema is reported by the first operation (SchemaMissing names the command).
    """
    from squeal import Queue

    url = database_url(args)
    prefix = table_prefix(args)
    schema = table_schema(args)
    if _sqlite_file_missing(url):
        raise CommandError(
            f"no SQLite file at {shown(url)}; create the queue with: "
            f"squeal migrate --url '{shown(url)}' --prefix {prefix}"
        )
    with connected_engine(url) as engine:
        queue = Queue(engine, prefix=prefix, schema=schema, **options)  # type: ignore[arg-type]
        try:
            yield queue
        finally:
            queue.close()


def _payload_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--base64", action="store_true", help="print payloads as base64 (default: text if UTF-8)"
    )
    group.add_argument("--hex", action="store_true", help="print payloads as hex")


def show_payload(data: bytes, args: argparse.Namespace) -> str:
    """``data`` on one line, never two payloads alike (docs/cli.md):

    printable UTF-8 text as it is, unless it is empty or starts with ``"`` or ``base64:``;
    other UTF-8 text as a JSON string (starts with ``"``); other bytes as ``base64:...``.
    """
    if getattr(args, "hex", False):
        return data.hex()
    if not getattr(args, "base64", False):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if text.isprintable() and text and not text.startswith(('"', "base64:")):
                return text
            return json.dumps(text, ensure_ascii=False)  # quoted, control characters escaped
    return "base64:" + base64.b64encode(data).decode("ascii")


def json_payload(data: bytes, args: argparse.Namespace) -> dict[str, str]:
    """``payload`` and its ``encoding`` for --json: decodes back to exactly ``data``."""
    if getattr(args, "hex", False):
        return {"payload": data.hex(), "encoding": "hex"}
    if not getattr(args, "base64", False):
        try:
            return {"payload": data.decode("utf-8"), "encoding": "utf-8"}
        except UnicodeDecodeError:
            pass
    return {"payload": base64.b64encode(data).decode("ascii"), "encoding": "base64"}


def _age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _count_arguments(parser: argparse.ArgumentParser) -> None:
    _stats_arguments(parser)
    parser.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="count at most N messages per topic and state, shown as N+ above it (a short "
        "read however large the queue; default: count every message)",
    )


@command(
    "stats",
    help="messages per topic: ready, delayed, leased, dead, oldest age",
    arguments=_count_arguments,
)
def stats_command(args: argparse.Namespace) -> int:
    """``squeal stats``."""
    with open_queue(args) as queue:
        stats = queue.stats(limit=args.limit)
    if args.json:
        print(json.dumps({topic: {**asdict(s), "total": s.total} for topic, s in stats.items()}))
        return EXIT_OK
    if not stats:
        print("no messages")
        return EXIT_OK

    def shown(n: int, s: TopicStats) -> int | str:
        return f"{n}+" if s.estimated else n

    rows: list[tuple[Any, ...]] = [
        (
            t,
            *(shown(n, s) for n in (s.ready, s.delayed, s.leased, s.dead)),
            _age(s.oldest_ready_age),
        )
        for t, s in stats.items()
    ]
    columns: tuple[str, ...] = ("topic", "ready", "delayed", "leased", "dead", "oldest")
    if any(s.paused for s in stats.values()):
        columns += ("state",)
        states = ["paused" if s.paused else "" for s in stats.values()]
        rows = [(*row, state) for row, state in zip(rows, states, strict=True)]
    print(table(columns, rows))
    if any(s.estimated for s in stats.values()):
        print(f"N+: at least N; that topic holds more than --limit {args.limit} in some state")
    return EXIT_OK


@command(
    "health",
    help="what keeps the queue fast: vacuum, snapshots, purge, free pages (exit 1: act)",
    arguments=_stats_arguments,
)
def health_command(args: argparse.Namespace) -> int:
    """``squeal health``: every finding with its advice; exit 1 when one needs action."""
    with open_queue(args) as queue:
        findings = queue.health()
    failing = EXIT_FAILURE if any(f.status == "action" for f in findings) else EXIT_OK
    if args.json:
        print(json.dumps([asdict(f) for f in findings]))
        return failing
    print(table(("check", "status", "found"), [(f.check, f.status, f.detail) for f in findings]))
    advice = [f for f in findings if f.advice]
    if advice:
        print()
        for f in advice:
            print(f"{f.status}: {f.check}: {f.advice}")
    return failing


def _put_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        default="-",
        help="payload text, or - for stdin (default); stdin's one trailing newline is dropped",
    )
    parser.add_argument(
        "--raw", action="store_true", help="keep stdin exactly, trailing newline included"
    )
    parser.add_argument(
        "--allow-empty", action="store_true", help="accept an empty payload (default: an error)"
    )
    parser.add_argument("--priority", type=int, default=0, help="higher is delivered first")
    parser.add_argument("--delay", type=float, default=None, help="seconds before it is visible")
    parser.add_argument("--dedup-key", default=None, help="skip if a live message has this key")
    parser.add_argument(
        "--ttl", type=float, default=None, help="seconds it may wait to be claimed, else it dies"
    )
    parser.add_argument(
        "--max-attempts", type=int, default=None, help="its own limit instead of the queue's"
    )
    parser.add_argument(
        "--header",
        action="append",
        dest="headers",
        type=_header,
        metavar="NAME=VALUE",
        default=None,
        help="a header stored with it (repeatable)",
    )


def _header(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (the value may contain ``=``)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return name, value


@command("put", help="enqueue one message (DATA, or stdin with -)", arguments=_put_arguments)
def put_command(args: argparse.Namespace) -> int:
    """``squeal put TOPIC [DATA|-]``: prints the new id (nothing on stdout when deduplicated)."""
    if args.data == "-":
        data = sys.stdin.buffer.read()
        if not args.raw:
            data = data.removesuffix(b"\n").removesuffix(b"\r")
    else:
        data = os.fsencode(args.data)
    if not data and not args.allow_empty:
        raise CommandError("the payload is empty (pass --allow-empty to enqueue it)", EXIT_USAGE)
    with open_queue(args) as queue:
        new_id = queue.put(
            data,
            args.topic,
            priority=args.priority,
            delay=args.delay,
            dedup_key=args.dedup_key,
            ttl=args.ttl,
            max_attempts=args.max_attempts,
            headers=None if args.headers is None else dict(args.headers),
        )
    if new_id is None:
        print("squeal: deduplicated: a message with this key is live", file=sys.stderr)
    else:
        print(new_id)
    return EXIT_OK


def _peek_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument("-n", "--limit", type=int, default=10, help="messages to show (default 10)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    _payload_arguments(parser)


def _print_messages(args: argparse.Namespace, items: Sequence[Any], leased: bool = False) -> None:
    dead = bool(items) and all(isinstance(m, DeadMessage) for m in items)
    if args.json:
        for m in items:
            record = {
                "id": m.id,
                "topic": m.topic,
                "priority": m.priority,
                "attempts": m.attempts,
                "enqueued_at": m.enqueued_at.isoformat(),
                **json_payload(m.payload, args),
            }
            if m.headers:
                record["headers"] = m.headers
            if leased:
                record["lease_token"] = m.lease_token
            if dead:
                died = None if m.died_at is None else m.died_at.isoformat()
                record.update(died_at=died, reason=m.reason, last_error=m.last_error)
            print(json.dumps(record))
        return
    if dead:
        _print_dead(args, items)
        return
    rows = [
        (
            m.id,
            m.priority,
            m.attempts,
            m.enqueued_at.strftime("%Y-%m-%d %H:%M:%S"),
            show_payload(m.payload, args),
        )
        for m in items
    ]
    print(table(("id", "priority", "attempts", "enqueued", "payload"), rows))


def _print_dead(args: argparse.Namespace, items: Sequence[DeadMessage]) -> None:
    """Dead letters: when and why each died, its last error (cut for the table: --json has it
    whole), and its payload."""
    rows = [
        (
            m.id,
            m.attempts,
            "-" if m.died_at is None else m.died_at.strftime("%Y-%m-%d %H:%M:%S"),
            m.reason,
            _shorten(m.last_error),
            show_payload(m.payload, args),
        )
        for m in items
    ]
    print(table(("id", "attempts", "died", "reason", "last error", "payload"), rows))


def _shorten(text: str | None, most: int = 60) -> str | None:
    if text is None:
        return None
    line = " ".join(text.split())
    return line if len(line) <= most else line[: most - 1] + "…"


@command(
    "peek",
    help="show the next ready messages of a topic without claiming them",
    arguments=_peek_arguments,
)
def peek_command(args: argparse.Namespace) -> int:
    """``squeal peek TOPIC``: exit 3 when nothing is ready."""
    with open_queue(args) as queue:
        found = queue.peek(args.topic, args.limit)
    if not found:
        print(f"no ready message in {args.topic!r}", file=sys.stderr)
        return EXIT_EMPTY
    _print_messages(args, found)
    return EXIT_OK


def _get_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument("-n", "--limit", type=int, default=1, help="messages to claim (default 1)")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for a message")
    parser.add_argument(
        "--ack",
        action="store_true",
        help="ack what was printed (default: the lease expires and it is redelivered)",
    )
    parser.add_argument("--visibility-timeout", type=float, default=None, help="lease seconds")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    _payload_arguments(parser)


@command(
    "get", help="claim messages and print them (--ack to remove them)", arguments=_get_arguments
)
def get_command(args: argparse.Namespace) -> int:
    """``squeal get TOPIC``: exit 3 when nothing was ready."""
    with open_queue(args) as queue:
        found = queue.get_many(
            args.topic, args.limit, wait=args.wait, visibility_timeout=args.visibility_timeout
        )
        if not found:
            print(f"no ready message in {args.topic!r}", file=sys.stderr)
            return EXIT_EMPTY
        _print_messages(args, found, leased=True)
        sys.stdout.flush()
        if args.ack:
            queue.ack_many(found)
    return EXIT_OK


def _dead_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument(
        "-n", "--limit", type=int, default=100, help="messages to show (default 100)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    _payload_arguments(parser)


@command("dead", help="list the dead messages of a topic", arguments=_dead_arguments)
def dead_command(args: argparse.Namespace) -> int:
    """``squeal dead TOPIC``."""
    with open_queue(args) as queue:
        found = queue.dead(args.topic, args.limit)
    if not found:
        print(f"no dead message in {args.topic!r}", file=sys.stderr)
        return EXIT_OK
    _print_messages(args, found)
    return EXIT_OK


def _redrive_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument("-n", "--limit", type=int, default=None, help="at most this many")
    _id_argument(parser, "only these dead messages (repeatable)")


def _id_argument(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "--id", type=int, action="append", dest="ids", metavar="ID", default=None, help=text
    )


@command(
    "redrive", help="make the dead messages of a topic ready again", arguments=_redrive_arguments
)
def redrive_command(args: argparse.Namespace) -> int:
    """``squeal redrive TOPIC``."""
    with open_queue(args) as queue:
        moved = queue.redrive(args.topic, args.limit, ids=args.ids)
    print(f"redrove {moved} message(s) of {args.topic!r}")
    return EXIT_OK


def _purge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument("--dead-only", action="store_true", help="delete only dead messages")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    _id_argument(parser, "only these messages (repeatable)")


@command(
    "purge", help="delete the messages of a topic (asks unless --yes)", arguments=_purge_arguments
)
def purge_command(args: argparse.Namespace) -> int:
    """``squeal purge TOPIC``."""
    with open_queue(args) as queue:
        what = "dead messages" if args.dead_only else "messages"
        if not args.yes:
            if not sys.stdin.isatty():
                raise CommandError("purge deletes messages: confirm with --yes", EXIT_USAGE)
            stats = queue.stats().get(args.topic)
            count = 0 if stats is None else (stats.dead if args.dead_only else stats.total)
            if args.ids is not None:
                count = len(set(args.ids))
            answer = input(f"delete {count} {what} of {args.topic!r}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted", file=sys.stderr)
                return EXIT_FAILURE
        deleted = queue.purge(args.topic, dead_only=args.dead_only, ids=args.ids)
    print(f"deleted {deleted} {what} of {args.topic!r}")
    return EXIT_OK


def _topics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topics", metavar="TOPIC", nargs="*", help="(none: list the paused)")


@command(
    "pause",
    help="stop delivering topics, for every consumer (no topic: list the paused ones)",
    arguments=_topics_arguments,
)
def pause_command(args: argparse.Namespace) -> int:
    """``squeal pause [TOPIC ...]``."""
    with open_queue(args) as queue:
        for topic in args.topics:
            queue.pause(topic)
            print(f"paused {topic!r}")
        if not args.topics:
            paused = queue.paused()
            print("\n".join(paused) if paused else "no topic is paused")
    return EXIT_OK


@command("resume", help="deliver paused topics again", arguments=_topics_arguments)
def resume_command(args: argparse.Namespace) -> int:
    """``squeal resume TOPIC ...``."""
    if not args.topics:
        raise CommandError("name the topics to resume (squeal pause lists them)", EXIT_USAGE)
    with open_queue(args) as queue:
        for topic in args.topics:
            queue.resume(topic)
            print(f"resumed {topic!r}")
    return EXIT_OK


def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("handler", metavar="MODULE:FUNCTION", help="the handler to import")
    parser.add_argument(
        "-t",
        "--topic",
        action="append",
        dest="topics",
        help="topic to consume (repeatable; default: default)",
    )
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="handler threads")
    parser.add_argument("--visibility-timeout", type=float, default=60.0, help="lease seconds")
    parser.add_argument(
        "--max-attempts",
        type=_attempts,
        default=25,
        metavar="N",
        help="deliveries before a failing message is dead (default 25; 'unlimited': never)",
    )
    parser.add_argument("--failure-base-delay", type=float, default=1.0, help="first backoff")
    parser.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds to finish in-flight work on SIGTERM",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        metavar="N",
        help="messages claimed ahead of the handlers (default: 4 per handler; 0: none)",
    )
    parser.add_argument(
        "--settle-every",
        type=float,
        default=0.005,
        metavar="SECONDS",
        help="seconds an ack waits at most to share one commit with others (default 0.005)",
    )
    parser.add_argument(
        "--ack-in-transaction",
        action="store_true",
        help="call handler(message, connection); the ack commits with its writes",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve this worker's counters (claims, settlements, handler seconds) on "
        "http://--metrics-host:PORT/metrics (needs squeal[metrics])",
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of --metrics-port (default 127.0.0.1)"
    )
    parser.add_argument(
        "--registry-beat",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between updates of this worker's row in 'squeal workers' (default 5)",
    )


def _attempts(text: str) -> int | None:
    """``--max-attempts``: a positive count, or ``unlimited``."""
    if text.strip().lower() == "unlimited":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'unlimited', not {text!r}")
    return value


@command(
    "worker",
    help="consume topics with a handler (module:function) until SIGTERM",
    arguments=_worker_arguments,
)
def worker_command(args: argparse.Namespace) -> int:
    """``squeal worker module:function``: logs each failure; exit 0 after a clean stop.

    A failing handler is one line on stderr (with its traceback under ``-v``); a message that
    went dead is an ERROR line. Missing tables end the worker with exit status 1.
    """
    from squeal.worker import Worker, load_handler

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # handlers next to the current folder, like python -m
    try:
        handler = load_handler(args.handler)
    except (ImportError, AttributeError) as exc:
        raise CommandError(f"cannot load handler {args.handler!r}: {exc}", EXIT_USAGE) from None
    output = logging.StreamHandler(sys.stderr)
    line = "%(asctime)s %(levelname)s %(message)s"
    verbose = getattr(args, "verbose", False)
    output.setFormatter(logging.Formatter(line) if verbose else OneLineFormatter(line))
    logging.basicConfig(level=logging.INFO, handlers=[output])
    options = {
        "visibility_timeout": args.visibility_timeout,
        "max_attempts": args.max_attempts,
        "failure_base_delay": args.failure_base_delay,
    }
    if args.metrics_port is not None:
        _serve_consumer_metrics(args.metrics_host, args.metrics_port)
    with open_queue(args, **options) as queue:
        worker = Worker(
            queue,
            handler,
            args.topics or ["default"],
            concurrency=args.concurrency,
            grace_period=args.grace_period,
            ack_in_transaction=args.ack_in_transaction,
            registry_beat=args.registry_beat,
            prefetch=args.prefetch,
            settle_every=args.settle_every,
        )
        # From the announcement on, SIGTERM/SIGINT stop the worker gracefully (run() installs
        # its own handlers; one arriving before it does must not kill the process).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _signum, _frame: worker.stop())
        print(
            f"squeal worker: consuming {', '.join(worker.topics)} with {args.handler}",
            file=sys.stderr,
            flush=True,
        )
        stats = worker.run()
    print(
        f"squeal worker: stopped ({stats.acked} acked, {stats.failed} failed, "
        f"{stats.released} released)",
        file=sys.stderr,
    )
    return EXIT_OK


def _serve_consumer_metrics(host: str, port: int) -> None:
    """Count this process's consumer events and serve them on a daemon thread."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from squeal.metrics import register_consumers
    except ImportError as missing:
        raise CommandError(str(missing), EXIT_USAGE) from None
    registry = CollectorRegistry()
    register_consumers(registry)
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise CommandError(f"cannot listen on {host}:{port}: {error}") from None
    print(
        f"squeal worker: metrics on http://{host}:{server.server_port}/metrics",
        file=sys.stderr,
        flush=True,
    )


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--messages", type=int, default=600, help="messages to produce (default 600)"
    )
    parser.add_argument("--consumers", type=int, default=2, help="consumer processes (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the demo's tables afterwards")


@command(
    "demo",
    help="watch producers, consumers, retries and a dead letter (SQLite by default)",
    arguments=_demo_arguments,
)
def demo_command(args: argparse.Namespace) -> int:
    """``squeal demo``: see squeal/cli/demo.py."""
    from squeal.cli import demo

    return demo.run(args)


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    from squeal.cli import bench

    bench.add_arguments(parser)


@command(
    "bench",
    help="measure squeal against hand-written driver code on each --url (see docs/performance.md)",
    arguments=_bench_arguments,
)
def bench_command(args: argparse.Namespace) -> int:
    """``squeal bench``: see squeal/cli/bench.py."""
    from squeal.cli import bench

    return bench.run(args)


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every registered subcommand."""
    from squeal import __version__

    parser = argparse.ArgumentParser(
        prog="squeal", description="squeal: a message queue in your relational database."
    )
    parser.add_argument("--version", action="version", version=f"squeal {__version__}")
    _add_global_options(parser, defaults=True)
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_IntermixedParser
    )
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        _add_global_options(sub, defaults=False)
        cmd.arguments(sub)
    return parser


def _secret(args: argparse.Namespace) -> str | None:
    if not isinstance(getattr(args, "url", None), str | None):
        return None  # squeal bench takes several --url: it hides their passwords itself
    try:
        return database_url(args).password
    except CommandError:
        return None


#: Shorter passwords are not searched for in messages (they would match ordinary words).
_MIN_SCRUBBED = 4


def _report(message: str, secret: str | None, error: BaseException | None = None) -> None:
    """One line on stderr; with ``error`` (``-v``) its traceback first. Passwords scrubbed."""

    def scrubbed(text: str) -> str:
        if secret and len(secret) >= _MIN_SCRUBBED:
            return text.replace(secret, "***")
        return text

    if error is not None:
        import traceback

        sys.stderr.write(scrubbed("".join(traceback.format_exception(error))))
    print(f"squeal: error: {scrubbed(' '.join(message.split()))}", file=sys.stderr)


def _names_async_url(args: argparse.Namespace) -> bool:
    """Whether the command's one database URL names an asyncio driver (``bench`` takes a list
    of URLs and measures drivers it has floors for)."""
    url = getattr(args, "url", ())
    if url is not None and not isinstance(url, str):
        return False
    try:
        return is_async_url(database_url(args))
    except CommandError:
        return False  # the command reports the bad URL itself


def _run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run ``command``; on an asyncio driver's URL, inside SQLAlchemy's greenlet bridge on a
    loop of the command's own (the CLI is tooling: the library itself never starts a loop)."""
    if not _names_async_url(args) or args.command == "dashboard":
        return command(args)  # the dashboard serves an AsyncQueue on the server's own loop
    if args.command == "worker":
        raise CommandError(
            "squeal worker runs handlers on threads: give it the database's sync URL "
            "(an asyncio application runs squeal.aio.AsyncWorker itself)",
            EXIT_USAGE,
        )
    if args.command == "metrics" and not getattr(args, "print", False):
        raise CommandError(
            "squeal metrics answers scrapes on threads: give it the database's sync URL",
            EXIT_USAGE,
        )
    import asyncio

    from sqlalchemy.util.concurrency import greenlet_spawn

    result: int = asyncio.run(greenlet_spawn(command, args))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``squeal`` command with ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    from alembic.util import CommandError as AlembicError

    from squeal.errors import SquealError, ValidationError

    secret = _secret(args)
    verbose = bool(getattr(args, "verbose", False))
    try:
        return _run(COMMANDS[args.command].run, args)
    except CommandError as exc:
        _report(exc.message, secret, exc if verbose else None)
        return exc.exit_code
    except ValidationError as exc:
        _report(str(exc), secret, exc if verbose else None)
        return EXIT_USAGE
    except SquealError as exc:
        _report(str(exc), secret, exc if verbose else None)
        return EXIT_FAILURE
    except AlembicError as exc:
        _report(f"migration failed: {first_line(exc)}", secret, exc if verbose else None)
        return EXIT_FAILURE
    except sa.exc.SQLAlchemyError as exc:
        _report(f"database error: {reason(exc)}", secret, exc if verbose else None)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _report("interrupted", secret)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (squeal ... | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
