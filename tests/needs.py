"""What a test needs from the machine: a skip that names what to install, or a failure.

Without ``--require-db`` a missing server or tool skips the test with a one-line reason; with it
(as in CI) the same reason fails the test, so nothing is skipped silently. Tools are found on
PATH or through an environment variable, never at a fixed path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

_strict = False


def configure(strict: bool) -> None:
    """Called once by conftest: ``strict`` is ``--require-db``."""
    global _strict
    _strict = strict


def unavailable(reason: str) -> NoReturn:
    """Skip the running test for ``reason``, or fail it under ``--require-db``."""
    if _strict:
        pytest.fail(f"--require-db: {reason}", pytrace=False)
    pytest.skip(reason)


def tool(name: str, *, env: str, package: str) -> str:
    """The path of program ``name``: ``$env``, else PATH; else skip (or fail) naming ``package``."""
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        unavailable(f"{name} not found: install {package} (put it on PATH) or set {env}")
    return path


def postgres_bin() -> Path:
    """The folder of the PostgreSQL server programs (initdb, pg_ctl); a skip without them.

    ``$SQUEAL_TEST_PG_BIN`` (or ``$SQUEAL_PG_BIN``), else found as ``squeal.cli.servers`` finds it.
    """
    from squeal.cli.servers import postgres_bin as find

    found = find()
    if found is not None:
        return found
    unavailable(
        "the PostgreSQL server programs (initdb, pg_ctl) were not found: install the "
        "PostgreSQL server package, or set SQUEAL_TEST_PG_BIN to their folder"
    )
