"""Fenced code blocks of the hand-written docs pages, for the tests that keep the tutorials true."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\w+)?([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
TITLE = re.compile(r'title="([^"]+)"')
INCLUDE = re.compile(r"^<!-- qerl:include (\S+?)(?: lines=\d+-\d+)? -->$", re.MULTILINE)
CONFIG_ARG = re.compile(r"--config[ =](\S+\.ya?ml)")


@dataclass
class Block:
    """One fenced block: language, optional title (a file name), its text, and the page and line it is on."""

    lang: str
    title: str | None
    code: str
    page: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a markdown page, in order."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        title = TITLE.search(match.group(2) or "")
        found.append(Block(match.group(1) or "", title.group(1) if title else None, match.group(3), page,
                           text.count("\n", 0, match.start()) + 1))
    return found


def included_files(page: Path) -> list[str]:
    """Repository paths a page includes with `<!-- qerl:include PATH -->`."""
    return INCLUDE.findall(page.read_text(encoding="utf-8"))


def recipes_named(page: Path) -> list[str]:
    """Recipe files under recipes/ that a page's shell blocks run (`--config recipes/...yaml`) or it includes."""
    named = [m for b in blocks(page) if b.lang in ("bash", "text", "") for m in CONFIG_ARG.findall(b.code)]
    named += [p for p in included_files(page) if p.startswith("recipes/")]
    return sorted({n for n in named if n.startswith("recipes/")})
