"""The docs point only at things that exist: relative links, #anchors and file names.

Checked in README.md, CHANGELOG.md and docs/*.md:

* every relative link ``[text](path)`` / ``![alt](path)`` (outside fenced code) names an existing
  file or folder, relative to the document; ``path#anchor`` and ``#anchor`` into a markdown file
  name one of its headings, slugged as GitHub does (lowercase, punctuation other than ``-`` and
  ``_`` removed, spaces to ``-``, ``-1``, ``-2`` ... for repeated headings);
* every file name ending in .md, .py, .toml, .txt or .ini, in prose or code (URLs aside): a name
  with a folder in it must exist relative to the document or to the repository root; a bare name
  (``env.py``, ``checker.py``), written beside the folder it lives in, must be the name of some
  file in the repository. So a reference to a design note that is not in the repository
  (``DESIGN.md``) fails.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]

#: File names the docs mention that are not files of this repository. Keep it short.
NOT_OURS = {
    "squeal.ini",  # README: the ini file an application writes for its own alembic
    "alembic.ini",  # docs/deploy.md: the application's own
}

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
FILE_NAME = re.compile(r"[\w./-]+\.(?:md|py|toml|txt|ini)\b")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
SKIPPED_DIRS = {".git", ".venv", "venv", ".nox", "__pycache__", "node_modules", "build", "dist"}


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading (before de-duplication)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a markdown text (headings in fenced code do not count)."""
    seen: Counter[str] = Counter()
    found = set()
    for match in HEADING.finditer(FENCE.sub("", markdown)):
        base = slug(match.group(2))
        found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def repository_file_names() -> set[str]:
    names = set()
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        if path.is_file():
            names.add(path.name)
    return names


def broken_links(doc: Path, text: str) -> list[str]:
    problems = []
    for match in LINK.finditer(FENCE.sub("", text)):
        target = match.group(2)
        if URL.match(target) or target.startswith("mailto:"):
            continue
        path_part, _, anchor = target.partition("#")
        where = (doc.parent / path_part).resolve() if path_part else doc
        if not where.exists():
            problems.append(f"link {target!r}: no such file")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where.read_text()):
            problems.append(f"link {target!r}: no heading with anchor #{anchor} in {where.name}")
    return problems


def missing_files(doc: Path, text: str, everywhere: set[str]) -> list[str]:
    problems = []
    for name in sorted(set(FILE_NAME.findall(URL.sub(" ", text)))):
        if name in NOT_OURS or (doc.parent / name).exists() or (ROOT / name).exists():
            continue
        if "/" not in name and name in everywhere:
            continue
        problems.append(f"file {name!r} is not in the repository")
    return problems


@pytest.fixture(scope="module")
def everywhere() -> set[str]:
    return repository_file_names()


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_links_anchors_and_file_names_in_the_docs_resolve(doc: Path, everywhere: set[str]) -> None:
    text = doc.read_text()
    problems = broken_links(doc, text) + missing_files(doc, text, everywhere)
    assert not problems, f"{doc.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_slugs_follow_githubs_rules() -> None:
    assert slug("Exactly-once effects: `ack_in_transaction=True`") == (
        "exactly-once-effects-ack_in_transactiontrue"
    )
    assert slug("The targets, and what they mean for you") == (
        "the-targets-and-what-they-mean-for-you"
    )
    assert slug("Topic locks: the cost of `acquire_topic()`") == (
        "topic-locks-the-cost-of-acquire_topic"
    )
    assert anchors("# A\n## Usage\n```\n# not a heading\n```\n## Usage\n") == {
        "a",
        "usage",
        "usage-1",
    }


def test_the_checks_catch_what_they_are_for(everywhere: set[str]) -> None:
    doc = ROOT / "docs" / "example.md"  # resolved as if it were in docs/ (it is not written)
    text = (
        "As DESIGN.md says; see [perf](performance.md#no-such-heading), "
        "[gone](missing.md), [fine](worker.md#waiting-for-messages) and `squeal/queue.py`; "
        "`env.py` lives in migrations/. https://example.com/NOTES.md is not ours to check."
    )
    assert broken_links(doc, text) == [
        "link 'performance.md#no-such-heading': no heading with anchor #no-such-heading in "
        "performance.md",
        "link 'missing.md': no such file",
    ]
    assert missing_files(doc, text, everywhere) == [
        "file 'DESIGN.md' is not in the repository",
        "file 'missing.md' is not in the repository",
    ]
