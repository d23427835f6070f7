"""The ``squeal`` command line.

Every subcommand is one function registered with :func:`command`; ``main`` builds the parser
from that table. Global options (``--url``, ``--prefix``) are accepted before or after the
subcommand. Errors are one line on stderr: exit status 2 for a usage error (bad option, URL or
prefix), 1 for a failure (unreachable database, failed migration). Passwords are never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Used when neither ``--url`` nor ``$SQUEAL_URL`` is given: a SQLite file in the current folder.
DEFAULT_URL = "sqlite:///squeal.db"
DEFAULT_PREFIX = "squeal"
URL_ENV = "SQUEAL_URL"
#: Seconds to wait for a PostgreSQL server before reporting it unreachable (libpq waits forever).
CONNECT_TIMEOUT = 10


class CommandError(Exception):
    """A failure reported to the user as one line on stderr, with an exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


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


def _add_global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # The subcommands repeat the options with SUPPRESS defaults, so that a value given before
    # the subcommand is not overwritten by the subparser's default.
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


def table_prefix(args: argparse.Namespace) -> str:
    """The validated ``--prefix``; a usage error when it is not a safe identifier stem."""
    from squeal.errors import ValidationError
    from squeal.schema import validate_prefix

    try:
        return validate_prefix(args.prefix)
    except ValidationError as exc:
        raise CommandError(f"invalid --prefix: {exc}", EXIT_USAGE) from None


def shown(url: sa.URL) -> str:
    """``url`` as it may be printed: the password replaced by ``***``."""
    return url.render_as_string(hide_password=True)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def _reason(error: sa.exc.SQLAlchemyError) -> str:
    """The driver's own message, without SQLAlchemy's SQL echo and background link."""
    orig = getattr(error, "orig", None)
    return _first_line(orig if orig is not None else error)


@contextmanager
def connected_engine(url: sa.URL) -> Iterator[sa.Engine]:
    """An engine on ``url`` whose database has been reached once; disposed afterwards."""
    connect_args: dict[str, object] = {}
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT
    try:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
    except sa.exc.NoSuchModuleError:
        raise CommandError(
            f"invalid --url: SQLAlchemy has no database dialect {url.drivername!r}", EXIT_USAGE
        ) from None
    except ImportError as exc:
        extra = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
        hint = extra.get(url.get_backend_name())
        raise CommandError(
            f"the database driver for {url.drivername!r} is not installed ({exc})"
            + (f"; install it with: pip install 'squeal[{hint}]'" if hint else "")
        ) from None
    try:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except sa.exc.DBAPIError as exc:
            raise CommandError(f"database unreachable at {shown(url)}: {_reason(exc)}") from None
        yield engine
    finally:
        engine.dispose()


# -- squeal migrate -----------------------------------------------------------------------------

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
    return f"{revision} (head)" if revision == head else revision


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

    from squeal import migrate
    from squeal.dialects import strategy_for
    from squeal.schema import build_tables

    if args.sql:
        try:
            sys.stdout.write(
                migrate.sql(
                    url.render_as_string(hide_password=False),
                    prefix=prefix,
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
        before = migrate.current(engine, prefix=prefix)
        if action == "current":
            print(_describe(before, head))
            return EXIT_OK
        if action == "upgrade":
            # Refuse an unsupported database or server before any DDL runs.
            strategy = strategy_for(engine, build_tables(prefix))
            with engine.connect() as conn:
                strategy.check_server(conn)
            migrate.upgrade(engine, prefix=prefix, revision=revision or "head")
        else:
            migrate.downgrade(engine, prefix=prefix, revision=revision or "base")
        after = migrate.current(engine, prefix=prefix)
    if before == after:
        print(f"squeal: {where} is already at {_describe(after, head)}")
    else:
        verb = "upgraded" if action == "upgrade" else "downgraded"
        print(f"squeal: {verb} {where} from {_describe(before, head)} to {_describe(after, head)}")
    return EXIT_OK


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every registered subcommand."""
    from squeal import __version__

    parser = argparse.ArgumentParser(
        prog="squeal", description="squeal: a message queue in your relational database."
    )
    parser.add_argument("--version", action="version", version=f"squeal {__version__}")
    _add_global_options(parser, defaults=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        _add_global_options(sub, defaults=False)
        cmd.arguments(sub)
    return parser


def _secret(args: argparse.Namespace) -> str | None:
    try:
        return database_url(args).password
    except CommandError:
        return None


#: Shorter passwords are not searched for in messages (they would match ordinary words).
_MIN_SCRUBBED = 4


def _report(message: str, secret: str | None) -> None:
    text = " ".join(message.split())
    if secret and len(secret) >= _MIN_SCRUBBED:
        text = text.replace(secret, "***")
    print(f"squeal: error: {text}", file=sys.stderr)


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
    try:
        return COMMANDS[args.command].run(args)
    except CommandError as exc:
        _report(exc.message, secret)
        return exc.exit_code
    except ValidationError as exc:
        _report(str(exc), secret)
        return EXIT_USAGE
    except SquealError as exc:
        _report(str(exc), secret)
        return EXIT_FAILURE
    except AlembicError as exc:
        _report(f"migration failed: {_first_line(exc)}", secret)
        return EXIT_FAILURE
    except sa.exc.SQLAlchemyError as exc:
        _report(f"database error: {_reason(exc)}", secret)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        _report("interrupted", secret)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
