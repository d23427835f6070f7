"""The ``squeal`` command line and its tools (bench, demo, the raw-driver floor).

Nothing here is loaded by ``import squeal``: the library does not depend on its tools.
"""

from __future__ import annotations

from squeal.cli import dashboard, limiting, metrics, scheduling, workers  # noqa: F401 (registers their commands)
from squeal.cli.commands import main

__all__ = ["main"]
