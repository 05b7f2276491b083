"""The README and docs/ hold what a newcomer reads, so they must hold up in a fresh clone: every
relative link (and #anchor) resolves inside the repository, no link leaves it except to Airtable's
and MongoDB's documentation, every option and setting `--help` prints is in the README, and the
README stays the first screen (at most 250 lines)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 250
# Outside the repository, only Airtable's and MongoDB's own documentation.
ALLOWED_HOSTS = {"airtable.com", "support.airtable.com", "www.mongodb.com"}

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s<>()\[\]`\"']+", re.I)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks, where Markdown makes links."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slugs(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: the heading's text, lowercased, without
    punctuation (letters, digits, '_', '-' and spaces stay), spaces as '-'; a repeated slug
    gets -1, -2."""
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(page.read_text(encoding="utf-8")):
        heading = HEADING.match(line)
        if not heading:
            continue
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(2))  # a link counts by its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        if slug in seen:
            seen[slug] += 1
            slug = f"{slug}-{seen[slug]}"
        else:
            seen[slug] = 0
        slugs.add(slug)
    return slugs


def links(page: Path) -> list[str]:
    """Every link target on a page: inline links and images, reference definitions, <autolinks>
    and bare URLs (GitHub links those too). Code is left out: it shows text, not links."""
    found = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        definition = REFERENCE_DEF.match(line)
        if definition:
            found.append(definition.group(1))
            continue
        line = CODE_SPAN.sub("", line)
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        found += targets
        rest = INLINE_LINK.sub(" ", line)
        found += [url.rstrip(".,;:") for url in URL.findall(rest)]
    return found


def broken_links(page: Path) -> list[tuple[str, str]]:
    """(target, what is wrong) for each link a fresh clone could not follow, or that leaves it."""
    problems = []
    for target in links(page):
        if SCHEME.match(target):
            parts = urlsplit(target)
            if parts.scheme != "https" or parts.hostname not in ALLOWED_HOSTS:
                problems.append((target, f"leaves the repository (only https to {sorted(ALLOWED_HOSTS)})"))
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / unquote(path)).resolve() if path else page
        if not resolved.is_relative_to(REPO):
            problems.append((target, "points outside the repository"))
        elif not resolved.exists():
            problems.append((target, "no such file"))
        elif anchor and (resolved.suffix != ".md" or anchor not in github_slugs(resolved)):
            problems.append((target, f"no heading with the anchor #{anchor}"))
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves_inside_the_repository_or_to_airtable_and_mongodb_docs(page):
    assert broken_links(page) == []


def test_the_link_checker_finds_the_readmes_links():
    targets = links(README)
    assert "docs/RULES.md" in targets and "https://airtable.com/create/tokens" in targets


def test_the_link_checker_catches_what_a_clone_would_miss(tmp_path, monkeypatch):
    """The checks above can fail: a page with every kind of bad link is refused, link by link."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "A.md").write_text("# A page\n\n## The `--restore` option\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n"
        "[ok](docs/A.md) [ok anchor](docs/A.md#the---restore-option) [ok here](#title)\n"
        "[outside](../outside/NOTES.md) [missing](docs/B.md) [bad anchor](docs/A.md#nope)\n"
        "[elsewhere](https://example.com/x) see http://airtable.com/api and <https://github.com/x>\n"
        "`[in code](nowhere.md)` [airtable](https://airtable.com/developers/web/api/introduction)\n"
        "```\n[in a block](nowhere.md) https://example.org\n```\n"
    )
    assert [target for target, _ in broken_links(page)] == [
        "../outside/NOTES.md", "docs/B.md", "docs/A.md#nope", "https://example.com/x",
        "http://airtable.com/api", "https://github.com/x"]


def test_the_slugs_are_githubs():
    page = REPO / "docs" / "DELETION.md"
    assert {"restoring-with---restore", "deleting-with---delete-missing", "the-safety-cap"} <= github_slugs(page)


def test_every_page_in_docs_is_linked_from_the_readme():
    linked = {(README.parent / unquote(t.partition("#")[0])).resolve() for t in links(README)
              if not SCHEME.match(t) and t.partition("#")[0]}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


def help_text() -> str:
    done = subprocess.run([sys.executable, str(REPO / "airtable_sync.py"), "--help"],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_every_option_and_setting_of_help_is_in_the_readme():
    text = help_text()
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    settings = set(re.findall(r"\b(?:AIRTABLE|MONGODB)_[A-Z0-9_]+\b", text))
    assert {"--dry-run", "--check", "--delete-missing"} <= options and "AIRTABLE_API_KEY" in settings
    readme = README.read_text(encoding="utf-8")
    missing = sorted(name for name in options | settings
                     if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", readme))
    assert missing == [], f"README.md does not mention {missing}, which --help prints"


def test_the_readme_is_the_first_screen():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the detail goes to docs/"
