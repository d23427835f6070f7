"""The Python in docs/flow_control.md, schedules.md, state_machine.md and exchanges.md runs
as written, on every database (each document's blocks in order, in one namespace holding
``queue``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from squeal import Queue

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def python_blocks(doc: str) -> list[str]:
    return _BLOCK.findall((DOCS / doc).read_text())


@pytest.mark.parametrize(
    "doc", ["flow_control.md", "schedules.md", "state_machine.md", "exchanges.md"]
)
def test_the_python_in_the_doc_runs(doc: str, queue: Queue) -> None:
    blocks = python_blocks(doc)
    assert blocks, f"{doc} has no Python blocks"
    namespace: dict[str, object] = {"queue": queue}
    for i, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/{doc}, Python block {i}", "exec"), namespace)
