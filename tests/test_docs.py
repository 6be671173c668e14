"""The README and docs/ as a newcomer reads them: short enough, every link resolves inside the
repository (to a file, and to a heading where it names one), nothing points at paths outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_the_readme_reads_in_two_minutes() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    for wanted in ("Install", "Quick start", "Messages", "Command line", "Limitations"):
        assert any(h.startswith(wanted) for h in headings), f"README has no {wanted} section"
    assert text.index("make demo") < text.index("## ")  # the two commands come first
    assert text.index("make test") < text.index("## ")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in _anchors(resolved), f"{page.name}: no heading #{anchor} in {path}"


@pytest.mark.parametrize("page", [*PAGES, *sorted((ROOT / "notebooks").glob("*.ipynb"))])
def test_nothing_points_outside_the_repository(page: Path) -> None:
    assert "../shared" not in page.read_text(), f"{page.name} names a path outside the repository"


def test_every_docs_page_is_in_the_index() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert f"]({page.name})" in index, f"docs/index.md does not list {page.name}"


def test_every_public_name_is_on_the_api_page() -> None:
    import stream_vae

    page = (ROOT / "docs" / "api.md").read_text()
    for name in stream_vae.__all__:
        assert f"`{name}`" in page, f"docs/api.md does not name {name}"
