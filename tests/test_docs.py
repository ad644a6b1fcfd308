"""The README and the documentation site: short enough, in one voice, with links that resolve and a
nav that lists every page. `make docs` (part of `make test`) builds the site itself, strictly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_LIMIT = 10_000  # characters: a newcomer's five minutes

# Words about how the project was made rather than what it does. Each pattern must be able to fail
# on real text (PROCESS_TEXT) and must leave legitimate text alone (LEGITIMATE_TEXT).
PROCESS_WORDS = [
    re.compile(r"\bissue\s*#?\d+", re.IGNORECASE),
    re.compile(r"\bsession\b", re.IGNORECASE),
    re.compile(r"\bwork periods?\b", re.IGNORECASE),
    re.compile(r"\bwhat was tried\b", re.IGNORECASE),
    re.compile(r"\bthis machine\b", re.IGNORECASE),
    # An issue or pull-request number (#12). Not a heading (`## 2.` has a space), nor a colour or
    # an anchor in quotes, code or a URL ("#333", `#000`, page.md#1-intro), nor an HTML entity.
    re.compile(r"(?<![\w&\"'`/#.-])#\d{1,3}\b"),
]
PROCESS_TEXT = [
    "as issue 4 asked",
    "fixed in Issue #12",
    "measured in session 11",
    "the session's machine",
    "in work period 3",
    "What was tried: a finer grid",
    "timed on this machine",
    "see #7 for the discussion",
    "(#123)",
]
LEGITIMATE_TEXT = [
    "## 2. The dense stage",
    "# 1. dense",
    'color="#333"',
    "`#000000`",
    "[the table](benchmarks.md#1-the-library)",
    "&#123;",
    "a tissue of 4 layers",
    "the sessions' own ids are Ray's",
    "on the machine that runs it",
    "the devkit's t=0:0.1:1",
]


def voiced_files() -> list[Path]:
    """The files that speak to users: README, CHANGELOG, the docs and the benchmarks."""
    files = [REPO / "README.md", REPO / "CHANGELOG.md"]
    files += sorted(DOCS.rglob("*.md")) + sorted((REPO / "bench").glob("*.py"))
    return files


def process_words(text: str) -> list[str]:
    return [match.group(0) for pattern in PROCESS_WORDS for match in pattern.finditer(text)]


def test_the_readme_reads_in_five_minutes() -> None:
    length = len((REPO / "README.md").read_text(encoding="utf-8"))
    assert length <= README_LIMIT, f"README.md has {length:,} characters, at most {README_LIMIT:,}"


@pytest.mark.parametrize("text", PROCESS_TEXT)
def test_a_process_word_is_found(text: str) -> None:
    assert process_words(text), text


@pytest.mark.parametrize("text", LEGITIMATE_TEXT)
def test_legitimate_text_passes(text: str) -> None:
    assert process_words(text) == [], text


def flowing(path: Path) -> str:
    """A file's text as one line, so that a phrase broken over two lines (or two comment lines of
    Python) is still one phrase."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        text = re.sub(r"\n[ \t]*#[ \t]?", "\n", text)
    return re.sub(r"\s+", " ", text)


def test_a_phrase_over_two_comment_lines_is_one_phrase(tmp_path: Path) -> None:
    script = tmp_path / "bench_x.py"
    script.write_text("# timed on this\n# machine, twice\n")
    assert process_words(flowing(script)) == ["this machine"]


@pytest.mark.parametrize("path", voiced_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_words_about_how_the_project_was_made(path: Path) -> None:
    text = flowing(path)
    found = [
        text[max(0, match.start() - 30) : match.end() + 30]
        for pattern in PROCESS_WORDS
        for match in pattern.finditer(text)
    ]
    assert found == [], f"{path.relative_to(REPO)} speaks of how the project was made"


FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(markdown: str) -> list[str]:
    """The targets of a Markdown file's links and images that point into the repository."""
    prose = INLINE_CODE.sub("", FENCE.sub("", markdown))
    targets = [match.group(1) for match in LINK.finditer(prose)]
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", t, re.IGNORECASE)]


def test_relative_links_are_found() -> None:
    text = (
        "[a](docs/search.md) ![b](default-front.png) [c](https://example.org) [d](#anchor)\n"
        '`[e](not-a-link.md)`\n```\n[f](in-code.md)\n```\n[g](cli.md#search "title")'
    )
    assert relative_links(text) == ["docs/search.md", "default-front.png", "cli.md#search"]


@pytest.mark.parametrize(
    "path",
    [REPO / "README.md", *sorted(DOCS.glob("*.md"))],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_every_relative_link_points_at_a_file(path: Path) -> None:
    links = relative_links(path.read_text(encoding="utf-8"))
    missing = [
        link for link in links if not (path.parent / link.split("#")[0].split("?")[0]).exists()
    ]
    assert missing == [], f"{path.relative_to(REPO)} links to files that do not exist"


def nav_pages(entries: object) -> list[str]:
    """Every page a MkDocs nav lists, however nested."""
    if isinstance(entries, str):
        return [] if re.match(r"^[a-z]+://", entries) else [entries]
    if isinstance(entries, list):
        return [page for entry in entries for page in nav_pages(entry)]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in nav_pages(value)]
    return []


def test_the_nav_lists_every_page_and_only_pages_that_exist() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"
    listed = nav_pages(config["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(listed) == pages
    assert len(listed) == len(set(listed)), "a page is listed twice"
