"""Finding and parsing the final number of a completion (GSM8K-style answers).

Pure text work with bounded regexes: no `eval`, no sympy. Numbers become exact
`Fraction`s so `0.5`, `1/2` and `\\frac{1}{2}` compare equal without rounding.
"""
from __future__ import annotations

import re
from fractions import Fraction

from qerl.rewards.latex import last_boxed

MAX_TEXT_CHARS = 20_000
"""Only the last this-many characters of a completion are searched (answers sit at the end)."""
MAX_NUMBER_CHARS = 40
"""Longer numerals are refused (int parsing of megabyte digit strings is quadratic)."""

_NUM = r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?|-?\$?\.\d+"
_NUMBER_RE = re.compile(r"(?<![\w.])(?:" + _NUM + r")")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_HASHES_RE = re.compile(r"####\s*([^\n]{0,200})")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?\s*([^\n]{0,200})", re.IGNORECASE)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}")
_STRIP_RE = re.compile(r"\\(?:left|right|!|,|;|:| )|\\text\s*\{[^{}]*\}|\\mathrm\s*\{[^{}]*\}|\^\s*\{?\\circ\}?|\\%|%")


def parse_number(text: str) -> Fraction | None:
    """The exact value of one numeral: `-1,234.50`, `$12`, `3/4`, `.5`, `\\frac{3}{4}`, `12 cm`.

    Returns None when `text` is not a single number (possibly with a unit or `$`).
    """
    if not isinstance(text, str) or len(text) > 200:
        return None
    s = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    s = _STRIP_RE.sub("", s).replace("\\$", "$").strip().strip("$").strip().rstrip(".").strip()
    found = _NUMBER_RE.findall(s)
    if len(found) != 1:
        return None
    rest = s.replace(found[0], "", 1).strip()
    if rest and not re.fullmatch(r"[A-Za-z][A-Za-z .]{0,30}", rest):  # allow a unit word: "12 apples"
        return None
    return _to_fraction(found[0])


def _to_fraction(token: str) -> Fraction | None:
    s = token.replace("$", "").replace(",", "").replace(" ", "")
    if len(s) > MAX_NUMBER_CHARS:
        return None
    num, _, den = s.partition("/")
    try:
        value = Fraction(num)
        if den:
            d = Fraction(den)
            if d == 0:
                return None
            value /= d
    except (ValueError, ZeroDivisionError):
        return None
    return value


def last_number(text: str) -> Fraction | None:
    """The last numeral in `text` (after turning `\\frac{a}{b}` into `a/b`), or None."""
    s = _LATEX_FRAC_RE.sub(r"\1/\2", text[-MAX_TEXT_CHARS:])
    found = _NUMBER_RE.findall(s)
    return _to_fraction(found[-1]) if found else None


def extract_final_number(text: str) -> Fraction | None:
    """The answer a GSM8K-style completion gives, tried in this order.

    1. the last `<answer>...</answer>` block, 2. the last `\\boxed{...}`,
    3. `#### N`, 4. "the answer is N", 5. the last number anywhere.
    Inside a found block the last number is taken (so `<answer>x = 5</answer>` gives 5).
    """
    if not isinstance(text, str) or not text:
        return None
    tail = text[-MAX_TEXT_CHARS:]
    tags = _ANSWER_TAG_RE.findall(tail)
    if tags:
        return _number_in(tags[-1])
    boxed = last_boxed(tail)
    if boxed is not None:
        return _number_in(boxed)
    for pattern in (_HASHES_RE, _ANSWER_IS_RE):
        hits = pattern.findall(tail)
        if hits:
            value = _number_in(hits[-1], first=True)
            if value is not None:
                return value
    return last_number(tail)


def _number_in(block: str, first: bool = False) -> Fraction | None:
    whole = parse_number(block)
    if whole is not None:
        return whole
    s = _LATEX_FRAC_RE.sub(r"\1/\2", block)
    found = _NUMBER_RE.findall(s)
    if not found:
        return None
    return _to_fraction(found[0] if first else found[-1])


_PLAIN_RE = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?")
_PLAIN_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}")


def parse_plain_number(s: str) -> Fraction | None:
    """Exact value of a bare numeral (`12`, `-0.5`, `3/4`, `\\frac{3}{4}`), else None - no units, no symbols."""
    if not isinstance(s, str) or len(s) > MAX_NUMBER_CHARS:
        return None
    m = _PLAIN_FRAC_RE.fullmatch(s)
    if m:
        value = _to_fraction(f"{m.group(2)}/{m.group(3)}")
        return -value if (value is not None and m.group(1)) else value
    return _to_fraction(s) if _PLAIN_RE.fullmatch(s) else None
