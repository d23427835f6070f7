"""The ``squeal`` command line and its tools (bench, demo, the raw-driver floor).

Nothing here is loaded by ``import squeal``: the library does not depend on its tools.
"""

from __future__ import annotations

from squeal.cli import (  # noqa: F401 (registers their commands)
    bindings,
    dashboard,
    limiting,
    metrics,
    scheduling,
    workers,
)
from squeal.cli.commands import main

__all__ = ["main"]
