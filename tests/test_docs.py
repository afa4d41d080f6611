"""The README stays short and the documentation stays connected: every relative link between
README.md and docs/*.md leads to a file that exists and, with an #anchor, to one of its headings
(GitHub's anchors), and every docs page is reachable from the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 250

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks, which hold no links or headings."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens and underscores
    dropped, spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub does."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _prose_lines(path):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """The targets of the file's Markdown links and images, outside code."""
    targets: list[str] = []
    for line in _prose_lines(path):
        targets.extend(_LINK.findall(_INLINE_CODE.sub("", line)))
    return targets


def _is_external(target: str) -> bool:
    return re.match(r"(?i)(https?:|mailto:)", target) is not None


def _resolve(source: Path, target: str) -> tuple[Path, str]:
    """The file a relative link leads to and its anchor ('' without one)."""
    file_part, _, anchor = target.partition("#")
    return (source.parent / file_part).resolve() if file_part else source, anchor


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines, at most {MAX_README_LINES}"


def test_there_are_docs_pages() -> None:
    assert DOCS, "docs/ has no Markdown page"


@pytest.mark.parametrize("source", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(source: Path) -> None:
    broken: list[str] = []
    for target in links(source):
        if _is_external(target):
            continue
        path, anchor = _resolve(source, target)
        if not path.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(REPO)}")
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {_resolve(README, target)[0] for target in links(README) if not _is_external(target)}
    unlinked = [str(page.relative_to(REPO)) for page in DOCS if page.resolve() not in linked]
    assert unlinked == []


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Which loss fine-tunes best, fairly", "which-loss-fine-tunes-best-fairly"),
    ("`python -m search.report`", "python--m-searchreport"),
    ("Real photographs, offline: `cifar10-transfer`", "real-photographs-offline-cifar10-transfer"),
    ("Image studies: `cifar10`, `fashion_mnist`", "image-studies-cifar10-fashion_mnist"),
])
def test_anchors_follow_githubs_rules(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
