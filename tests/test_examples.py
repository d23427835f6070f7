"""Every file in examples/ runs as written, on every database (docs that are tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_to_completion(example: Path, db_url: str) -> None:
    done = subprocess.run(
        [sys.executable, str(example), "--url", db_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_quickstart_runs_with_no_arguments() -> None:
    """The README's first command: no server, no options, a temporary SQLite file."""
    quickstart = next(p for p in EXAMPLES if p.stem == "quickstart")
    done = subprocess.run(
        [sys.executable, str(quickstart)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(attempt 2)" in done.stdout
