"""The documentation stands on its own: every relative link in the repository's Markdown names a
file inside the repository (a reader who cloned chatq has nothing beside it), and the API
reference names every problem slug the code can answer with."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "SECURITY.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"")  # Markdown links, and images in HTML


def test_every_relative_link_in_the_docs_stays_inside_the_repository_and_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in (link or image for link, image in LINK.findall(page.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or a place on the same page
            resolved = (page.parent / target.split("#", 1)[0]).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_the_api_reference_names_every_problem_the_code_answers_with() -> None:
    slugs = set()
    for source in (ROOT / "web").rglob("*.py"):
        slugs |= set(re.findall(r'slug="([a-z-]+)"', source.read_text(encoding="utf-8")))
    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert slugs and {slug for slug in slugs if f"`{slug}`" not in reference} == set()
