"""Crawl a built site folder for broken internal links: every relative href/src must name a file that exists
and, when it has a #fragment, an element with that id.

    .venv/bin/python docs/scripts/check_links.py site        # prints the broken links, exit status 1 if any
"""
from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("name"):
            self.ids.add(values["name"])
        for key in ("href", "src"):
            if values.get(key) and not (tag == "link" and values.get("rel") in ("canonical", "alternate")):
                self.links.append(values[key])


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def target_file(site: Path, page: Path, link: str) -> Path | None:
    """The file an internal link points to (None for external links, mailto:, data: and the like)."""
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith(("#", "javascript:")):
        return None
    path = unquote(parts.path)
    target = (site / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
    if path.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target.resolve()


def broken_links(site: Path) -> list[str]:
    """'page: link (why)' for every broken internal link of the site."""
    site = site.resolve()
    pages = {p.resolve(): parse(p) for p in site.rglob("*.html")}
    problems = []
    for page, parsed in sorted(pages.items()):
        for link in parsed.links:
            url, fragment = urldefrag(link)
            if not url:  # same-page anchor
                if fragment and fragment not in parsed.ids:
                    problems.append(f"{page.relative_to(site)}: {link} (no element with this id)")
                continue
            target = target_file(site, page, url)
            if target is None:
                continue
            if not target.exists():
                problems.append(f"{page.relative_to(site)}: {link} (no such file)")
            elif fragment and target in pages and fragment not in pages[target].ids:
                problems.append(f"{page.relative_to(site)}: {link} (no element with id {fragment!r})")
    return problems


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "site")
    found = broken_links(folder)
    print("\n".join(found) or f"no broken internal links in {folder}")
    sys.exit(1 if found else 0)
