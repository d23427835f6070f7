"""Sessions: tests per database, lint, typecheck, bench; a bare ``nox``: lint, typecheck, tests."""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

DATABASES = ("sqlite", "postgresql", "mysql")


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the library."""
    _install(session)
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """Every database it can reach (what it cannot reach is a skip with the reason)."""
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session(name="tests-db")
@nox.parametrize("db", DATABASES)
def tests_db(session: nox.Session, db: str) -> None:
    """One database, which must be reachable (--require-db)."""
    _install(session)
    if db == "mysql" and "SQUEAL_TEST_MYSQL_URL" not in os.environ:
        session.log("mysql: the default MariaDB/MySQL URL; set SQUEAL_TEST_MYSQL_URL to change it")
    session.run("pytest", f"--db={db}", "--require-db", *session.posargs)


#: Every driver variant (tests/conftest.py's VARIANTS), for ``nox -s tests-driver``.
DRIVER_VARIANTS = (
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+pg8000",
    "mysql+pymysql",
    "mysql+mysqldb",
    "mysql+mysqlconnector",
    "mysql+mariadbconnector",
    "mariadb+pymysql",
    "mariadb+mysqldb",
    "mariadb+mysqlconnector",
    "mariadb+mariadbconnector",
)


@nox.session(name="tests-driver")
@nox.parametrize("variant", DRIVER_VARIANTS)
def tests_driver(session: nox.Session, variant: str) -> None:
    """The whole suite on one driver (mysqlclient and mariadb need a compiler and headers)."""
    session.install("-e", ".[dev,mysqlclient,mariadb]")
    session.run("pytest", f"--db={variant}", "--require-db", *session.posargs)


@nox.session(name="tests-python", python=["3.10", "3.13"])
def tests_python(session: nox.Session) -> None:
    """The SQLite suite on the lowest Python (lowest SQLAlchemy and Alembic) and the newest."""
    if session.python == "3.10":
        session.install("-e", ".[dev]", "-c", ".ci/lowest.txt")
    else:
        session.install("-e", ".[dev]")
    session.run("pytest", "--db=sqlite", "--require-db", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """squeal bench against the raw-driver floor; pass bench options after ``--``.

    Without options it measures a temporary SQLite file; for example
    ``nox -s bench -- --url postgresql+psycopg://... --url mysql+pymysql://... --png bench.png``.
    """
    session.install("-e", ".[dev,bench]")
    session.run("squeal", "bench", *session.posargs)
