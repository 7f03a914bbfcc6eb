"""The docs stand alone and say what the code does: the concept's test vector is the one the
crypto module computes, and no page sends the reader to a file the repository does not have."""

from __future__ import annotations

import re
from pathlib import Path

from fdpush import crypto

REPO = Path(__file__).resolve().parents[1]


def test_the_concepts_test_vector_is_what_fdpush_computes() -> None:
    text = (REPO / "docs" / "concept.md").read_text()
    rows = dict(re.findall(r"^\| (`iss`|20\d\d-\d\d [a-z ]+) \| `([0-9a-f]{64})` \|$", text, re.M))
    iss = bytes.fromhex(rows["`iss`"])
    october = crypto.derive_generation(iss, "2023-10")
    (november,) = crypto.ratchet(october, "2023-11")
    assert rows["2023-10 shared secret"] == october.secret.hex()
    assert rows["2023-10 key"] == october.key.hex()
    assert rows["2023-11 shared secret"] == november.secret.hex()
    assert rows["2023-11 key"] == november.key.hex()


def test_docs_name_no_file_outside_the_repository() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    outside = re.compile(r"CONCEPT\.md|PEERS\.md|\.\./shared|\b[Ii]ssue \d+")
    found = [
        f"{page.relative_to(REPO)}:{number}: {line.strip()}"
        for page in pages
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert found == []


def test_relative_links_in_the_docs_resolve() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = [
        f"{page.relative_to(REPO)}: {target}"
        for page in pages
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text())
        if not (page.parent / target).exists()
    ]
    assert broken == []


def _anchors(page: Path) -> set[str]:
    """The fragments GitHub makes of a page's headings: lower case, punctuation dropped, spaces
    turned into hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_links_to_a_section_name_one_that_exists() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = [
        f"{page.relative_to(REPO)}: {target}#{fragment}"
        for page in pages
        for target, fragment in re.findall(r"\]\(([^)#:]*)#([^)]+)\)", page.read_text())
        if (page.parent / target if target else page).suffix == ".md"
        and fragment not in _anchors(page.parent / target if target else page)
    ]
    assert broken == []
