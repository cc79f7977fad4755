"""Whether an unboxed MATH-style answer is one stated answer, or a hedge (pure text, linear time).

`MathAccuracy` reads boxes as math-verify does (several boxes are one set). Everywhere else an answer counts only
when it is stated once: the last `<answer>` block (all blocks must agree), the line after the last final-answer
marker (`#### ...`, "the answer is ..."), or the reply's last sentence when it has no marker. A statement is a
hedge, and scores 0, when it holds a hedging word (`41 or 42`, `not 42`, `maybe 7`) or lists several values
(`41, 42, 43, 44`) while the gold is one value. "or" and "and" join the items of a gold that is itself a list.
"""
from __future__ import annotations

import re

from qerl.rewards.final_answer import final_answer_markers

HEDGE_WORDS = frozenset((
    "or", "not", "maybe", "perhaps", "probably", "possibly", "either", "approximately", "roughly", "about",
    "around", "nearly", "almost", "guess", "unsure"))
"""Words that make a stated answer a hedge (their LaTeX `\\text{}` forms too)."""
LIST_WORDS = frozenset(("or", "and"))
"""Words that join the items of a list answer: fine against a list gold, a hedge against one value."""

_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?![A-Za-z])")
_PROSE_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}(?![A-Za-z])")
_SENTENCE_END_RE = re.compile(r"[.!?;](?=\s|$)|\n")
_OPEN, _CLOSE = "([{", ")]}"


def _plain(text: str) -> str:
    return _TEXT_RE.sub(r" \1 ", text).replace("\\,", " ").replace("\\ ", " ").replace("~", " ")


def top_level_items(text: str) -> int:
    """How many items `text` lists: commas outside brackets (not a digit group such as `1,000` or `3,5`) and the
    words "and"/"or" outside brackets, plus one."""
    text = _plain(text)
    depth, items = 0, 1
    for i, char in enumerate(text):
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            digit_group = 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
            items += not digit_group
    outside = re.sub(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}", " ", text)
    return items + sum(word.lower() in LIST_WORDS for word in _WORD_RE.findall(outside))


def hedge_in(statement: str, gold: str) -> str | None:
    """Why `statement` is not one stated answer against `gold` (a hedging word, or a list against one value), or None."""
    plain = _plain(statement)
    gold_is_list = top_level_items(gold) > 1
    for word in _WORD_RE.findall(plain):
        low = word.lower()
        if low in HEDGE_WORDS and not (gold_is_list and low in LIST_WORDS):
            return f"hedging word {word!r}"
    prose = [m for m in _PROSE_RE.finditer(plain) if m.group(0).lower() not in LIST_WORDS]
    tail = (plain[prose[-1].end():] if prose else plain).lstrip(" ,:;")  # "The roots are 3 and 5": after the prose
    if not gold_is_list and top_level_items(tail) > 1:
        return "several values against one gold"
    return None


def final_statement(region: str) -> str:
    """The stated answer of an unboxed reply: the line after the last final-answer marker up to its sentence's
    end, else the last sentence of the reply."""
    markers = [m for m in final_answer_markers(region) if m.kind in ("hashes", "answer_is")]
    if markers:
        start = markers[-1].end - len(markers[-1].content)
        rest = region[start:]
    else:
        sentences = [s for s in re.split(r"(?<=[.!?;])\s+|\n", region.strip()) if s.strip()]
        rest = sentences[-1] if sentences else ""
    cut = _SENTENCE_END_RE.search(rest)
    return (rest[:cut.start()] if cut else rest).strip()


def conflicting_blocks(blocks: list[str]) -> bool:
    """True when `<answer>` blocks say different things (spaces aside): a hedge."""
    return len({"".join(b.split()) for b in blocks}) > 1
